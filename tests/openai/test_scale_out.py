"""Scale-out (docs/scale-out.md): two kvkeepd instances share one Redis remote tier, and
nginx (Debian's, with the shipped examples/nginx/kvkeep.conf) keeps a session on one
instance and moves it when that instance stops.

Real processes on loopback, all started and stopped here: redis-server on a unix socket,
two kvkeepd (tiny synthetic model, small device pools so history is demoted to disk and so
to Redis), nginx. HTTP through urllib (the standard library).

    KVKEEP_BIN_DIR=build python3 -m unittest -v tests/openai/test_scale_out.py
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import unittest
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import kvkeepd_http  # noqa: E402
from kvkeepd_http import KEY_A, KEY_B  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
REDIS = shutil.which("redis-server")
# Turns 1-3 of every conversation are forced (their tokens are then exactly what any
# instance renders from the text); turn 4 and later are the model's greedy output.
SCRIPT = ["First reply, forced so that its tokens are canonical.",
          "Second reply: still forced, the history keeps growing.",
          "Third reply, and the next turn is generated greedily."]


class Redis:
    def __init__(self):
        self.dir = tempfile.mkdtemp(prefix="kvkeep-redis-")
        self.socket = os.path.join(self.dir, "redis.sock")
        self.proc = None
        self.start()

    def start(self):
        self.proc = subprocess.Popen(
            [REDIS, "--port", "0", "--unixsocket", self.socket, "--save", "", "--appendonly",
             "no", "--dir", self.dir, "--loglevel", "warning"],
            stdout=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while not self.up():
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise RuntimeError("redis-server did not start")
            time.sleep(0.05)

    def up(self) -> bool:
        try:
            with socket.socket(socket.AF_UNIX) as s:
                s.connect(self.socket)
            return True
        except OSError:
            return False

    def command(self, *args: str) -> bytes:
        """One command in RESP; returns the raw reply."""
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(5)
            s.connect(self.socket)
            req = f"*{len(args)}\r\n" + "".join(f"${len(a.encode())}\r\n{a}\r\n" for a in args)
            s.sendall(req.encode())
            time.sleep(0.05)
            return s.recv(1 << 20)

    def keys(self, pattern: str) -> list[str]:
        reply = self.command("KEYS", pattern).split(b"\r\n")
        return [x.decode() for x in reply[2::2] if x]

    def kill(self):
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        if os.path.exists(self.socket):
            os.unlink(self.socket)

    def stop(self):
        self.kill()
        shutil.rmtree(self.dir, ignore_errors=True)


def skip_reason() -> str | None:
    missing = kvkeepd_http.binaries_missing()
    if missing:
        return missing
    if REDIS is None:
        return "redis-server is not installed (scripts/setup installs it)"
    return None


class Instance(kvkeepd_http.Daemon):
    def __init__(self, redis: Redis, secret_file: str):
        args = ["--remote-tier", "unix:" + redis.socket, "--cluster-secret-file", secret_file,
                "--remote-timeout-ms", "200", "--kv-blocks", "64", "--host-blocks", "64",
                "--disk-gib", "0.05", "--policy", "lru"]
        super().__init__(extra_args=args, scripted=SCRIPT)

    def stats(self) -> dict:
        return self.call("stats")


def chat(base_url: str, messages: list[dict], key: str = KEY_A, cache_key: str | None = None,
         max_tokens: int = 8) -> tuple[dict, dict]:
    body = {"model": "tiny", "messages": messages, "max_tokens": max_tokens, "temperature": 0}
    if cache_key:
        body["prompt_cache_key"] = cache_key
    req = urllib.request.Request(base_url + "/chat/completions", data=json.dumps(body).encode(),
                                 headers={"Authorization": f"Bearer {key}",
                                          "Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=120) as r:
        return json.load(r), dict(r.headers)


def user(text: str) -> dict:
    return {"role": "user", "content": text}


def conversation(tag: str) -> list[list[dict]]:
    """The user messages of four turns (long enough to fill several KV blocks each)."""
    return [[user(f"{tag} turn {i}: " + "please consider this detail. " * 3)] for i in range(4)]


def run_turns(base_url: str, tag: str, n: int, key: str = KEY_A) -> tuple[list[dict], dict]:
    messages: list[dict] = []
    reply = {}
    for turn in conversation(tag)[:n]:
        messages += turn
        reply, _ = chat(base_url, messages, key=key, cache_key=tag)
        messages.append({"role": "assistant",
                         "content": reply["choices"][0]["message"]["content"]})
    return messages, reply


def churn(base_url: str, n: int = 16) -> None:
    """Other conversations push earlier blocks down to disk (and so to the remote tier)."""
    for i in range(n):
        chat(base_url, [user(f"churn {i}: " + "unrelated filler text. " * 12)],
             cache_key=f"churn-{i}-{time.monotonic_ns()}")


def wait_remote_written(inst: Instance, at_least: int, timeout_s: float = 30) -> int:
    """Waits until the instance's remote writes reach at_least and stop growing."""
    deadline = time.monotonic() + timeout_s
    last = -1
    while True:
        written = inst.stats().get("remote", {}).get("blocks_written", 0)
        if (written >= at_least and written == last) or time.monotonic() > deadline:
            return written
        last = written
        time.sleep(0.3)


class ScaleOutTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        reason = skip_reason()
        if reason:
            raise unittest.SkipTest(reason)
        cls.tmp = tempfile.mkdtemp(prefix="kvkeep-scaleout-")
        cls.secret = os.path.join(cls.tmp, "cluster.secret")
        with open(cls.secret, "w") as f:
            f.write("test-cluster-secret-0123456789abcdef\n")
        os.chmod(cls.secret, 0o600)

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.tmp, ignore_errors=True)

    def setUp(self):
        self.redis = Redis()
        self.instances: list[Instance] = []

    def tearDown(self):
        for inst in self.instances:
            inst.stop()
        self.redis.stop()

    def start(self) -> Instance:
        inst = Instance(self.redis, self.secret)
        self.instances.append(inst)
        return inst

    def history_on_a(self, a: Instance, tag: str = "conv") -> list[dict]:
        messages, _ = run_turns(a.base_url, tag, 3)
        churn(a.base_url)
        self.assertGreater(wait_remote_written(a, 1), 0, a.log_tail())
        return messages + conversation(tag)[3]

    def test_fourth_turn_on_b_is_served_from_redis_with_the_same_output(self):
        a, b = self.start(), self.start()
        turn4 = self.history_on_a(a)
        on_b, _ = chat(b.base_url, turn4, cache_key="conv")
        on_a, _ = chat(a.base_url, turn4, cache_key="conv")
        tiers = on_b["kvkeep"]["cached_by_tier"]
        prompt = on_b["usage"]["prompt_tokens"]
        # Most of the history (turns 1-3) comes from Redis; turn 4's own message does not.
        self.assertGreater(tiers["remote"], prompt // 2, on_b["kvkeep"])
        self.assertEqual(on_b["choices"][0]["message"]["content"],
                         on_a["choices"][0]["message"]["content"])
        self.assertGreater(b.stats()["remote"]["hits"], 0)

    def test_tenants_share_nothing(self):
        a, b = self.start(), self.start()
        turn4 = self.history_on_a(a)
        keys_a = self.redis.keys("kvkeep:b:*")
        self.assertTrue(keys_a)
        salts = {k.split(":")[3] for k in keys_a}
        on_b, _ = chat(b.base_url, turn4, key=KEY_B, cache_key="conv")
        self.assertEqual(on_b["kvkeep"].get("cached_by_tier", {}).get("remote", 0), 0)
        self.assertEqual(b.stats()["remote"]["hits"], 0)
        # Tenant B's blocks (written once B's history is demoted) carry another salt.
        run_turns(b.base_url, "conv-b", 3, key=KEY_B)
        churn(b.base_url)
        wait_remote_written(b, 1)
        salts_b = {k.split(":")[3] for k in self.redis.keys("kvkeep:b:*")} - salts
        self.assertTrue(salts_b, "tenant B wrote nothing")
        self.assertFalse(salts_b & salts)

    def test_redis_killed_mid_run_turns_continue(self):
        a, b = self.start(), self.start()
        turn4 = self.history_on_a(a)
        self.redis.kill()
        t0 = time.monotonic()
        on_b, _ = chat(b.base_url, turn4, cache_key="conv")
        self.assertLess(time.monotonic() - t0, 60)
        on_a, _ = chat(a.base_url, turn4, cache_key="conv")
        self.assertEqual(on_b["kvkeep"].get("cached_by_tier", {}).get("remote", 0), 0)
        self.assertEqual(on_b["choices"][0]["message"]["content"],
                         on_a["choices"][0]["message"]["content"])
        self.assertGreaterEqual(b.stats()["remote"]["errors"], 1)

    def test_redis_restarted_empty_means_recompute(self):
        a, b = self.start(), self.start()
        turn4 = self.history_on_a(a)
        self.redis.kill()
        self.redis.start()
        on_b, _ = chat(b.base_url, turn4, cache_key="conv")
        on_a, _ = chat(a.base_url, turn4, cache_key="conv")
        self.assertEqual(on_b["kvkeep"].get("cached_by_tier", {}).get("remote", 0), 0)
        self.assertEqual(on_b["choices"][0]["message"]["content"],
                         on_a["choices"][0]["message"]["content"])

    def test_corrupted_value_is_recomputed(self):
        a, b = self.start(), self.start()
        turn4 = self.history_on_a(a)
        for key in self.redis.keys("kvkeep:b:*"):
            self.redis.command("SETRANGE", key, "200", "\x01\x02\x03")  # header and payload
        on_b, _ = chat(b.base_url, turn4, cache_key="conv")
        on_a, _ = chat(a.base_url, turn4, cache_key="conv")
        self.assertEqual(on_b["kvkeep"].get("cached_by_tier", {}).get("remote", 0), 0)
        self.assertEqual(on_b["choices"][0]["message"]["content"],
                         on_a["choices"][0]["message"]["content"])
        self.assertGreaterEqual(b.stats()["remote"]["corrupt"], 1)


class NginxAffinityTest(unittest.TestCase):
    """The shipped nginx configuration in front of two instances."""

    def setUp(self):
        reason = skip_reason()
        if reason:
            self.skipTest(reason)
        if not os.access(NGINX, os.X_OK):
            self.skipTest("nginx is not installed (scripts/setup installs it)")
        self.tmp = tempfile.mkdtemp(prefix="kvkeep-nginx-")
        self.secret = os.path.join(self.tmp, "cluster.secret")
        with open(self.secret, "w") as f:
            f.write("test-cluster-secret-0123456789abcdef\n")
        self.redis = Redis()
        self.instances = [Instance(self.redis, self.secret), Instance(self.redis, self.secret)]
        self.port = kvkeepd_http.free_port()
        with open(os.path.join(ROOT, "examples/nginx/kvkeep.conf")) as f:
            conf = f.read()
        conf = (conf.replace("127.0.0.1:8001", f"127.0.0.1:{self.instances[0].port}")
                .replace("127.0.0.1:8002", f"127.0.0.1:{self.instances[1].port}")
                .replace("127.0.0.1:8000", f"127.0.0.1:{self.port}"))
        t = self.tmp
        with open(os.path.join(t, "nginx.conf"), "w") as f:
            f.write(f"daemon off; pid {t}/nginx.pid; error_log {t}/error.log;\n"
                    f"events {{}}\nhttp {{ access_log off; client_body_temp_path {t}/b; "
                    f"proxy_temp_path {t}/p; fastcgi_temp_path {t}/f; uwsgi_temp_path {t}/u; "
                    f"scgi_temp_path {t}/s;\n{conf}\n}}\n")
        self.nginx = subprocess.Popen([NGINX, "-c", os.path.join(t, "nginx.conf"), "-p", t],
                                      stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline or self.nginx.poll() is not None:
                    self.tearDown()
                    raise RuntimeError("nginx did not start")
                time.sleep(0.05)
        self.base_url = f"http://127.0.0.1:{self.port}/v1"

    def tearDown(self):
        if self.nginx.poll() is None:
            self.nginx.send_signal(signal.SIGQUIT)
            try:
                self.nginx.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.nginx.kill()
                self.nginx.wait()
        for inst in self.instances:
            inst.stop()
        self.redis.stop()
        shutil.rmtree(self.tmp, ignore_errors=True)

    def test_session_sticks_then_moves_and_is_served_from_redis(self):
        messages: list[dict] = []
        upstreams = set()
        for turn in conversation("sticky")[:3]:
            messages += turn
            reply, headers = chat(self.base_url, messages, cache_key="sticky")
            upstreams.add(headers["X-Kvkeep-Upstream"])
            messages.append({"role": "assistant",
                             "content": reply["choices"][0]["message"]["content"]})
        self.assertEqual(len(upstreams), 1, upstreams)  # every turn on one instance
        port = int(upstreams.pop().rsplit(":", 1)[1])
        home = next(i for i in self.instances if i.port == port)
        other = next(i for i in self.instances if i.port != port)
        churn(home.base_url)  # straight to the instance: its history goes down to Redis
        self.assertGreater(wait_remote_written(home, 1), 0)
        home.stop()
        messages += conversation("sticky")[3]
        reply, headers = chat(self.base_url, messages, cache_key="sticky")
        self.assertEqual(headers["X-Kvkeep-Upstream"].rsplit(", ", 1)[-1],
                         f"127.0.0.1:{other.port}")
        self.assertGreater(reply["kvkeep"]["cached_by_tier"]["remote"], 0, reply["kvkeep"])


if __name__ == "__main__":
    unittest.main()
