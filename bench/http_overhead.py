#!/usr/bin/env python3
"""Request overhead of the OpenAI HTTP front end against the JSON-lines front end.

One agent turn each way, against one kvkeepd (tiny synthetic model) in the same run, both
over Unix sockets, with C concurrent connections each running T turns:
  JSON-lines: session.append(user message) + session.generate(max_tokens=1)  (2 round trips)
  HTTP:       POST /v1/chat/completions with the whole conversation, max_tokens=1 (1 request:
              session matching, append and generate inside the daemon)
Both conversations are the same text (system prompt, user turns, 1-token replies), so
the engine's work per turn is the same. R alternating rounds each (--rounds); each round's
figure is its median turn latency; printed per connection count: the median over rounds
of each front end, their ratio (HTTP / JSON-lines) and the spread of the per-round
ratios (min-max).

Both conversations are their own each round and each front end (the round and front end
are in the system prompt) and use temperature 0: neither is served from KV that an
identical earlier conversation left in the prefix cache. The last column shows the
engine's work per turn both ways (prompt tokens, and those recomputed, not cached), which
must match for the ratio to measure the front ends. (Before 2026-12-06 the JSON-lines
conversation was the same text every round, so from the second round on its turns hit the
prefix cache almost whole: about 8 tokens recomputed a turn against about 35 over HTTP,
which made HTTP look 2-3x slower.)

A transport-only row isolates the front ends' plumbing from the engine and the store:
JSON-lines `hello` against HTTP `GET /health`, 1 connection, 200 requests per round.

--trace runs kvkeepd at log level debug and prints, per row, the median time of each step
of a turn from the daemon's trace lines (daemon/request_trace.h): the HTTP request's steps
(read, parse, match, append, first_token, generated, wake, reply, write), session.generate's
steps for each front end (validate, first_token, engine_done, post, store, reply), and the
JSON-lines client's round trips (append, generate). Debug logging slows both a little.

    python3 bench/http_overhead.py --bin-dir build --connections 1 64 --rounds 7 [--trace]
"""

from __future__ import annotations

import argparse
import collections
import http.client
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import tempfile
import threading
import time


class UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: str):
        super().__init__("localhost", timeout=60)
        self.path = path

    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(self.path)


class Lines:
    def __init__(self, path: str):
        self.s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.s.connect(path)
        self.f = self.s.makefile("rb")
        self.next_id = 0

    def call(self, verb: str, **params) -> dict:
        self.next_id += 1
        self.s.sendall((json.dumps({"id": self.next_id, "verb": verb, **params}) + "\n").encode())
        reply = json.loads(self.f.readline())
        if "error" in reply:
            raise RuntimeError(reply["error"])
        return reply["result"]


# Prompt and cached tokens of every timed turn, per front end: the engine's work, which must
# be the same both ways for the ratio to measure the front end.
_tokens: dict[str, list[tuple[int, int]]] = {"lines": [], "http": []}
_round = [0]
# The sessions each front end used (to tell their `trace generate` lines apart) and the
# JSON-lines client's round trips (ms), for --trace.
_sessions: dict[str, set[str]] = {"lines": set(), "http": set()}
_lines_rtt: dict[str, list[float]] = {"append": [], "generate": []}


def system_prompt(k: int, front_end: str) -> str:
    # Its own conversation each round and each front end (the same number of tokens): no
    # turn is served from the KV that an identical earlier conversation left in the prefix
    # cache, so both front ends give the engine the same work.
    return f"You are a benchmark. Agent {k}, round {_round[0]}, front end {front_end}."


def lines_agent(path: str, turns: int, out: list, barrier: threading.Barrier, k: int):
    c = Lines(path)
    sid = c.call("session.open", system=system_prompt(k, "L"))["session"]
    _sessions["lines"].add(sid)
    barrier.wait()
    for t in range(turns):
        t0 = time.perf_counter()
        c.call("session.append", session=sid, messages=[{"role": "user", "content": f"turn {t}"}])
        t1 = time.perf_counter()
        r = c.call("session.generate", session=sid, max_tokens=1, temperature=0)
        t2 = time.perf_counter()
        out.append(t2 - t0)
        _lines_rtt["append"].append((t1 - t0) * 1000)
        _lines_rtt["generate"].append((t2 - t1) * 1000)
        _tokens["lines"].append((r["usage"]["prompt_tokens"], r["usage"]["cached_tokens"]))
    c.call("session.close", session=sid, keep=False)


