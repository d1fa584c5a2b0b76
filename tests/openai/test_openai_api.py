"""kvkeepd's OpenAI-compatible API through the official `openai` SDK and curl.

A real kvkeepd (tiny synthetic model) serves HTTP on TCP loopback (bearer keys) and on its
HTTP Unix socket. Replies are forced from a test script (--testing-scripted-replies)
where a test needs a tool call; everything else (HTTP, session matching, tool-call
parsing, tool-wait detection, KV reuse) is the daemon's real path.

    KVKEEP_BIN_DIR=build .venv/bin/python -m unittest -v tests/openai/test_openai_api.py
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import kvkeepd_http  # noqa: E402
from kvkeepd_http import KEY_A, KEY_B  # noqa: E402

try:
    import openai
except ImportError:  # pragma: no cover - reported as a skip
    openai = None

TOOL_REPLY = ('Let me look.\n<tool_call>\n{"name": "bash", "arguments": {"command": '
              '"ls -la /tmp"}}\n</tool_call>')
# A scripted reply of 4,400 tokens: it streams without pause and cannot end early, where a
# sampled reply of the tiny model may reach EOS within milliseconds.
LONG_SCRIPTED_REPLY = "long reply " * 400

BASH_TOOL = {"type": "function", "function": {
    "name": "bash", "description": "run a command",
    "parameters": {"type": "object", "properties": {"command": {"type": "string"}},
                   "required": ["command"]}}}

_daemon: kvkeepd_http.Daemon | None = None


def setUpModule():
    global _daemon
    if openai is None:
        raise unittest.SkipTest("the openai package is not installed (scripts/setup makes .venv)")
    missing = kvkeepd_http.binaries_missing()
    if missing:
        raise unittest.SkipTest(missing)
    # Reply 1 (the second assistant turn of a conversation) is a malformed tool call.
    _daemon = kvkeepd_http.Daemon(
        scripted=[TOOL_REPLY, "<tool_call>{not json</tool_call>", "done"],
        extra_args=["--http-max-body-bytes", "65536", "--retain-quota-blocks", "64"])


def tearDownModule():
    if _daemon is not None:
        _daemon.stop()


def client(key: str = KEY_A) -> "openai.OpenAI":
    return openai.OpenAI(base_url=_daemon.base_url, api_key=key, max_retries=0, timeout=60)


def user(text: str) -> dict:
    return {"role": "user", "content": text}


class ChatTest(unittest.TestCase):
    def test_non_streaming_reply_and_usage(self):
        r = client().chat.completions.create(
            model=_daemon.model, messages=[user("ping")], max_tokens=4, temperature=0,
            prompt_cache_key="plain-1")
        self.assertEqual(r.object, "chat.completion")
        choice = r.choices[0]
        self.assertEqual(choice.message.role, "assistant")
        self.assertEqual(choice.message.content, TOOL_REPLY)  # no tools offered: plain text
        self.assertIsNone(choice.message.tool_calls)
        self.assertEqual(r.usage.total_tokens, r.usage.prompt_tokens + r.usage.completion_tokens)
        self.assertGreater(r.usage.prompt_tokens, 0)
        self.assertEqual(r.usage.prompt_tokens_details.cached_tokens,
                         r.model_extra["kvkeep"]["cached_tokens"])

    def test_streaming_matches_non_streaming(self):
        messages = [user("count to three")]
        c = client()
        plain = c.chat.completions.create(model=_daemon.model, messages=messages,
                                          max_tokens=12, temperature=0, seed=1)
        # Scripted reply 0 is forced for a request with no assistant turn: both forced.
        chunks = list(c.chat.completions.create(
            model=_daemon.model, messages=messages + [{"role": "assistant", "content": "x"},
                                                      user("again")],
            max_tokens=12, temperature=0, stream=True, stream_options={"include_usage": True}))
        self.assertEqual(chunks[0].choices[0].delta.role, "assistant")
        text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
        finish = [ch.choices[0].finish_reason for ch in chunks if ch.choices and
                  ch.choices[0].finish_reason]
        self.assertEqual(len(finish), 1)
        usage = chunks[-1].usage
        self.assertIsNotNone(usage)
        self.assertEqual(chunks[-1].choices, [])
        self.assertGreater(usage.completion_tokens, 0)
        self.assertTrue(text)  # reply 1 of the script, streamed token by token
        self.assertEqual(text, "<tool_call>{not json</tool_call>")
        self.assertTrue(plain.choices[0].message.content)

    def test_forced_tool_call_and_malformed_tool_json(self):
        c = client()
        messages = [{"role": "system", "content": "You are an agent."}, user("list /tmp")]
        r = c.chat.completions.create(model=_daemon.model, messages=messages, tools=[BASH_TOOL],
                                      tool_choice="required", max_tokens=64)
        choice = r.choices[0]
        self.assertEqual(choice.finish_reason, "tool_calls")
        self.assertEqual(len(choice.message.tool_calls), 1)
        call = choice.message.tool_calls[0]
        self.assertEqual(call.function.name, "bash")
        self.assertEqual(json.loads(call.function.arguments), {"command": "ls -la /tmp"})
        self.assertEqual(choice.message.content, "Let me look.")
        # The tool result continues the same session and closes the tool wait.
        time.sleep(0.05)
        messages += [choice.message.model_dump(exclude_none=True),
                     {"role": "tool", "tool_call_id": call.id, "content": "a\nb"}]
        r2 = c.chat.completions.create(model=_daemon.model, messages=messages, tools=[BASH_TOOL],
                                       max_tokens=64)
        self.assertEqual(r2.model_extra["kvkeep"]["session"], r.model_extra["kvkeep"]["session"])
        self.assertEqual(r2.model_extra["kvkeep"]["matched"], "continued")
        # Reply 1 is malformed tool JSON: returned as text, never an error.
        self.assertEqual(r2.choices[0].finish_reason, "stop")
        self.assertIsNone(r2.choices[0].message.tool_calls)
        self.assertEqual(r2.choices[0].message.content, "<tool_call>{not json</tool_call>")
        info = _daemon.call("session.info", session=r.model_extra["kvkeep"]["session"])
        events = info["tool_events"]
        self.assertEqual(len(events), 1)
        self.assertEqual(events[0]["tool"], "ls")
        self.assertIsNotNone(events[0]["duration_ms"])
        self.assertGreaterEqual(events[0]["duration_ms"], 40)
        self.assertEqual([m["role"] for m in info["messages"]],
                         ["system", "user", "assistant", "tool", "assistant"])

    def test_cached_tokens_rise_over_turns(self):
        c = client()
        messages = [{"role": "system", "content": "You are terse. " * 20}, user("turn 0")]
        cached = []
        # Turns past the script's 3 replies sample the tiny model, whose byte tokens often
        # end inside a UTF-8 character: the echoed reply must still continue the session.
        for turn in range(6):
            r = c.chat.completions.create(model=_daemon.model, messages=messages, max_tokens=3,
                                          temperature=1.0, seed=turn)
            cached.append(r.usage.prompt_tokens_details.cached_tokens)
            if turn > 0:
                self.assertEqual(r.model_extra["kvkeep"]["matched"], "continued", turn)
            messages += [r.choices[0].message.model_dump(exclude_none=True),
                         user(f"turn {turn + 1} " + "more words " * 5)]
        self.assertEqual(cached[0], 0)
        for a, b in zip(cached, cached[1:]):
            self.assertGreater(b, a, cached)

    def test_models_health_metrics(self):
        models = client().models.list()
        self.assertEqual([m.id for m in models.data], [_daemon.model])
        out = subprocess.run(["curl", "-sS", "--unix-socket", _daemon.http_socket,
                              "http://localhost/metrics"], capture_output=True, text=True,
                             timeout=30)
        self.assertIn("kvkeep_requests_total", out.stdout)
        self.assertIn("kvkeep_tool_seconds_count", out.stdout)


@unittest.skipIf(shutil.which("curl") is None, "curl is not installed")
class UnixSocketTest(unittest.TestCase):
    def curl(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run(["curl", "-sS", "--unix-socket", _daemon.http_socket, *args],
                              capture_output=True, text=True, timeout=60)

    def test_chat_over_unix_socket_belongs_to_peer_uid(self):
        body = json.dumps({"model": _daemon.model, "messages": [user("unix hello")],
                           "max_tokens": 3, "user": "unix-user"})
        out = self.curl("-H", "Content-Type: application/json", "-d", body,
                        "http://localhost/v1/chat/completions")
        reply = json.loads(out.stdout)
        sid = reply["kvkeep"]["session"]
        # The session is this process's (the peer uid's): the native socket sees it.
        info = _daemon.call("session.info", session=sid, messages=False)
        self.assertEqual(info["owner_uid"], os.getuid())

    def test_streaming_sse_ends_with_done(self):
        body = json.dumps({"model": _daemon.model, "messages": [user("stream me")],
                           "max_tokens": 5, "stream": True})
        out = self.curl("-N", "-H", "Content-Type: application/json", "-d", body,
                        "http://localhost/v1/chat/completions")
        events = [line[6:] for line in out.stdout.splitlines() if line.startswith("data: ")]
        self.assertEqual(events[-1], "[DONE]")
        chunks = [json.loads(e) for e in events[:-1]]
        self.assertTrue(all(c["object"] == "chat.completion.chunk" for c in chunks))


class SessionMatchingTest(unittest.TestCase):
    def ask(self, messages, key=KEY_A, **kw):
        r = client(key).chat.completions.create(model=_daemon.model, messages=messages,
                                                max_tokens=3, temperature=0, **kw)
        return r, r.model_extra["kvkeep"]

    def test_continuation_edit_fork_and_tenants(self):
        base = [{"role": "system", "content": "matching test " * 10}, user("first question")]
        r1, k1 = self.ask(base)
        self.assertEqual(k1["matched"], "new")
        history = base + [r1.choices[0].message.model_dump(exclude_none=True)]
        r2, k2 = self.ask(history + [user("second question")])
        self.assertEqual((k2["matched"], k2["session"]), ("continued", k1["session"]))
        info = _daemon.call("session.info", session=k1["session"])
        self.assertEqual(info["num_messages"], 5)  # only the new user message was appended

        # An edited history (the first question changed) forks: a new session, and the
        # shared system prompt's KV is reused.
        edited = [base[0], user("first question, edited")]
        r3, k3 = self.ask(edited)
        self.assertEqual(k3["matched"], "forked")
        self.assertNotEqual(k3["session"], k1["session"])
        self.assertEqual(k3["forked_from"], k1["session"])
        self.assertGreater(r3.usage.prompt_tokens_details.cached_tokens, 0)

        # Another tenant sending identical messages gets its own session, with no KV of A's.
        r4, k4 = self.ask(base, key=KEY_B)
        self.assertEqual(k4["matched"], "new")
        self.assertNotIn(k4["session"], (k1["session"], k3["session"]))
        self.assertEqual(r4.usage.prompt_tokens_details.cached_tokens, 0)

    def test_prompt_cache_key_routes_to_its_session(self):
        msgs = [user("keyed conversation")]
        _, a = self.ask(msgs, prompt_cache_key="conv-a")
        _, b = self.ask(msgs, prompt_cache_key="conv-b")
        self.assertNotEqual(a["session"], b["session"])  # identical messages, two names
        r, a2 = self.ask(msgs + [{"role": "assistant", "content": "?"}, user("next")],
                         prompt_cache_key="conv-a")
        # Not a continuation (the assistant text differs from what was generated): forked,
        # and the name now points at the fork.
        self.assertIn(a2["matched"], ("forked", "continued"))
        _, via_header = self.ask(msgs, extra_headers={"X-Session-Id": "conv-b"})
        self.assertEqual(via_header["matched"], "forked")
        self.assertEqual(via_header["forked_from"], b["session"])


class RetentionHintTest(unittest.TestCase):
    """The providers' retention hints become session.retain pins (daemon quota: 64 blocks)."""

    def uid_pinned_blocks(self) -> int:
        # Read back on the native socket, independent of the HTTP reply: a ttl 0 retain on
        # a session of the same uid reports the uid's hint-pinned blocks.
        probe = _daemon.call("session.open")["session"]
        return _daemon.call("session.retain", session=probe, ttl_s=0)["uid_pinned_blocks"]

    def test_openai_and_anthropic_hints_pin_within_the_quota(self):
        c = client()
        before = self.uid_pinned_blocks()
        r = c.chat.completions.create(model=_daemon.model, messages=[user("keep me 24h")],
                                      max_tokens=2, extra_body={"prompt_cache_retention": "24h"})
        hints = r.model_extra["kvkeep"]["retention_hints"]
        self.assertEqual(hints["prompt_cache_retention"], "24h")
        self.assertEqual(hints["ttl_s"], 3600)  # session.retain's longest
        self.assertTrue(hints["applied"], hints)
        self.assertGreater(hints["pinned_blocks"], 0)
        self.assertEqual(hints["quota_blocks"], 64)
        self.assertEqual(self.uid_pinned_blocks(), before + hints["pinned_blocks"])

        messages = [{"role": "system", "content": [
            {"type": "text", "text": "a cached system prompt",
             "cache_control": {"type": "ephemeral", "ttl": "5m"}}]}, user("hi")]
        r = c.chat.completions.create(model=_daemon.model, messages=messages, max_tokens=2)
        hints = r.model_extra["kvkeep"]["retention_hints"]
        self.assertEqual((hints["cache_control_ttl"], hints["ttl_s"], hints["applied"]),
                         ("5m", 300, True))

        # Past the uid's quota: the completion is served, the hint is not applied, and why.
        pinned = self.uid_pinned_blocks()
        r = c.chat.completions.create(
            model=_daemon.model, messages=[user("long " * 300)], max_tokens=2,
            extra_body={"prompt_cache_retention": "in_memory"})
        hints = r.model_extra["kvkeep"]["retention_hints"]
        self.assertEqual(hints["ttl_s"], 300)
        self.assertFalse(hints["applied"])
        self.assertIn("quota", hints["reason"])
        self.assertEqual(self.uid_pinned_blocks(), pinned)

    def test_invalid_hints_are_400(self):
        c = client()
        with self.assertRaises(openai.BadRequestError):
            c.chat.completions.create(model=_daemon.model, messages=[user("x")], max_tokens=1,
                                      extra_body={"prompt_cache_retention": "forever"})
        bad = [{"role": "user", "content": [{"type": "text", "text": "x", "cache_control":
                                             {"type": "ephemeral", "ttl": "2h"}}]}]
        with self.assertRaises(openai.BadRequestError):
            c.chat.completions.create(model=_daemon.model, messages=bad, max_tokens=1)


