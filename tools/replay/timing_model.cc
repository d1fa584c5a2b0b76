#include "tools/replay/timing_model.h"

#include <cmath>
#include <regex>
#include <string>

#include "base/hash64.h"

namespace kvkeep::replay {

uint64_t HashString(std::string_view s) { return Fnv1a64(s); }

uint64_t MixKey(uint64_t a, uint64_t b) { return SplitMix64(a ^ SplitMix64(b)); }

double DrawUniform01(uint64_t key) {
  // 53 random bits -> (0, 1), never exactly 0.
  return (static_cast<double>(SplitMix64(key) >> 11) + 0.5) * 0x1.0p-53;
}

double DrawLogNormal(const LogNormal& d, uint64_t key) {
  double u1 = DrawUniform01(key);
  double u2 = DrawUniform01(key ^ 0x5851f42d4c957f2dULL);
  double z = std::sqrt(-2.0 * std::log(u1)) * std::cos(2.0 * M_PI * u2);
  return std::exp(d.mu + d.sigma * z);
}

CommandClass ClassifyCommand(std::string_view command) {
  static const std::regex kRun(R"(\b(pytest|python3?|pip3?|tox|make|npm|cargo|go test|mvn)\b)");
  static const std::regex kEdit(R"(\b(sed -i|cat <<|cat >|cp|mv|patch|git apply)\b|echo .*>)");
  std::string c(command);
  if (std::regex_search(c, kRun)) return CommandClass::kRun;
  if (std::regex_search(c, kEdit)) return CommandClass::kEdit;
  return CommandClass::kRead;
}

double TimingModel::ToolSeconds(std::string_view command, uint64_t key) const {
  switch (ClassifyCommand(command)) {
    case CommandClass::kRun:
      return DrawLogNormal(tool_run, key);
    case CommandClass::kEdit:
      return DrawLogNormal(tool_edit, key);
    case CommandClass::kRead:
      break;
  }
  return DrawLogNormal(tool_read, key);
}

double TimingModel::ModelSeconds(uint64_t key) const { return DrawLogNormal(model_latency, key); }

}  // namespace kvkeep::replay
