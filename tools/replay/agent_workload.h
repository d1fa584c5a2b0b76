// The workload of bench/policy_bench, in simulated time: agent programs taken from a
// canonical trace (docs/trace-format.md), each a list of model turns and the tool waits
// between them, arriving as a Poisson process. The simulator that replays it through the
// real cache bookkeeping is not built yet (docs/policy.md).
//
// Token counts: a canonical trace carries text, not token ids, and the bench has no
// tokenizer of the 8B model it prices, so text is counted as ceil(bytes / bytes_per_token):
// 3.4 by default, the median over the 1,860 turns of the 25 mini-swe-agent deepseek traces
// of (message bytes so far) / (recorded usage.prompt_tokens), p10-p90 3.13-3.66.
// completion_tokens is used when the trace recorded it. A served model's own counts (its
// tokenizer and chat template, as kvkeepd adds them to the session) can be given instead:
// WorkloadOptions::served_tokens (bench/sim/served_tokens.h computes them).
//
// Thread-safety: pure functions over values.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "base/status.h"
#include "tools/replay/trace.h"

namespace kvkeep::replay {

struct AgentStep {
  int64_t appended_tokens = 0;  // context appended before this model turn (system, user,
                                // tool results)
  int64_t output_tokens = 0;    // the model turn's output
  double think_s = 0;           // recorded think gaps before the turn
  // The tool the agent waits on after this turn; empty when it ends or calls none.
  std::string tool;
  std::string command;      // its shell command (policy/tool_key.h keys it)
  double tool_s = 0;        // recorded duration (0 when the trace has none)
  bool tool_timed = false;  // the duration was recorded or synthesised by the importer
  // The served token ids (WorkloadOptions::served_tokens with ids); empty: not known.
  std::vector<int32_t> appended_ids, output_ids;
};

struct AgentProgram {
  std::string id;
  std::vector<AgentStep> steps;
  double arrival_s = 0;  // the session's recorded arrival (x time_scale)
  // After the last step `kvkeep replay run` still replays the trace up to the session's
  // end: the last step's tool, then these think gaps, then it closes the session. cut:
  // max_turns ended the program before the trace did; the replay then closes the session
  // at the last step's reply (no tool, no think gaps: nothing reads the tool's result).
  double tail_s = 0;
  bool cut = false;
  int64_t ContextTokens() const;  // the context after the last turn
};

// Tokens one event of a trace adds to its session when a served model replays it.
struct ServedEventTokens {
  int64_t before = 0;  // appended before the event (a model turn: its generation prompt)
  int64_t output = 0;  // a model turn: its (forced) output
  int64_t after = 0;   // a model turn: the tokens closing it (counted in the next context)
  bool stop = false;   // the replay stops before this event (the context is full)
  // The token ids themselves: before, output and after, in order; empty when only the
  // counts are known.
  std::vector<int32_t> ids;
};

struct WorkloadOptions {
  double bytes_per_token = 3.4;
  int max_turns = 0;        // per program; 0: all
  double time_scale = 1.0;  // multiplies tool times, think gaps and arrivals
  // served_tokens[s][e]: event e of session s as served (same shape as the sessions);
  // null: counted from bytes. Not owned; outlives the call.
  const std::vector<std::vector<ServedEventTokens>>* served_tokens = nullptr;
};

// One program per session with at least one model turn; InvalidArgument if none has.
Result<std::vector<AgentProgram>> ProgramsFromTrace(const std::vector<Session>& sessions,
                                                    const WorkloadOptions& options);

// n arrival times of a Poisson process of rate_per_s starting at 0, seeded (the same
// stream as `kvkeep replay run --arrivals poisson`). REQUIRES: rate_per_s > 0.
std::vector<double> PoissonArrivals(int n, double rate_per_s, uint64_t seed);

struct AgentArrival {
  double arrival_s = 0;
  size_t program = 0;  // index into the programs
};

// num_agents agents with Poisson arrivals; agent i runs program i mod programs.size().
// InvalidArgument for num_agents < 1, rate_per_s <= 0 or no programs.
Result<std::vector<AgentArrival>> MakeArrivals(size_t num_programs, int num_agents,
                                               double rate_per_s, uint64_t seed);

}  // namespace kvkeep::replay
