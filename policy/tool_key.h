// ToolKey: the key under which a tool call's wait is recorded and predicted. Placeholder
// until the TTL work (issue 15) lands its own tool_key.{h,cc} with this same signature:
// the tool's name, or for a shell tool the command's first word.
//
// Thread-safety: a pure function.
#pragma once

#include <string>
#include <string_view>

namespace kvkeep {

// command: the shell command text, empty for non-shell tools.
std::string ToolKey(std::string_view tool_name, std::string_view command);

}  // namespace kvkeep
