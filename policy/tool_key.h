// Tool keys: the name under which a tool call's duration is learned.
//
// Durations differ by orders of magnitude between `cat` and `pytest`, so a shell tool is
// keyed by the program its command runs, not by the tool's name. The default key is:
//   - for a shell tool (see ToolKeyOptions::shell_tools, or any tool whose name is the
//     first word of its command, as in SWE-agent's `edit 1:1`, `python x.py`): the first
//     program of the command, after skipping `cd DIR &&`, `export`/`source`/`set`
//     segments, environment assignments (`A=1`), and wrappers (`timeout 60`, `env`,
//     `sudo`, `nohup`, `time`, `nice -n 5`, `stdbuf -oL`); its path's basename; with
//     `python -m MOD` keyed as MOD (`python -m pytest` is `pytest`) and version suffixes
//     folded (`python3.11` is `python`, `pip3` is `pip`);
//   - otherwise the tool's name.
// docs/policy.md ("The tool key") lists the rules with examples.
//
// Thread-safety: pure functions; a ToolKeyFunction copy may be called from any thread.
#pragma once

#include <functional>
#include <string>
#include <string_view>
#include <vector>

#include "base/status.h"

namespace kvkeep {

// The default key (the `command` key function with default options). `command` is the
// shell command text, empty for non-shell tools. Never empty: falls back to the tool
// name, then to "unknown".
std::string ToolKey(std::string_view tool_name, std::string_view command);

// The default key of a tool call as an agent reports it (session.tool_begin's `args`): the
// command is the arguments' "command" (or "cmd") string when they are a JSON object, else
// the arguments text itself.
std::string ToolKeyOfArgs(std::string_view tool_name, const std::string& args);

struct ToolKeyOptions {
  // Tool names whose `command` is a shell command line.
  std::vector<std::string> shell_tools = {"bash",     "execute_bash", "shell", "sh",
                                          "terminal", "run_command",  "run",   "cmd"};
  // Key `python -m MOD ...` as MOD.
  bool python_module_as_key = true;
  // Fold version suffixes of interpreters: python3.11 -> python, pip3 -> pip.
  bool fold_versions = true;
};

// The program word a shell command line runs first (the rules above), or empty when the
// command names none (blank, only `cd`/assignments). Exposed for tests and the docs.
std::string ShellCommandProgram(std::string_view command, const ToolKeyOptions& options);

using ToolKeyFunction =
    std::function<std::string(std::string_view tool_name, std::string_view command)>;

// A key function by name: "command" (the default above, with `options`) or "name" (the
// tool name only, as Continuum keys it). InvalidArgument naming the choices otherwise.
Result<ToolKeyFunction> MakeToolKeyFunction(std::string_view kind,
                                            const ToolKeyOptions& options = {});

}  // namespace kvkeep
