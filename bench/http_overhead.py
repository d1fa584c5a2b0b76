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

A transport-only row isolates the front ends' plumbing from the engine and the store:
JSON-lines `hello` against HTTP `GET /health`, 1 connection, 200 requests per round.

    python3 bench/http_overhead.py --bin-dir build --connections 1 64 --rounds 5
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
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


def lines_agent(path: str, turns: int, out: list, barrier: threading.Barrier, k: int):
    c = Lines(path)
    sid = c.call("session.open", system=f"You are a benchmark. Agent {k}.")["session"]
    barrier.wait()
    for t in range(turns):
        t0 = time.perf_counter()
        c.call("session.append", session=sid, messages=[{"role": "user", "content": f"turn {t}"}])
        c.call("session.generate", session=sid, max_tokens=1)
        out.append(time.perf_counter() - t0)
    c.call("session.close", session=sid, keep=False)


_round = [0]


def http_agent(path: str, lines_path: str, model: str, turns: int, out: list,
               barrier: threading.Barrier, k: int):
    conn = UnixHTTPConnection(path)
    # A conversation of its own each round (no fork from the last round's), deleted at the
    # end as the JSON-lines agent deletes its session, so both leave the daemon the same.
    messages = [{"role": "system", "content": f"You are a benchmark. Agent {k}, round {_round[0]}."}]
    session = None
    barrier.wait()
    for t in range(turns):
        messages.append({"role": "user", "content": f"turn {t}"})
        body = json.dumps({"model": model, "messages": messages, "max_tokens": 1})
        t0 = time.perf_counter()
        conn.request("POST", "/v1/chat/completions", body, {"Content-Type": "application/json"})
        r = conn.getresponse()
        reply = json.loads(r.read())
        out.append(time.perf_counter() - t0)
        if r.status != 200:
            raise RuntimeError(reply)
        session = reply["kvkeep"]["session"]
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
    args = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="kvkeep-bench-http-")
    model = os.path.join(tmp, "tiny")
    subprocess.run([os.path.join(args.bin_dir, "kvkeep"), "make-model", "--preset", "tiny",
                    "--out", model], check=True, capture_output=True)
    sock = os.path.join(tmp, "kvkeep.sock")
    log = open(os.path.join(tmp, "log"), "wb")
    proc = subprocess.Popen([os.path.join(args.bin_dir, "kvkeepd"), "--model", model, "--socket",
                             sock, "--state-dir", os.path.join(tmp, "state"), "--log-level",
                             "warn", "--max-sessions-per-uid", "4096", "--threads", "1"], stdout=log,
                            stderr=subprocess.STDOUT)
    try:
        http_sock = os.path.join(tmp, "kvkeep-http.sock")
        deadline = time.monotonic() + 60
        while not os.path.exists(http_sock):
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError("kvkeepd did not start")
            time.sleep(0.05)
        print("| connections | turns | rounds | JSON-lines ms/turn | HTTP ms/turn "
              "| HTTP / JSON-lines | per-round ratios (min-max) |")
        print("| --- | --- | --- | --- | --- | --- | --- |")
        rows = [("transport (hello vs GET /health)", 1, 200, lines_noop, (sock,), http_noop,
                 (http_sock,))]
        for c in args.connections:
            turns = args.turns or max(8, 60 // c)
            rows.append((str(c), c, turns, lines_agent, (sock,), http_agent,
                         (http_sock, sock, "tiny")))
        for label, c, turns, lines_fn, lines_args, http_fn, http_args in rows:
            run(lines_fn, c, *lines_args, 2)  # warm-up
            # Alternating rounds: the machine is shared and noisy.
            lines_ms, http_ms = [], []
            for _ in range(args.rounds):
                lines_ms.append(run(lines_fn, c, *lines_args, turns))
                http_ms.append(run(http_fn, c, *http_args, turns))
                _round[0] += 1
            ratios = [h / j for h, j in zip(http_ms, lines_ms)]
            lm, hm = statistics.median(lines_ms), statistics.median(http_ms)
            print(f"| {label} | {turns} | {args.rounds} | {lm:.2f} | {hm:.2f} | {hm / lm:.2f}x "
                  f"| {min(ratios):.2f}-{max(ratios):.2f} |", flush=True)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
        log.close()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
