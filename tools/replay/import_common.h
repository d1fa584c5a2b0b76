// Internal helpers shared by the importers. Not part of the replay API.
#pragma once

#include <cstdint>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <string_view>

#include "base/status.h"
#include "tools/replay/importers.h"

namespace kvkeep::replay::internal {

using nlohmann::json;

// Reads and parses a whole JSON file; errors name the file.
Result<json> ReadJsonFile(const std::string& path);
std::string BaseName(const std::string& path);

// A string field, or "" when absent/null. Content given as a list of {type, text} parts
// (OpenAI style) is joined.
std::string TextOf(const json& j, const char* field);
// A finite number, given as a number or a numeric string; nullopt otherwise (NaN and
// infinity included).
std::optional<double> NumberOf(const json& j, const char* field);
// NumberOf truncated to a whole number, when that lies in [lo, hi]; nullopt otherwise, so
// that a token count or exit code out of range reads as unknown rather than overflowing.
std::optional<int64_t> IntegerOf(const json& j, const char* field, int64_t lo, int64_t hi);
// The largest token count an importer accepts (2^40): far beyond any real context, and
// small enough that sums of counts cannot overflow int64_t.
inline constexpr int64_t kMaxImportedTokens = int64_t{1} << 40;

// Builds a session's events, filling missing durations from the timing model.
class SessionBuilder {
 public:
  SessionBuilder(Session* session, const ImportOptions& options)
      : s_(session), options_(options), key_(HashString(session->id)) {}

  void System(std::string text);
  void User(std::string text);
  // duration < 0: unknown, drawn from the model latency distribution (synthetic).
  Event& Model(std::string text, double duration_s);
  void ToolBegin(std::string tool, std::string command, std::string call_id);
  // duration < 0: unknown, drawn from the tool distribution for `command` (synthetic).
  void ToolEnd(std::string tool, std::string call_id, std::string result, double duration_s,
               std::string_view command, std::optional<int> exit_code = std::nullopt);
  void Think(double duration_s);

 private:
  uint64_t NextKey() { return MixKey(key_, s_->events.size()); }
  Session* s_;
  const ImportOptions& options_;
  uint64_t key_;
};

// "<returncode>N</returncode>" in a mini-swe-agent observation.
std::optional<int> ParseReturnCode(std::string_view text);
// Seconds since the epoch of an ISO-8601 timestamp like 2025-04-30T16:32:54.707474.
std::optional<double> ParseIsoSeconds(std::string_view ts);

}  // namespace kvkeep::replay::internal