def http_agent(path: str, lines_path: str, model: str, turns: int, out: list,
               barrier: threading.Barrier, k: int):
    conn = UnixHTTPConnection(path)
    # Deleted at the end as the JSON-lines agent deletes its session, so both leave the
    # daemon the same.
    messages = [{"role": "system", "content": system_prompt(k, "H")}]
    session = None
    barrier.wait()
    for t in range(turns):
        messages.append({"role": "user", "content": f"turn {t}"})
        body = json.dumps({"model": model, "messages": messages, "max_tokens": 1,
                           "temperature": 0})
        t0 = time.perf_counter()
        conn.request("POST", "/v1/chat/completions", body, {"Content-Type": "application/json"})
        r = conn.getresponse()
        reply = json.loads(r.read())
        out.append(time.perf_counter() - t0)
        if r.status != 200:
            raise RuntimeError(reply)
        session = reply["kvkeep"]["session"]
        _sessions["http"].add(session)
        u = reply["usage"]
        _tokens["http"].append((u["prompt_tokens"], u["prompt_tokens_details"]["cached_tokens"]))
        messages.append(reply["choices"][0]["message"])
    Lines(lines_path).call("session.close", session=session, keep=False)


def lines_noop(path: str, turns: int, out: list, barrier: threading.Barrier, k: int):
    c = Lines(path)
    barrier.wait()
    for _ in range(turns):
        t0 = time.perf_counter()
        c.call("hello")
        out.append(time.perf_counter() - t0)


def http_noop(path: str, turns: int, out: list, barrier: threading.Barrier, k: int):
    conn = UnixHTTPConnection(path)
    barrier.wait()
    for _ in range(turns):
        t0 = time.perf_counter()
        conn.request("GET", "/health")
        r = conn.getresponse()
        r.read()
        out.append(time.perf_counter() - t0)
        if r.status != 200:
            raise RuntimeError(r.status)


def recomputed(turns: list[tuple[int, int]]) -> str:
    """Mean prompt and recomputed (prompt - cached) tokens a turn, or '-' (no generate)."""
    if not turns:
        return "-"
    prompt = statistics.mean(p for p, _ in turns)
    return f"{prompt:.0f} / {statistics.mean(p - c for p, c in turns):.1f}"


_TRACE = re.compile(r"trace (http POST /v1/chat/completions 200|generate (\S+)): (.*)$")


def trace_steps(log_text: str) -> dict[str, dict[str, list[float]]]:
    """Step -> durations (ms) from the daemon's trace lines, per kind of line:
    "http" (the HTTP request), "lines generate" and "http generate" (session.generate)."""
    steps: dict[str, dict[str, list[float]]] = collections.defaultdict(
        lambda: collections.defaultdict(list))
    for line in log_text.splitlines():
        m = _TRACE.search(line)
        if not m:
            continue
        if m.group(2) is None:
            kind = "http"
        else:
            kind = next((fe + " generate" for fe, ids in _sessions.items() if m.group(2) in ids),
                        None)
            if kind is None:
                continue
        for field in m.group(3).split():
            step, us = field.split("=")
            steps[kind][step].append(int(us.rstrip("us")) / 1000)
    return steps


def print_trace(steps: dict[str, dict[str, list[float]]]):
    print("\n| where | step | median ms | turns |")
    print("| --- | --- | --- | --- |")
    for name, values in _lines_rtt.items():
        if values:
            print(f"| JSON-lines client | {name} round trip | {statistics.median(values):.3f} "
                  f"| {len(values)} |")
    for kind in ("lines generate", "http generate", "http"):
        for step, values in steps.get(kind, {}).items():
            where = {"http": "HTTP request", "lines generate": "generate (JSON-lines)",
                     "http generate": "generate (HTTP)"}[kind]
            print(f"| {where} | {step} | {statistics.median(values):.3f} | {len(values)} |")
    print(flush=True)


