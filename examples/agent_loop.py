#!/usr/bin/env python3
"""A minimal agent on kvkeepd: open a session, append a task, then repeat
generate -> tool_begin -> run a shell command -> tool_end, printing each turn's usage.

The KV cache of the conversation stays warm in kvkeepd while the "tool" runs, so each
turn's ``cached_tokens`` covers every full KV block of the turn before: only the new
messages (and the previous KV's last partial block) are prefilled.

A real agent parses a tool call out of the model's reply. The synthetic test model
writes random text, so this example picks the commands from a fixed, safe list instead
(read-only, no shell, each bounded by a timeout and an output cap) and shows the model's
text next to them.

    python3 examples/agent_loop.py --turns 4 [--socket PATH]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from kvkeep_client import Client, default_socket_path

# Safe, bounded commands: read-only, argv lists (no shell), fixed arguments.
COMMANDS: Sequence[Sequence[str]] = (
    ("echo", "hello from the tool"),
    ("ls", "-1", "/"),
    ("uname", "-sr"),
    ("date", "-u", "+%Y-%m-%dT%H:%M:%SZ"),
    ("pwd",),
)
TOOL_TIMEOUT_S = 10
MAX_TOOL_OUTPUT_BYTES = 4096


def run_tool(argv: Sequence[str]) -> str:
    """Runs argv with a timeout; returns stdout+stderr (capped) and the exit status."""
    try:
        done = subprocess.run(list(argv), capture_output=True, timeout=TOOL_TIMEOUT_S,
                              check=False)
        output = (done.stdout + done.stderr)[:MAX_TOOL_OUTPUT_BYTES]
        return output.decode("utf-8", "replace") + f"[exit {done.returncode}]"
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"[failed: {e}]"


def run_agent(client: Client, turns: int, session: Optional[str] = None,
              max_tokens: int = 16,
              out: Callable[[str], None] = print) -> Tuple[str, List[Dict]]:
    """Runs `turns` agent turns in a new (or the given) session; returns the session id
    and each turn's generate usage."""
    sid = client.open_session(session=session,
                              system="You are a shell agent. Reply with one command.")
    client.append(sid, [{"role": "user",
                         "content": "Look around this machine and report what you find."}])
    usages = []
    for turn in range(turns):
        reply = client.generate(sid, max_tokens=max_tokens, temperature=0.0, seed=turn)
        argv = COMMANDS[turn % len(COMMANDS)]
        command = " ".join(argv)
        client.tool_begin(sid, "bash", args=command)
        output = run_tool(argv)
        ended = client.tool_end(sid, content=output, tool="bash")
        u = reply.usage
        usages.append(u)
        out(f"turn {turn + 1}: model said {reply.text!r}; ran `{command}` "
            f"({ended.get('duration_ms') or 0:.1f} ms) | prompt={u.get('prompt_tokens')} "
            f"cached={u.get('cached_tokens')} recomputed={u.get('recomputed_tokens')} "
            f"generated={u.get('generated_tokens')} ttft_ms={u.get('ttft_ms')}")
    return sid, usages


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--socket", default=None,
                        help=f"kvkeepd socket (default: {default_socket_path()})")
    parser.add_argument("--turns", type=int, default=4)
    parser.add_argument("--session", default=None, help="session id (default: generated)")
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--keep", action="store_true", help="keep the session afterwards")
    args = parser.parse_args(argv)
    with Client(args.socket, timeout=120) as client:
        hello = client.hello()
        print(f"connected to {hello.get('server')} {hello.get('version')}, "
              f"model {hello.get('model', {}).get('id')}")
        sid, _ = run_agent(client, args.turns, session=args.session,
                           max_tokens=args.max_tokens)
        client.close(sid, keep=args.keep)
    return 0


if __name__ == "__main__":
    sys.exit(main())
