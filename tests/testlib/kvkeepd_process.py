"""KvkeepdProcess: kvkeepd on a temporary state directory with a fresh tiny model.

The one launcher of the Python tests (tests/openai/kvkeepd_http.py,
examples/test_kvkeep_client.py): it makes the model with `kvkeep make-model`, starts
$KVKEEP_BIN_DIR/kvkeepd (ctest sets KVKEEP_BIN_DIR to the build directory) on
`socket_path`, waits until it is ready, and stop() always ends it and removes the
directory. Standard library only.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from typing import Callable

BIN_DIR = os.environ.get("KVKEEP_BIN_DIR", "")
KVKEEPD = os.path.join(BIN_DIR, "kvkeepd")
KVKEEP = os.path.join(BIN_DIR, "kvkeep")
STARTUP_TIMEOUT_S = 120


def binaries_missing() -> str | None:
    """Why the tests cannot run (no binaries), or None."""
    if not BIN_DIR or not os.access(KVKEEPD, os.X_OK) or not os.access(KVKEEP, os.X_OK):
        return (f"needs kvkeepd and kvkeep in $KVKEEP_BIN_DIR (now '{BIN_DIR}'); "
                "build them and run through ctest, or set KVKEEP_BIN_DIR")
    return None


class KvkeepdProcess:
    """The directory and model are made by the constructor; start() launches the daemon."""

    def __init__(self, prefix: str, model_name: str = "tiny", seed: int | None = None,
                 max_positions: int | None = None):
        self.dir = tempfile.mkdtemp(prefix=prefix)
        self.socket_path = os.path.join(self.dir, "kvkeep.sock")
        self.model_dir = os.path.join(self.dir, model_name)
        self.log_path = os.path.join(self.dir, "kvkeepd.log")
        self.proc: subprocess.Popen | None = None
        self.log = None
        make = [KVKEEP, "make-model", "--preset", "tiny", "--out", self.model_dir]
        if seed is not None:
            make += ["--seed", str(seed)]
        subprocess.run(make, check=True, capture_output=True, timeout=300)
        if max_positions is not None:
            config_path = os.path.join(self.model_dir, "config.json")
            with open(config_path) as f:
                config = json.load(f)
            config["max_position_embeddings"] = max_positions
            with open(config_path, "w") as f:
                json.dump(config, f, indent=2)

    def start(self, args: list[str], ready: Callable[[], bool] | None = None) -> None:
        """Runs kvkeepd with its model, socket and state directory, then `args`; waits
        until ready() (default: the socket accepts). Raises with the log's tail if it
        exits or is not ready within STARTUP_TIMEOUT_S (and stops it)."""
        ready = ready or self.accepts
        self.log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            [KVKEEPD, "--model", self.model_dir, "--socket", self.socket_path, "--state-dir",
             os.path.join(self.dir, "state")] + args,
            stdout=self.log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while not ready():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                tail = self.log_tail()
                self.stop()
                raise RuntimeError(f"kvkeepd did not come up (exit {self.proc.returncode}):\n"
                                   + tail)
            time.sleep(0.05)

    def accepts(self) -> bool:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            try:
                s.connect(self.socket_path)
                return True
            except OSError:
                return False

    def log_tail(self, num_bytes: int = 6000) -> str:
        with open(self.log_path, "rb") as f:
            return f.read()[-num_bytes:].decode("utf-8", "replace")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.log is not None:
            self.log.close()
        shutil.rmtree(self.dir, ignore_errors=True)
