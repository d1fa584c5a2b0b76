"""schemathesis fuzzes kvkeepd's HTTP API from its OpenAPI description (docs/openapi.yaml).

A real kvkeepd (tiny synthetic model) serves TCP loopback with bearer keys; schemathesis
generates valid and invalid requests for every operation (examples, coverage and fuzzing
phases, a bounded number per operation, a fixed seed so CI runs are repeatable). The
check: no generated request gets a 5xx, and none hangs (each must answer within the
request timeout). The daemon must still serve afterwards.

    KVKEEP_BIN_DIR=build .venv/bin/python -m unittest -v tests/openai/test_openapi_fuzz.py
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import unittest
import urllib.request

try:
    import yaml  # a dependency of schemathesis
except ImportError:  # pragma: no cover - reported as a skip
    yaml = None

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import kvkeepd_http  # noqa: E402
from kvkeepd_http import KEY_A  # noqa: E402

SPEC = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "docs",
                    "openapi.yaml")
SCHEMATHESIS = os.path.join(os.path.dirname(sys.executable), "schemathesis")
MAX_EXAMPLES = int(os.environ.get("KVKEEP_FUZZ_EXAMPLES", "60"))
REQUEST_TIMEOUT_S = 30  # a request answered later than this counts as a hang
RUN_TIMEOUT_S = 600


class OpenApiFuzzTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        if yaml is None or not os.access(SCHEMATHESIS, os.X_OK):
            raise unittest.SkipTest(f"schemathesis is not installed beside {sys.executable} "
                                    "(scripts/setup makes .venv)")
        missing = kvkeepd_http.binaries_missing()
        if missing:
            raise unittest.SkipTest(missing)
        # Short generations keep the run bounded; the request limits are the defaults.
        cls.daemon = kvkeepd_http.Daemon(extra_args=["--max-tokens", "16"])

    @classmethod
    def tearDownClass(cls):
        cls.daemon.stop()

    def test_no_generated_request_gets_5xx_or_hangs(self):
        d = self.daemon
        har_path = os.path.join(d.dir, "requests.har")
        # The served model's id is the daemon's, not the document's: pin it (as an enum
        # and an example), else nearly every generated request stops at 404 model_not_found.
        with open(SPEC) as f:
            spec = yaml.safe_load(f)
        req = spec["components"]["schemas"]["ChatRequest"]
        req["properties"]["model"] = {"type": "string", "enum": [d.model]}
        req["example"] = {"model": d.model, "max_tokens": 4,
                          "messages": [{"role": "user", "content": "hello"}]}
        spec_path = os.path.join(d.dir, "openapi.yaml")
        with open(spec_path, "w") as f:
            yaml.safe_dump(spec, f)
        cmd = [SCHEMATHESIS, "run", spec_path, "--url", f"http://127.0.0.1:{d.port}",
               "--header", f"Authorization: Bearer {KEY_A}",
               "--checks", "not_a_server_error,status_code_conformance,"
               "content_type_conformance,response_schema_conformance",
               "--phases", "examples,coverage,fuzzing", "--max-examples", str(MAX_EXAMPLES),
               "--seed", os.environ.get("KVKEEP_FUZZ_SEED", "17"), "--workers", "2", "--request-timeout", str(REQUEST_TIMEOUT_S),
               "--suppress-health-check", "all", "--no-color",
               "--report", "har", "--report-har-path", har_path]
        env = dict(os.environ, SCHEMATHESIS_HOOKS="", NO_COLOR="1")
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=RUN_TIMEOUT_S,
                             env=env, stdin=subprocess.DEVNULL, cwd=d.dir)
        log = out.stdout[-12000:] + out.stderr[-4000:]
        self.assertEqual(out.returncode, 0, "schemathesis found failures:\n" + log +
                         "\n--- daemon log ---\n" + d.log_tail())
        # Read back what was sent: a run that never got past validation (or never ran)
        # would pass vacuously, so real generations and refusals must both be there.
        with open(har_path) as f:
            entries = json.load(f)["log"]["entries"]
        chat = [e["response"]["status"] for e in entries
                if e["request"]["url"].endswith("/v1/chat/completions")]
        self.assertGreaterEqual(chat.count(200), 10, chat)
        self.assertGreaterEqual(sum(400 <= s < 500 for s in chat), 10, chat)
        self.assertEqual([e for e in entries if e["response"]["status"] >= 500], [])
        self.assertTrue(d.healthy(), "kvkeepd stopped serving after the fuzz run")
        self.assertIsNone(d.proc.poll(), "kvkeepd exited during the fuzz run")
        body = json.dumps({"model": d.model, "max_tokens": 2,
                           "messages": [{"role": "user", "content": "still there?"}]})
        req = urllib.request.Request(f"http://127.0.0.1:{d.port}/v1/chat/completions",
                                     data=body.encode(), method="POST",
                                     headers={"Authorization": f"Bearer {KEY_A}",
                                              "Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=60) as r:
            self.assertEqual(json.loads(r.read())["object"], "chat.completion")


if __name__ == "__main__":
    unittest.main()
