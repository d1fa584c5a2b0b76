"""mini-swe-agent end to end against kvkeepd's OpenAI API, in both of its modes.

The agent (PyPI `mini-swe-agent`, through litellm) runs unmodified in its local
environment inside a temporary directory, against kvkeepd over TCP loopback. The daemon
forces the assistant replies from a test script (--testing-scripted-replies): neither a
random-weight nor a 135M model writes well-formed tool calls. The HTTP path, session
matching, tool-call parsing, tool-wait detection and KV reuse are the daemon's real ones.

Asserts: the agent executed the scripted commands (its trajectory and the files), the
daemon recorded automatic tool_begin/tool_end for them (session.info), one session held
the whole run, and later turns reported cached tokens.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import kvkeepd_http  # noqa: E402

MINI = os.path.join(os.path.dirname(sys.executable), "mini")
STEP_LIMIT = 6


def tool_call(command: str) -> str:
    return ("I will run a command.\n<tool_call>\n" +
            json.dumps({"name": "bash", "arguments": {"command": command}}) + "\n</tool_call>")


def text_action(command: str) -> str:
    return f"THOUGHT: next step.\n\n```mswea_bash_command\n{command}\n```"


COMMANDS = ["ls", "cat notes.txt", "sleep 0.3 && echo slept > out.txt",
            "echo COMPLETE_TASK_AND_SUBMIT_FINAL_OUTPUT"]


def setUpModule():
    # Not imported here: importing it writes a config under $HOME.
    if importlib.util.find_spec("minisweagent") is None:
        raise unittest.SkipTest("mini-swe-agent is not installed (scripts/setup makes .venv)")
    if not os.access(MINI, os.X_OK):
        raise unittest.SkipTest(f"the mini command is not at {MINI}")
    missing = kvkeepd_http.binaries_missing()
    if missing:
        raise unittest.SkipTest(missing)


class MiniSweAgentTest(unittest.TestCase):
    def run_agent(self, replies: list[str], config: str, extra: list[str]):
        daemon = kvkeepd_http.Daemon(scripted=replies)
        self.addCleanup(daemon.stop)
        work = tempfile.mkdtemp(prefix="kvkeep-mini-")
        self.addCleanup(shutil.rmtree, work, True)
        with open(os.path.join(work, "notes.txt"), "w") as f:
            f.write("kvkeep keeps KV warm\n")
        traj = os.path.join(work, "traj.json")
        env = dict(os.environ, MSWEA_CONFIGURED="true", LITELLM_LOCAL_MODEL_COST_MAP="True",
                   MSWEA_COST_TRACKING="ignore_errors", HOME=work, NO_COLOR="1")
        cmd = [MINI, "-m", f"openai/{daemon.model}", "-y", "--cost-limit", "0",
               "--exit-immediately", "-c", config,
               "-c", f"model.model_kwargs.api_base={daemon.base_url}",
               "-c", f"model.model_kwargs.api_key={kvkeepd_http.KEY_A}",
               "-c", f"agent.step_limit={STEP_LIMIT}", "-c", f"environment.cwd={work}",
               *extra, "-o", traj, "-t", "Look at notes.txt and write out.txt."]
        done = subprocess.run(cmd, cwd=work, env=env, stdin=subprocess.DEVNULL,
                              capture_output=True, text=True, timeout=180)
        # Judged by the trajectory and the daemon's records, not by mini's exit code.
        self.assertTrue(os.path.exists(traj),
                        f"no trajectory (exit {done.returncode}):\n{done.stdout[-3000:]}\n"
                        f"{done.stderr[-3000:]}\n{daemon.log_tail()}")
        with open(traj) as f:
            trajectory = json.load(f)
        self.assertTrue(os.path.exists(os.path.join(work, "out.txt")),
                        json.dumps(trajectory)[-3000:])
        sessions = daemon.call("sessions.list", closed=True)["sessions"]
        self.assertEqual(len(sessions), 1, sessions)  # one conversation, one session
        info = daemon.call("session.info", session=sessions[0]["session"])
        events = info["tool_events"]
        # Every command but the final submission got an observation back.
        self.assertGreaterEqual(len(events), len(COMMANDS) - 1, events)
        self.assertEqual([e["tool"] for e in events[:3]], ["ls", "cat", "sleep"])
        finished = [e for e in events if e["duration_ms"] is not None]
        self.assertGreaterEqual(len(finished), len(COMMANDS) - 1, events)
        sleep_event = events[2]
        self.assertGreaterEqual(sleep_event["duration_ms"], 300)  # the command's real wait
        stats = daemon.call("stats")
        self.assertGreaterEqual(stats["latency_ms"]["tool"]["count"], len(COMMANDS) - 1)
        self.assertGreater(stats["tokens"]["cached"], 0)
        return trajectory, info

    def test_tool_call_mode(self):
        _, info = self.run_agent([tool_call(c) for c in COMMANDS], "mini.yaml", [])
        self.assertIn("tool", [m["role"] for m in info["messages"]])

    def test_text_mode(self):
        _, info = self.run_agent([text_action(c) for c in COMMANDS], "mini_textbased.yaml",
                                 ["--model-class", "litellm_textbased"])
        self.assertNotIn("tool", [m["role"] for m in info["messages"]])


if __name__ == "__main__":
    unittest.main()
