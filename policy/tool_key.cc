#include "policy/tool_key.h"

namespace kvkeep {

std::string ToolKey(std::string_view tool_name, std::string_view command) {
  constexpr std::string_view kSpace = " \t\r\n";
  const size_t begin = command.find_first_not_of(kSpace);
  if (begin == std::string_view::npos) return std::string(tool_name);
  command.remove_prefix(begin);
  return std::string(command.substr(0, command.find_first_of(kSpace)));
}

}  // namespace kvkeep
