// Replayer: drives the sessions of a canonical trace against a running kvkeepd, as N
// concurrent agents, and records what every model turn cost. One Replayer run is one
// policy; `kvkeep replay run --policy a,b` runs it once per policy against fresh daemons.
//
// Each session: session.open (with its system prompt), then in order: user messages are
// appended (text, or token ids for workload traces), model turns are session.generate with
// `forced` set to the recorded output (the cache sees exactly the recorded conversation
// and decode cost is real), tool_begin/tool_end are announced with the recorded wait
// (duration x time_scale) in between, and think gaps are slept.
//
// Thread-safety: Run() is called once; it starts and joins its own threads.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "base/status.h"
#include "tools/replay/trace.h"

namespace kvkeep::replay {

enum class ArrivalMode { kRecorded, kPoisson, kTimestamps };

struct ReplayOptions {
  std::string socket_path;
  std::string policy;  // a label for the records
  int agents = 4;      // sessions in flight at once
  ArrivalMode arrivals = ArrivalMode::kRecorded;
  double rate_per_s = 1.0;              // kPoisson
  std::vector<double> arrival_times_s;  // kTimestamps (e.g. a BurstGPT file), cycled
  double time_scale = 1.0;              // multiplies tool waits, think gaps and arrival times
  int max_turns = 0;                    // model turns per session; 0: all
  int64_t max_prompt_tokens = 0;        // stop a session before its context passes this; 0: off
  // With max_prompt_tokens, each message is clipped to this many tokens; 0: an eighth of it.
  int64_t max_message_tokens = 0;
  // Seconds after the start past which every session stops at its next event (one not yet
  // started does not start), recorded with a deadline_exceeded error; 0: no deadline. A
  // run cut this way still returns, so its finished sessions and turns are reported.
  double deadline_s = 0;
  uint64_t seed = 0;
  int sample_ms = 200;  // how often KV occupancy is sampled through `stats`
  // Called about once a second with a one-line progress report.
  std::function<void(const std::string&)> on_progress;
};

struct TurnRecord {
  std::string policy;
  std::string session;
  int turn = 0;               // 0-based model-turn index within its session
  double start_s = 0;         // since the replay started
  int64_t prompt_tokens = 0;  // the engine's: cached + recomputed (re-prefills count again)
  int64_t cached_tokens = 0;
  int64_t cached_device = 0;
  int64_t cached_host = 0;
  int64_t cached_disk = 0;
  int64_t recomputed_tokens = 0;
  int64_t generated_tokens = 0;
  // Comparable across policies (tools/replay/accounting.h).
  int64_t context_tokens = 0;
  int64_t first_prefill_tokens = 0;
  int64_t reprefill_tokens = 0;
  double ttft_ms = 0;
  double decode_ms = 0;
  double latency_ms = 0;  // client-side round trip of the generate call
  std::string tool;       // the tool the agent waited on before this turn ("" if none)
  double tool_wait_s = 0;
  // The episode the daemon routed the turn to (session over its episode budget; -1: not
  // routed) and what served it ("full_kv" or "episode_cache"; "" when not routed).
  int episode = -1;
  std::string episode_served_by;
};

struct SessionRecord {
  std::string policy;
  std::string session;
  int turns = 0;
  double arrival_s = 0;
  double jct_s = 0;   // first request to last reply
  std::string error;  // empty when the session completed
  // The session did not fit the model's context: messages were clipped, or it stopped
  // before its end. With turns == 0 it was skipped (even its first prompt did not fit).
  bool clipped = false;
};

struct OccupancySample {
  double t_s = 0;
  int64_t blocks_total = 0;
  int64_t blocks_used = 0;
  int64_t blocks_cached = 0;
  int64_t blocks_pinned = 0;
  // The daemon's pin counters so far (stats: pins/*).
  int64_t pins_granted = 0, pins_used = 0, pins_expired = 0, pins_violated = 0;
};

struct ReplayResult {
  std::vector<TurnRecord> turns;
  std::vector<SessionRecord> sessions;
  std::vector<OccupancySample> occupancy;
  double wall_s = 0;
  int64_t max_context_tokens = 0;  // the context sessions were clipped to; 0: unknown
};

Result<ReplayResult> RunReplay(const std::vector<Session>& trace, const ReplayOptions& options);

// A recorded model turn's output as the replay forces it: the assistant text, then each
// tool call as "\n<tool_call>\n{name, arguments}\n</tool_call>".
std::string ForcedText(const Event& e);
// text cut to at most max_bytes without splitting a UTF-8 sequence (max_bytes < 0: all of
// it). Every token of a byte-level tokenizer covers at least one byte, so max_bytes bounds
// the token count.
std::string ClipUtf8(std::string text, int64_t max_bytes);

// The id a trace session gets in the daemon: "r<index>-" plus its id with characters
// outside [A-Za-z0-9._:-] replaced, at most 128 characters.
std::string DaemonSessionId(size_t index, const std::string& trace_id);

}  // namespace kvkeep::replay