def run(target, connections: int, *args) -> float:
    latencies: list[float] = []
    barrier = threading.Barrier(connections)
    threads = [threading.Thread(target=target, args=(*args, latencies, barrier, k))
               for k in range(connections)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    # The median turn: robust to the stalls a shared machine adds to a few turns.
    return statistics.median(latencies) * 1000


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin-dir", default="build")
    ap.add_argument("--connections", type=int, nargs="+", default=[1, 64])
    ap.add_argument("--turns", type=int, default=0, help="per connection (default: 60/C, min 8)")
    ap.add_argument("--rounds", type=int, default=5, help="alternating rounds per row")
    ap.add_argument("--trace", action="store_true",
                    help="log at debug and print each step's median time per row")
    args = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="kvkeep-bench-http-")
    model = os.path.join(tmp, "tiny")
    subprocess.run([os.path.join(args.bin_dir, "kvkeep"), "make-model", "--preset", "tiny",
                    "--out", model], check=True, capture_output=True)
    sock = os.path.join(tmp, "kvkeep.sock")
    log_path = os.path.join(tmp, "log")
    log = open(log_path, "wb")
    proc = subprocess.Popen([os.path.join(args.bin_dir, "kvkeepd"), "--model", model, "--socket",
                             sock, "--state-dir", os.path.join(tmp, "state"), "--log-level",
                             "debug" if args.trace else "warn", "--max-sessions-per-uid", "4096", "--threads", "1"], stdout=log,
                            stderr=subprocess.STDOUT)
    try:
        http_sock = os.path.join(tmp, "kvkeep-http.sock")
        deadline = time.monotonic() + 60
        while not os.path.exists(http_sock):
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError("kvkeepd did not start")
            time.sleep(0.05)
        print(f"load average {os.getloadavg()[0]:.2f} at the start")
        print("| connections | turns | rounds | JSON-lines ms/turn | HTTP ms/turn "
              "| HTTP / JSON-lines | per-round ratios (min-max) "
              "| prompt / recomputed tokens a turn (JSON-lines; HTTP) |")
        print("| --- | --- | --- | --- | --- | --- | --- | --- |")
        rows = [("transport (hello vs GET /health)", 1, 200, lines_noop, (sock,), http_noop,
                 (http_sock,))]
        for c in args.connections:
            turns = args.turns or max(8, 60 // c)
            rows.append((str(c), c, turns, lines_agent, (sock,), http_agent,
                         (http_sock, sock, "tiny")))
        for label, c, turns, lines_fn, lines_args, http_fn, http_args in rows:
            run(lines_fn, c, *lines_args, 2)  # warm-up
            run(http_fn, c, *http_args, 2)
            _round[0] += 1
            for v in (*_tokens.values(), *_lines_rtt.values()):
                v.clear()
            log_from = os.path.getsize(log_path)
            # Alternating rounds: the machine is shared and noisy.
            lines_ms, http_ms = [], []
            for _ in range(args.rounds):
                lines_ms.append(run(lines_fn, c, *lines_args, turns))
                http_ms.append(run(http_fn, c, *http_args, turns))
                _round[0] += 1
            ratios = [h / j for h, j in zip(http_ms, lines_ms)]
            lm, hm = statistics.median(lines_ms), statistics.median(http_ms)
            work = "; ".join(recomputed(_tokens[fe]) for fe in ("lines", "http"))
            print(f"| {label} | {turns} | {args.rounds} | {lm:.2f} | {hm:.2f} | {hm / lm:.2f}x "
                  f"| {min(ratios):.2f}-{max(ratios):.2f} | {work} |", flush=True)
            if args.trace and lines_fn is lines_agent:
                with open(log_path, errors="replace") as f:
                    f.seek(log_from)
                    print_trace(trace_steps(f.read()))
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
        log.close()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
