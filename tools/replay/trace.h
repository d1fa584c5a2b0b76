// The canonical agent trace: what `kvkeep replay import` writes and `kvkeep replay run`
// reads. docs/trace-format.md is the specification; this header is its C++ form.
//
// A trace file is JSON Lines with one session per line. Each session is an ordered list
// of events: system and user messages, model turns (recorded assistant text and tool
// calls, or only a completion length), tool_begin/tool_end pairs with their results and
// durations, and think-time gaps. Timings taken from the source are "recorded"; timings
// filled in by an importer's documented model are "synthetic".
//
// Thread-safety: plain values.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "base/status.h"

namespace kvkeep::replay {

inline constexpr int kTraceVersion = 1;

enum class EventType { kSystem, kUser, kModel, kToolBegin, kToolEnd, kThink };
std::string_view EventTypeName(EventType type);

enum class Timing { kNone, kRecorded, kSynthetic };
std::string_view TimingName(Timing timing);

struct ToolCall {
  std::string id;
  std::string name;
  std::string arguments;  // the JSON arguments string as the model produced it
  bool operator==(const ToolCall&) const = default;
};

// Content made of token ids rather than text (workload traces that carry only lengths).
// Token i of block b is a deterministic function of (seed, block_ids[b], i), so equal
// block ids give equal token blocks across sessions and prefix reuse is real. Tokens past
// the listed blocks (or all of them when block_ids is empty) derive from (seed, position).
struct SyntheticTokens {
  int64_t count = 0;
  int32_t block_tokens = 0;        // tokens per block id (512 for Mooncake)
  std::vector<int64_t> block_ids;  // may be empty
  uint64_t seed = 0;
  bool operator==(const SyntheticTokens&) const = default;
};

struct Event {
  EventType type = EventType::kUser;
  std::string text;                          // system/user/model text, tool_end result
  std::optional<SyntheticTokens> tokens;     // instead of text (user and model events)
  std::vector<ToolCall> tool_calls;          // model
  std::optional<int64_t> completion_tokens;  // model: recorded completion length
  std::string tool;                          // tool_begin/tool_end
  std::string command;                       // tool_begin
  std::string call_id;                       // tool_begin/tool_end
  std::optional<int> exit_code;              // tool_end
  double duration_s = 0;                     // model latency, tool duration or think gap
  Timing timing = Timing::kNone;
  bool operator==(const Event&) const = default;
};

struct Session {
  std::string id;
  std::string source;       // importer format name, e.g. "mini-swe-agent"
  std::string source_file;  // where it came from (file name, or file:row)
  std::string model;        // the model that produced the recording, if known
  double arrival_s = 0;     // arrival time relative to the trace start
  std::vector<Event> events;
  bool operator==(const Session&) const = default;

  int NumModelTurns() const;
};

// The token ids of synthetic content, each in [0, num_ordinary_tokens) so no special
// token is ever produced. Equal (seed, block id) pairs give equal blocks.
std::vector<int32_t> SyntheticTokenIds(const SyntheticTokens& tokens, int32_t num_ordinary_tokens);

// JSON (one line) <-> Session. FromJson validates types and required fields and says
// which field is wrong.
std::string SessionToJson(const Session& session);
Result<Session> SessionFromJson(std::string_view line);

// Reads a JSONL trace; errors name the file and line. Blank lines are skipped.
Result<std::vector<Session>> ReadTraceFile(const std::string& path);
Status WriteTraceFile(const std::string& path, const std::vector<Session>& sessions);

}  // namespace kvkeep::replay
