"""Tests of kvkeep_client.py and agent_loop.py against a real kvkeepd.

The daemon is $KVKEEP_BIN_DIR/kvkeepd (ctest sets KVKEEP_BIN_DIR to the build directory),
started once for this module on a temporary socket and state directory, with a tiny
synthetic model made by `$KVKEEP_BIN_DIR/kvkeep make-model`. Without the binaries every
test is skipped with a message saying so.

    cd examples && KVKEEP_BIN_DIR=../build python3 -m unittest -v test_kvkeep_client
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import unittest

import agent_loop
import kvkeep_client
from kvkeep_client import (AlreadyExists, AsyncClient, Cancelled, Client, GenerateResult,
                           InvalidArgument, KvkeepError, NotFound, TokenEvent)

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests",
                                "testlib"))
from kvkeepd_process import (KVKEEP, KVKEEPD, STARTUP_TIMEOUT_S, KvkeepdProcess,  # noqa: E402
                             binaries_missing)

# Seed of the tiny model's weights; random per run unless KVKEEP_TEST_SEED is set.
SEED = int(os.environ.get("KVKEEP_TEST_SEED", random.randrange(1 << 31)))

_daemon = None  # the module's Daemon


class Daemon(KvkeepdProcess):
    """A kvkeepd process on a temporary socket and state directory."""

    def __init__(self):
        super().__init__("kvkeep-pyclient-", model_name="model", seed=SEED)
        self.start(["--log-level", "info"])


def setUpModule():
    global _daemon
    missing = binaries_missing()
    if missing:
        raise unittest.SkipTest(missing)
    print(f"test_kvkeep_client: model seed {SEED} (set KVKEEP_TEST_SEED to replay)",
          file=sys.stderr)
    _daemon = Daemon()


def tearDownModule():
    if _daemon is not None:
        code = _daemon.proc.poll()
        _daemon.stop()
        if code is not None:
            raise AssertionError(f"kvkeepd died during the tests (exit {code})")


class DaemonTestCase(unittest.TestCase):
    def setUp(self):
        self.client = Client(_daemon.socket_path, timeout=120)

    def tearDown(self):
        self.client.disconnect()
        self.assertIsNone(_daemon.proc.poll(), "kvkeepd exited:\n" + _daemon.log_tail())

    def new_session(self, **kwargs) -> str:
        return self.client.open_session(system="You are a test agent.", **kwargs)


class SyncClientTest(DaemonTestCase):
    def test_hello_reports_protocol_and_my_uid(self):
        hello = self.client.hello()
        self.assertEqual(hello["protocol"], kvkeep_client.PROTOCOL_VERSION)
        self.assertEqual(hello["uid"], os.getuid())
        self.assertGreater(hello["limits"]["max_line_bytes"], 0)

    def test_open_append_info_round_trip(self):
        sid = self.new_session()
        self.client.append(sid, [{"role": "user", "content": "first question"}])
        self.client.append(sid, "second question")  # a bare string is a user message
        info = self.client.session_info(sid)
        self.assertEqual(info["session"], sid)
        self.assertEqual(info["owner_uid"], os.getuid())
        self.assertEqual([(m["role"], m["content"]) for m in info["messages"]],
                         [("system", "You are a test agent."), ("user", "first question"),
                          ("user", "second question")])
        self.assertIn(sid, [s["session"] for s in self.client.list_sessions()])

    def test_client_chosen_id_and_duplicate_is_already_exists(self):
        sid = f"py-{SEED}-dup"
        self.assertEqual(self.client.open_session(session=sid), sid)
        with self.assertRaises(AlreadyExists) as cm:
            self.client.open_session(session=sid)
        self.assertEqual(cm.exception.code, "already_exists")

    def test_forced_generation_reproduces_the_forced_text(self):
        sid = self.new_session()
        self.client.append(sid, "Say the words.")
        forced = "the quick brown fox"
        r = self.client.generate(sid, max_tokens=64, forced=forced)
        self.assertIsInstance(r, GenerateResult)
        self.assertEqual(r.text, forced)
        self.assertEqual(r.finish_reason, "stop")
        self.assertEqual(r.usage["generated_tokens"], len(r.tokens))
        info = self.client.session_info(sid)
        self.assertEqual(info["messages"][-1]["role"], "assistant")
        self.assertEqual(info["messages"][-1]["content"], forced)

    def test_next_turn_reuses_previous_turns_kv(self):
        sid = self.new_session()
        self.client.append(sid, "a question long enough to fill a few KV blocks " * 4)
        first = self.client.generate(sid, max_tokens=8, seed=1)
        self.client.append(sid, "a follow-up")
        second = self.client.generate(sid, max_tokens=8, seed=2)
        for u in (first.usage, second.usage):
            self.assertEqual(u["prompt_tokens"], u["cached_tokens"] + u["recomputed_tokens"])
        # The whole first prompt is a prefix of the second one; all but its last,
        # partially filled block must come from the cache.
        block = self.client.stats()["pools"]["device"]["block_size"]
        self.assertGreaterEqual(second.usage["cached_tokens"],
                                first.usage["prompt_tokens"] // block * block)
        self.assertGreater(second.usage["prompt_tokens"], first.usage["prompt_tokens"])

    def test_greedy_generation_is_identical_on_a_fork(self):
        sid = self.new_session()
        self.client.append(sid, "Continue this.")
        fork = self.client.fork(sid)
        self.assertNotEqual(fork, sid)
        a = self.client.generate(sid, max_tokens=12, temperature=0)
        b = self.client.generate(fork, max_tokens=12, temperature=0)
        self.assertEqual(a.tokens, b.tokens)
        self.assertEqual(a.text, b.text)
        self.assertGreater(b.usage["cached_tokens"], 0)  # the fork shares the parent's KV

    def test_stream_events_add_up_to_the_result(self):
        sid = self.new_session()
        self.client.append(sid, "Stream something.")
        events = list(self.client.stream(sid, max_tokens=16, temperature=0.8, seed=SEED))
        tokens = [e for e in events if isinstance(e, TokenEvent)]
        self.assertIsInstance(events[-1], GenerateResult)
        self.assertTrue(all(isinstance(e, TokenEvent) for e in events[:-1]))
        result = events[-1]
        self.assertGreater(len(tokens), 0)
        streamed = [e.token for e in tokens]
        # Every decoded token is streamed; a final EOS may be left out of the events.
        self.assertEqual(streamed, result.tokens[:len(streamed)])
        self.assertLessEqual(len(result.tokens) - len(streamed), 1)
        # Without stop strings, the events' texts add up to the result's text.
        self.assertEqual("".join(e.text for e in tokens), result.text)

    def test_streamed_and_plain_generation_agree(self):
        sid = self.new_session()
        self.client.append(sid, "Same either way.")
        plain_fork, streamed_fork = self.client.fork(sid), self.client.fork(sid)
        # Both forks start from the same KV: the prompt's full blocks cached by this turn,
        # the rest prefilled on top. A prompt prefilled whole and one that continues cached
        # blocks may differ in the last bits of their logits (other chunking), which
        # sampling can turn into another token (seed 101801554 did).
        self.client.generate(sid, max_tokens=1)
        plain = self.client.generate(plain_fork, max_tokens=10, temperature=0.7, seed=7)
        streamed = list(self.client.stream(streamed_fork, max_tokens=10, temperature=0.7,
                                           seed=7))[-1]
        self.assertGreater(plain.usage["cached_tokens"], 0)
        self.assertEqual(plain.usage["cached_tokens"], streamed.usage["cached_tokens"])
        self.assertEqual(plain.tokens, streamed.tokens)
        self.assertEqual(plain.text, streamed.text)

    def test_unknown_session_is_not_found(self):
        for call in (lambda: self.client.session_info("no-such-session"),
                     lambda: self.client.append("no-such-session", "hi"),
                     lambda: self.client.generate("no-such-session", max_tokens=1),
                     lambda: self.client.close("no-such-session")):
            with self.assertRaises(NotFound) as cm:
                call()
            self.assertIsInstance(cm.exception, KvkeepError)
            self.assertEqual(cm.exception.code, "not_found")

    def test_invalid_arguments_are_typed(self):
        sid = self.new_session()
        with self.assertRaises(InvalidArgument):
            self.client.generate(sid, max_tokens=0)
        with self.assertRaises(InvalidArgument):
            self.client.append(sid, [{"role": "wizard", "content": "x"}])
        with self.assertRaises(kvkeep_client.UnknownVerb):
            self.client.request("no.such.verb")
        with self.assertRaises(NotFound):
            self.client.cancel(987654321)

    def test_tool_events_record_duration(self):
        sid = self.new_session()
        begun = self.client.tool_begin(sid, "sleep", args="0.2")
        time.sleep(0.2)
        ended = self.client.tool_end(sid, content="slept")
        self.assertEqual(ended["tool_event"], begun["tool_event"])
        self.assertEqual(ended["tool"], "sleep")
        self.assertGreaterEqual(ended["duration_ms"], 200.0)
        info = self.client.session_info(sid)
        self.assertEqual(info["messages"][-1]["role"], "tool")
        self.assertEqual(info["messages"][-1]["content"], "slept")
        self.assertEqual(info["tool_events"][-1]["tool"], "sleep")

    def test_close_discard_and_keep(self):
        kept, dropped = self.new_session(), self.new_session()
        self.assertFalse(self.client.close(dropped, keep=False)["kept"])
        with self.assertRaises(NotFound):
            self.client.session_info(dropped)
        self.client.close(kept, keep=True)
        self.assertTrue(self.client.session_info(kept)["closed"])
        self.assertEqual(self.client.open_session(session=kept), kept)  # reopens
        self.assertFalse(self.client.session_info(kept)["closed"])

    def test_stats_json_and_prometheus(self):
        stats = self.client.stats()
        self.assertIn("tokens", stats)
        self.assertGreaterEqual(stats["server"]["requests"], 1)
        text = self.client.stats(format="prometheus")
        self.assertIsInstance(text, str)
        self.assertIn("kvkeep_", text)

    def test_cancel_ends_the_stream_with_cancelled(self):
        sid = self.new_session()
        self.client.append(sid, "Talk for a long time.")
        max_tokens = self.client.hello()["limits"]["max_tokens"]
        stream = self.client.stream(sid, max_tokens=min(max_tokens, 1500), temperature=1.0,
                                    seed=SEED, stop=[])
        outcome = None
        try:
            for item in stream:
                if isinstance(item, TokenEvent) and outcome is None:
                    outcome = "cancel sent"
                    stream.cancel()
                elif isinstance(item, GenerateResult):
                    # Only an EOS before the cancel landed may end it normally; running
                    # to max_tokens would mean the cancel was ignored.
                    self.assertEqual(item.finish_reason, "stop")
                    outcome = "finished"
        except Cancelled:
            outcome = "cancelled"
        self.assertIn(outcome, ("cancelled", "finished"))
        if outcome == "cancelled":
            # A cancelled generation appends nothing.
            self.assertEqual(self.client.session_info(sid)["messages"][-1]["role"], "user")
        # The connection is still usable.
        self.assertEqual(self.client.hello()["protocol"], 1)

    def test_requests_from_many_threads_share_one_connection(self):
        results, errors = {}, []

        def worker(i):
            try:
                sid = self.client.open_session()
                self.client.append(sid, f"thread {i}")
                results[i] = self.client.generate(sid, forced=f"answer {i}").text
            except Exception as e:  # noqa: BLE001 - reported below
                errors.append(e)

        threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
        self.assertEqual(errors, [])
        self.assertEqual(results, {i: f"answer {i}" for i in range(8)})

    def test_connect_failure_is_connection_closed(self):
        with self.assertRaises(kvkeep_client.ConnectionClosed):
            Client(os.path.join(_daemon.dir, "nobody.sock"))


class AsyncClientTest(unittest.TestCase):
    def test_async_flow_and_multiplexing(self):
        async def run():
            async with AsyncClient(_daemon.socket_path, timeout=120) as c:
                hello = await c.hello()
                self.assertEqual(hello["uid"], os.getuid())
                sids = [await c.open_session(system="async") for _ in range(6)]
                for i, sid in enumerate(sids):
                    await c.append(sid, f"question {i}")
                # Six generations in flight at once over one connection; each reply must
                # reach its own caller.
                texts = await asyncio.gather(
                    *(c.generate(sid, forced=f"reply number {i}") for i, sid in enumerate(sids)))
                self.assertEqual([r.text for r in texts],
                                 [f"reply number {i}" for i in range(len(sids))])
                # Streaming.
                stream = await c.stream(sids[0], max_tokens=8, temperature=0)
                items = [item async for item in stream]
                self.assertIsInstance(items[-1], GenerateResult)
                self.assertEqual([e.token for e in items[:-1]],
                                 items[-1].tokens[:len(items) - 1])
                # Tool events and typed errors.
                await c.tool_begin(sids[1], "bash", args="true")
                ended = await c.tool_end(sids[1], content="ok")
                self.assertEqual(ended["tool"], "bash")
                with self.assertRaises(NotFound):
                    await c.session_info("no-such-async-session")
                listed = {s["session"] for s in await c.list_sessions()}
                self.assertTrue(set(sids) <= listed)
                fork = await c.fork(sids[2])
                self.assertEqual((await c.session_info(fork))["num_messages"],
                                 (await c.session_info(sids[2]))["num_messages"])
                for sid in sids + [fork]:
                    await c.close(sid, keep=False)
                self.assertIn("tokens", await c.stats())

        asyncio.run(run())


class AgentLoopTest(unittest.TestCase):
    def test_agent_loop_turns_reuse_cache(self):
        lines = []
        with Client(_daemon.socket_path, timeout=120) as c:
            sid, usages = agent_loop.run_agent(c, turns=4, out=lines.append)
            info = c.session_info(sid)
            block = c.stats()["pools"]["device"]["block_size"]
        self.assertEqual(len(lines), 4)
        self.assertEqual(len(usages), 4)
        # user task + 4 x (assistant reply, tool output) after the system prompt.
        self.assertEqual([m["role"] for m in info["messages"]],
                         ["system", "user"] + ["assistant", "tool"] * 4)
        self.assertEqual(len(info["tool_events"]), 4)
        self.assertIn("hello from the tool", info["messages"][3]["content"])
        # Each turn reuses every full block of the previous turn's KV: its prompt and its
        # reply, less the last sampled token, whose KV is never computed. Cached tokens
        # need not grow every turn: an earlier identical conversation (the script test's)
        # may have cached a turn's prompt already, and a turn that adds less than a block
        # past the previous KV's last full block reuses the same blocks.
        for prev, cur in zip(usages, usages[1:]):
            previous_kv = prev["prompt_tokens"] + prev["generated_tokens"] - 1
            self.assertGreaterEqual(cur["cached_tokens"], previous_kv // block * block)
            self.assertGreater(cur["prompt_tokens"], previous_kv)
        self.assertGreater(usages[-1]["cached_tokens"], usages[0]["cached_tokens"])

    def test_agent_loop_script_runs(self):
        env = dict(os.environ, KVKEEP_SOCKET=_daemon.socket_path)
        done = subprocess.run([sys.executable, "agent_loop.py", "--turns", "2"],
                              capture_output=True, text=True, timeout=300, env=env,
                              cwd=os.path.dirname(os.path.abspath(__file__)))
        self.assertEqual(done.returncode, 0, done.stderr)
        self.assertEqual(done.stdout.count("cached="), 2, done.stdout)


class CliVerbsTest(unittest.TestCase):
    """`kvkeep status|sessions|chat` against the same daemon."""

    def kvkeep(self, *args, stdin=""):
        return subprocess.run([KVKEEP, *args, "--socket", _daemon.socket_path], input=stdin,
                              capture_output=True, text=True, timeout=300)

    def test_status(self):
        done = self.kvkeep("status")
        self.assertEqual(done.returncode, 0, done.stderr)
        self.assertIn("kvkeepd", done.stdout)
        self.assertIn("sessions", done.stdout)
        done = self.kvkeep("status", "--format", "json")
        self.assertEqual(done.returncode, 0, done.stderr)
        doc = json.loads(done.stdout)
        self.assertEqual(doc["hello"]["uid"], os.getuid())
        self.assertIn("tokens", doc["stats"])
        done = self.kvkeep("status", "--format", "prometheus")
        self.assertEqual(done.returncode, 0, done.stderr)
        self.assertIn("kvkeep_", done.stdout)

    def test_sessions_lists_mine(self):
        with Client(_daemon.socket_path) as c:
            sid = c.open_session(session=f"cli-list-{SEED}")
        done = self.kvkeep("sessions", "--json")
        self.assertEqual(done.returncode, 0, done.stderr)
        self.assertIn(sid, [s["session"] for s in json.loads(done.stdout)])
        done = self.kvkeep("sessions")
        self.assertEqual(done.returncode, 0, done.stderr)
        self.assertIn(sid, done.stdout)

    def test_chat_under_a_pipe(self):
        sid = f"cli-chat-{SEED}"
        done = self.kvkeep("chat", "--session", sid, "--max-tokens", "4", "--usage",
                           stdin="hello there\n\nsecond line\n")
        self.assertEqual(done.returncode, 0, done.stderr)
        self.assertEqual(done.stderr.count("cached"), 2, done.stderr)
        with Client(_daemon.socket_path) as c:
            info = c.session_info(sid)
        self.assertTrue(info["closed"])  # kept, closed at EOF
        self.assertEqual([(m["role"], m["content"]) for m in info["messages"] if m["role"] == "user"],
                         [("user", "hello there"), ("user", "second line")])
        self.assertEqual([m["role"] for m in info["messages"]],
                         ["user", "assistant", "user", "assistant"])
        # Each reply was printed on its own line, as the session stored it.
        replies = [m["content"] for m in info["messages"] if m["role"] == "assistant"]
        self.assertEqual(done.stdout, "".join(r + "\n" for r in replies))

    def test_no_daemon_is_a_clear_error(self):
        done = subprocess.run([KVKEEP, "status", "--socket",
                               os.path.join(_daemon.dir, "nobody.sock")],
                              capture_output=True, text=True, timeout=60)
        self.assertEqual(done.returncode, 1)
        self.assertIn("is kvkeepd running?", done.stderr)


class SystemdProtocolTest(unittest.TestCase):
    """kvkeepd under the systemd protocols, without systemd: this test plays the manager.
    It binds the notify datagram socket (NOTIFY_SOCKET), passes a listening socket as fd 3
    (LISTEN_PID/LISTEN_FDS, as kvkeepd.socket does) and asks for watchdog pings."""

    def test_notify_watchdog_activation_reload_stop(self):
        tmp = tempfile.mkdtemp(prefix="kvkeep-systemd-", dir=_daemon.dir)
        notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        notify.bind(os.path.join(tmp, "notify.sock"))
        notify.settimeout(1.0)
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        activated_path = os.path.join(tmp, "activated.sock")
        listener.bind(activated_path)
        listener.listen(16)
        own_path = os.path.join(tmp, "own.sock")  # must stay unused: fd 3 takes precedence
        fd = listener.fileno()
        env = dict(os.environ, NOTIFY_SOCKET=os.path.join(tmp, "notify.sock"),
                   WATCHDOG_USEC="400000")
        # LISTEN_PID must be kvkeepd's pid: set it in a shell that then execs kvkeepd.
        script = (f'exec 3<&{fd} {fd}<&-; '
                  'LISTEN_PID=$$ LISTEN_FDS=1 LISTEN_FDNAMES=kvkeep exec "$0" "$@"')
        with open(os.path.join(tmp, "log"), "wb") as log:
            proc = subprocess.Popen(
                ["sh", "-c", script, KVKEEPD, "--model", _daemon.model_dir, "--socket", own_path,
                 "--state-dir", os.path.join(tmp, "state")],
                env=env, pass_fds=(fd,), stdout=log, stderr=subprocess.STDOUT)
        listener.close()  # only kvkeepd holds it now, as under systemd
        received = []

        def wait_for(state, timeout_s):
            deadline = time.monotonic() + timeout_s
            while time.monotonic() < deadline:
                try:
                    message = notify.recv(4096).decode()
                except socket.timeout:
                    self.assertIsNone(proc.poll(), "kvkeepd exited")
                    continue
                received.append(message)
                if state in message.split("\n"):
                    return message
            self.fail(f"no {state} within {timeout_s} s; got {received}")

        try:
            ready = wait_for("READY=1", STARTUP_TIMEOUT_S)
            self.assertTrue(any(m.startswith("STATUS=") for m in ready.split("\n")), ready)
            with Client(activated_path, timeout=60) as c:
                self.assertEqual(c.hello()["protocol"], kvkeep_client.PROTOCOL_VERSION)
            self.assertFalse(os.path.exists(own_path), "kvkeepd bound its own socket")
            wait_for("WATCHDOG=1", 5)
            wait_for("WATCHDOG=1", 5)
            proc.send_signal(signal.SIGHUP)
            wait_for("RELOADING=1", 10)
            wait_for("READY=1", 10)
            proc.send_signal(signal.SIGTERM)
            wait_for("STOPPING=1", 30)
            self.assertEqual(proc.wait(timeout=60), 0)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            notify.close()


if __name__ == "__main__":
    unittest.main()
