"""A kvkeepd process with its HTTP front end, for the OpenAI API tests.

Starts $KVKEEP_BIN_DIR/kvkeepd on a temporary state directory with the synthetic tiny
model, its native and HTTP Unix sockets, TCP on a free loopback port and an API key file
with two tenants. Also a tiny JSON-lines client for checking what the daemon recorded
(session.info, stats), independent of the HTTP path under test.
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
import urllib.request

BIN_DIR = os.environ.get("KVKEEP_BIN_DIR", "")
KVKEEPD = os.path.join(BIN_DIR, "kvkeepd")
KVKEEP = os.path.join(BIN_DIR, "kvkeep")
STARTUP_TIMEOUT_S = 120

# Tenant A is this process's own uid, so the native socket can read its sessions back;
# tenant B is another uid.
KEY_A, TENANT_A = "sk-test-tenant-a", os.getuid()
KEY_B, TENANT_B = "sk-test-tenant-b", os.getuid() + 1000001


def binaries_missing() -> str | None:
    if not BIN_DIR or not os.access(KVKEEPD, os.X_OK) or not os.access(KVKEEP, os.X_OK):
        return (f"needs kvkeepd and kvkeep in $KVKEEP_BIN_DIR (now '{BIN_DIR}'); "
                "run through ctest or set KVKEEP_BIN_DIR")
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Daemon:
    """kvkeepd on temporary paths; stop() always ends it."""

    def __init__(self, extra_args: list[str] | None = None, scripted: list[str] | None = None):
        self.dir = tempfile.mkdtemp(prefix="kvkeep-openai-")
        self.socket_path = os.path.join(self.dir, "kvkeep.sock")
        self.http_socket = os.path.join(self.dir, "kvkeep-http.sock")
        self.model_dir = os.path.join(self.dir, "tiny")
        self.log_path = os.path.join(self.dir, "kvkeepd.log")
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}/v1"
        self.model = "tiny"
        keys = os.path.join(self.dir, "keys")
        with open(keys, "w") as f:
            f.write(f"# test keys\n{KEY_A} {TENANT_A}\n{KEY_B} {TENANT_B}\n")
        os.chmod(keys, 0o600)
        subprocess.run([KVKEEP, "make-model", "--preset", "tiny", "--out", self.model_dir],
                       check=True, capture_output=True, timeout=300)
        # The tiny model's 320-token vocabulary spends about one token per byte, so an
        # agent's prompts (mini-swe-agent's task prompt alone is ~2.9k tokens) pass its 4096
        # positions within a few turns; random weights serve any position, so allow more.
        config_path = os.path.join(self.model_dir, "config.json")
        with open(config_path) as f:
            config = json.load(f)
        config["max_position_embeddings"] = 16384
        with open(config_path, "w") as f:
            json.dump(config, f, indent=2)
        args = [KVKEEPD, "--model", self.model_dir, "--socket", self.socket_path,
                "--state-dir", os.path.join(self.dir, "state"), "--log-level", "info",
                "--http-listen", f"127.0.0.1:{self.port}", "--api-key-file", keys,
                "--threads", "1"]
        if scripted is not None:
            path = os.path.join(self.dir, "script.json")
            with open(path, "w") as f:
                json.dump(scripted, f)
            args += ["--testing-scripted-replies", path]
        self.log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(args + (extra_args or []), stdout=self.log,
                                     stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while not self.healthy():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                tail = self.log_tail()
                self.stop()
                raise RuntimeError(f"kvkeepd did not come up (exit {self.proc.returncode}):\n"
                                   + tail)
            time.sleep(0.1)

    def healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/health", timeout=2) as r:
                return r.status == 200
        except OSError:
            return False

    def log_tail(self) -> str:
        with open(self.log_path, "rb") as f:
            return f.read()[-6000:].decode("utf-8", "replace")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    def call(self, verb: str, **params) -> dict:
        """One JSON-lines request on the native socket (as this process's uid)."""
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(30)
            s.connect(self.socket_path)
            s.sendall((json.dumps({"id": 1, "verb": verb, **params}) + "\n").encode())
            buf = b""
            while not buf.endswith(b"\n"):
                chunk = s.recv(65536)
                if not chunk:
                    break
                buf += chunk
        reply = json.loads(buf)
        if "error" in reply:
            raise RuntimeError(f"{verb}: {reply['error']}")
        return reply["result"]