class ErrorTest(unittest.TestCase):
    def assert_serving(self):
        r = client().chat.completions.create(model=_daemon.model, messages=[user("still up?")],
                                             max_tokens=2)
        self.assertEqual(r.choices[0].message.role, "assistant")

    def test_errors_are_typed_and_the_daemon_keeps_serving(self):
        c = client()
        with self.assertRaises(openai.AuthenticationError):
            client("sk-wrong").chat.completions.create(model=_daemon.model,
                                                       messages=[user("x")])
        with self.assertRaises(openai.NotFoundError) as e:
            c.chat.completions.create(model="gpt-4o", messages=[user("x")])
        self.assertEqual(e.exception.body["code"], "model_not_found")
        with self.assertRaises(openai.BadRequestError):
            c.chat.completions.create(model=_daemon.model,
                                      messages=[{"role": "wizard", "content": "x"}])
        with self.assertRaises(openai.BadRequestError):
            c.chat.completions.create(model=_daemon.model, messages=[user("x")],
                                      max_tokens="many")
        with self.assertRaises(openai.BadRequestError):
            c.chat.completions.create(model=_daemon.model, messages=[user("x")], n=2)
        with self.assertRaises(openai.APIStatusError) as e:
            c.chat.completions.create(model=_daemon.model, messages=[user("x" * 70000)])
        self.assertEqual(e.exception.status_code, 413)
        self.assert_serving()

    def test_raw_http_errors(self):
        def raw(payload: bytes, headers: str = "") -> str:
            with socket.create_connection(("127.0.0.1", _daemon.port), timeout=30) as s:
                s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
                          b"Authorization: Bearer " + KEY_A.encode() + b"\r\n" +
                          headers.encode() + b"Content-Length: " + str(len(payload)).encode() +
                          b"\r\nConnection: close\r\n\r\n" + payload)
                return s.makefile("rb").read().decode("utf-8", "replace")

        bad_json = raw(b"{not json")
        self.assertTrue(bad_json.startswith("HTTP/1.1 400"), bad_json)
        body = json.loads(bad_json.split("\r\n\r\n", 1)[1])
        self.assertEqual(set(body["error"]), {"message", "type", "param", "code"})
        self.assertTrue(raw(b"[" * 10000 + b"]" * 10000).startswith("HTTP/1.1 400"))
        # Oversized headers are refused by the HTTP library, not served.
        huge = raw(b"{}", "X-Big: " + "a" * 200000 + "\r\n")
        self.assertFalse(huge.startswith("HTTP/1.1 200"), huge[:200])
        self.assert_serving()

    def test_busy_session_and_overload_are_429_with_retry_after(self):
        # A conversation's second assistant turn is long: a stream that ended early would
        # free its slot before the request that must find the daemon at capacity.
        d = kvkeepd_http.Daemon(extra_args=["--http-max-inflight", "2", "--max-tokens", "4096"],
                                scripted=["ok", LONG_SCRIPTED_REPLY])
        streams = []
        try:
            c = openai.OpenAI(base_url=d.base_url, api_key=KEY_A, max_retries=0, timeout=120)

            def long_stream(messages, **extra):
                s = c.chat.completions.create(model=d.model, messages=messages,
                                              max_tokens=4000, stream=True, temperature=1.0,
                                              **extra)
                next(iter(s))  # the generation is in flight
                streams.append(s)

            # A name is known once its first turn is done; its next turn runs long.
            named = {"prompt_cache_key": "busy-key"}
            first = c.chat.completions.create(model=d.model, messages=[user("hi")],
                                              max_tokens=1, extra_body=named)
            turn2 = [user("hi"), first.choices[0].message.model_dump(exclude_none=True),
                     user("long")]
            long_stream(turn2, extra_body=named)
            # The same named session while its request runs: this client's rate, 429.
            with self.assertRaises(openai.RateLimitError) as e:
                c.chat.completions.create(model=d.model, messages=turn2, max_tokens=2,
                                          extra_body=named)
            self.assertEqual(e.exception.body["code"], "busy")
            self.assertEqual(e.exception.body["type"], "rate_limit_error")
            self.assertEqual(e.exception.response.headers.get("retry-after"), "1")
            # --http-max-inflight generations in flight: the daemon is at capacity, 429.
            long_stream([user("other"), {"role": "assistant", "content": "ok"}, user("long")])
            with self.assertRaises(openai.RateLimitError) as e:
                c.chat.completions.create(model=d.model, messages=[user("third")],
                                          max_tokens=2)
            self.assertEqual(e.exception.status_code, 429)
            self.assertEqual(e.exception.body["code"], "overloaded")
            self.assertEqual(e.exception.response.headers.get("retry-after"), "1")
        finally:
            for s in streams:
                s.close()
            d.stop()

    def test_storage_quota_is_429_insufficient_quota_and_context_is_400(self):
        # 64 KV blocks of 16: a 1024-token context; 20,000 stored bytes per uid.
        d = kvkeepd_http.Daemon(extra_args=["--max-stored-bytes-per-uid", "20000",
                                            "--num-kv-blocks", "64"])
        try:
            sent = []
            http = openai.DefaultHttpxClient(
                event_hooks={"request": [lambda request: sent.append(request.url.path)]})
            # max_retries=2: a 429 is retried by the SDK unless the daemon says not to.
            c = openai.OpenAI(base_url=d.base_url, api_key=KEY_A, max_retries=2, timeout=60,
                              http_client=http)
            with self.assertRaises(openai.BadRequestError) as e:
                c.chat.completions.create(model=d.model, messages=[user("y" * 1500)],
                                          max_tokens=1)
            self.assertEqual(e.exception.body["code"], "context_length_exceeded")
            refused = None
            for i in range(12):  # ~3.7 KB stored a conversation: the quota fills at ~5
                before_bytes = d.call("hello")["stored_bytes"]
                before_sent = len(sent)
                try:
                    c.chat.completions.create(
                        model=d.model, max_tokens=1,
                        messages=[user(f"conversation {i}: " + "x" * 700)])
                except openai.RateLimitError as err:
                    refused = err
                    break
            self.assertIsNotNone(refused, "the stored-bytes quota never refused")
            self.assertGreater(i, 0)
            self.assertEqual(refused.status_code, 429)
            self.assertEqual(refused.body["type"], "insufficient_quota")
            self.assertEqual(refused.body["code"], "quota_exceeded")
            self.assertIn("max_stored_bytes_per_uid", refused.body["message"])
            self.assertEqual(refused.response.headers.get("x-should-retry"), "false")
            self.assertIsNone(refused.response.headers.get("retry-after"))
            self.assertEqual(len(sent) - before_sent, 1, "the SDK retried a full quota")
            self.assertEqual(d.call("hello")["stored_bytes"], before_bytes, "refused but stored")
            self.assertEqual(len(c.models.list().data), 1)  # still serving
        finally:
            d.stop()

    def test_deleted_session_is_404_once_then_a_new_session(self):
        c = client()
        messages = [user("a conversation deleted behind the daemon's matcher")]
        r = c.chat.completions.create(model=_daemon.model, messages=messages, max_tokens=1,
                                      extra_body={"prompt_cache_key": "deleted-key"})
        _daemon.call("session.close", session=r.model_extra["kvkeep"]["session"], keep=False)
        messages += [r.choices[0].message.model_dump(exclude_none=True), user("still there?")]
        with self.assertRaises(openai.NotFoundError) as e:
            c.chat.completions.create(model=_daemon.model, messages=messages, max_tokens=1,
                                      extra_body={"prompt_cache_key": "deleted-key"})
        self.assertEqual(e.exception.body["code"], "not_found")
        again = c.chat.completions.create(model=_daemon.model, messages=messages, max_tokens=1,
                                          extra_body={"prompt_cache_key": "deleted-key"})
        self.assertEqual(again.model_extra["kvkeep"]["matched"], "new")

    def test_disconnect_mid_stream_cancels_generation(self):
        # The hang-up must cancel the reply while its tokens keep flowing.
        d = kvkeepd_http.Daemon(extra_args=["--max-tokens", "4096"],
                                scripted=[LONG_SCRIPTED_REPLY])
        try:
            c = openai.OpenAI(base_url=d.base_url, api_key=KEY_A, max_retries=0, timeout=120)
            stream = c.chat.completions.create(model=d.model, messages=[user("long")],
                                               max_tokens=4000, stream=True, temperature=1.0)
            next(iter(stream))
            stream.close()  # hang up
            deadline = time.monotonic() + 20
            while d.call("stats")["sessions"]["generating"] > 0:
                self.assertLess(time.monotonic(), deadline, "generation was not cancelled")
                time.sleep(0.1)
            generated = d.call("stats")["tokens"]["generated"]
            self.assertLess(generated, 4000)
        finally:
            d.stop()


if __name__ == "__main__":
    unittest.main()
