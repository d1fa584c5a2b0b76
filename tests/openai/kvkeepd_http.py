"""A kvkeepd process with its HTTP front end, for the OpenAI API tests.

Starts $KVKEEP_BIN_DIR/kvkeepd on a temporary state directory with the synthetic tiny
model, its native and HTTP Unix sockets, TCP on a free loopback port and an API key file
with two tenants. Also a tiny JSON-lines client for checking what the daemon recorded
(session.info, stats), independent of the HTTP path under test.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import urllib.request

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "testlib"))
from kvkeepd_process import (BIN_DIR, KVKEEP, KVKEEPD, KvkeepdProcess,  # noqa: E402,F401
                             binaries_missing)

# Tenant A is this process's own uid, so the native socket can read its sessions back;
# tenant B is another uid.
KEY_A, TENANT_A = "sk-test-tenant-a", os.getuid()
KEY_B, TENANT_B = "sk-test-tenant-b", os.getuid() + 1000001


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Daemon(KvkeepdProcess):
    """kvkeepd on temporary paths with HTTP on a free loopback port; stop() always ends it."""

    def __init__(self, extra_args: list[str] | None = None, scripted: list[str] | None = None):
        # The tiny model's 320-token vocabulary spends about one token per byte, so an
        # agent's prompts (mini-swe-agent's task prompt alone is ~2.9k tokens) pass its 4096
        # positions within a few turns; random weights serve any position, so allow more.
        super().__init__("kvkeep-openai-", max_positions=16384)
        self.http_socket = os.path.join(self.dir, "kvkeep-http.sock")
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}/v1"
        self.model = "tiny"
        keys = os.path.join(self.dir, "keys")
        with open(keys, "w") as f:
            f.write(f"# test keys\n{KEY_A} {TENANT_A}\n{KEY_B} {TENANT_B}\n")
        os.chmod(keys, 0o600)
        args = ["--log-level", "info", "--http-listen", f"127.0.0.1:{self.port}",
                "--api-key-file", keys, "--threads", "1"]
        if scripted is not None:
            path = os.path.join(self.dir, "script.json")
            with open(path, "w") as f:
                json.dump(scripted, f)
            args += ["--testing-scripted-replies", path]
        self.start(args + (extra_args or []), ready=self.healthy)

    def healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/health", timeout=2) as r:
                return r.status == 200
        except OSError:
            return False

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
