// AgentSim: replays agent programs (tools/replay/agent_workload.h) through the real Engine
// in simulated time, for bench/policy_bench. The engine runs unchanged (scheduler,
// BlockPool with its host tier, the ReclaimPolicy chosen by name) over a SimBackend
// (engine/sim_backend.h) that prices each step with the cost model; a FakeClock is
// advanced by that price after every step, and jumps to the next arrival or tool return
// when the engine is idle. Nothing is computed: every model turn is teacher-forced with
// its recorded output length, so the session grows exactly as in the trace.
//
// An agent's life: it arrives at its arrival time and submits turn 0 (context: the
// tokens appended before it). When a turn finishes, a tool_begin hint goes to the
// engine and the recorded tool duration starts; at its end a tool_end hint goes in and,
// after the recorded think time, the next turn is submitted with the whole context
// (previous context + the forced output + the appended tool result). With
// SimOptions::client_round_trip_s the simulated client is as slow as `kvkeep replay run`
// against kvkeepd: the tool_begin hint reaches the engine half a round trip after the
// turn's last token, and the next turn half a round trip after tool_end. A hint or
// turn that arrives while a step runs waits for the next step, as in the daemon, so the
// session is unpinned through one step's admission at each turn boundary; it carries the
// time the client sent it (its at_us, the request's arrival, an agent's end), as kvkeepd
// stamps what it receives mid-step. After the last turn
// the agent still waits out that turn's tool and the program's tail_s, as `kvkeep replay
// run` does, then a close hint releases the session; a program max_turns cut closes at its
// last turn's reply, as the replay does. Token ids are synthetic (a function of the
// position); each agent has its own cache salt, so agents running the same program do
// not share KV.
//
// Determinism: single-threaded; the same programs, arrivals and options give the same
// result. docs/policy.md ("The policy simulator") describes the model and its limits.
//
// Thread-safety: RunAgentSim is reentrant (one engine per call).
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "base/status.h"
#include "engine/engine.h"
#include "engine/sim_backend.h"
#include "tools/replay/agent_workload.h"

namespace kvkeep::sim {

struct SimOptions {
  std::string policy = "lru";  // ttl | ttl-fcfs | fixed-ttl | lru | none (policy_factory.h)
  int32_t device_blocks = 30720;
  int32_t host_blocks = 0;  // 0: no host tier
  int32_t block_size = 16;
  double host_bytes_per_s = 25e9;
  double duplex_share = SimBackendOptions{}.duplex_share;
  // Swaps run on the host link beside the steps and a promoted admission computes from
  // the next step, as the engine does on CUDA (SimBackendOptions::clock). false: each swap
  // stalls the step it is in (policy_bench --serial-swaps).
  bool overlap_swaps = true;
  int32_t max_batch_tokens = 8192;
  int32_t prefill_chunk_tokens = 2048;
  int32_t max_running = 256;
  int32_t max_position_tokens = 131072;  // Llama-3.1-8B
  // Programs with served token ids (AgentStep::appended_ids) replay those ids, which need
  // the served model's vocabulary; the others use synthetic ids.
  int32_t vocab_size = 256;
  // One cache salt for every agent, as for the sessions of one uid in kvkeepd: agents
  // whose token ids agree share that prefix's KV. false: each agent its own salt.
  bool shared_cache_salt = false;
  CostModel cost;  // with kv_bytes_per_token set
  TtlOptions ttl;  // the TTL rule's knobs (ttl, ttl-fcfs)
  // The client's seconds per turn outside the engine and its tools: the reply to a
  // turn, the tool_begin and tool_end calls, and the next request until the daemon
  // submits it (measured from kvkeep replay's turns.csv: bench/gpu/agents_report.py
  // client-gap). Half of it lies between a turn's last token and its tool_begin, half
  // between tool_end and the next turn's submission. 0: the client is instant.
  double client_round_trip_s = 0;
  // The pinning policies' turn-end grace pin (PolicyOptions::turn_end_grace_s).
  double turn_end_grace_s = PolicyOptions{}.turn_end_grace_s;
  // Each engine step, priced, as kvkeepd --step-log records a real one (not owned; may be
  // null), so that a run's steps and the simulator's can be compared step by step.
  StepLog* step_log = nullptr;
  // Called about every progress_every_sim_s of simulated time (may be empty).
  double progress_every_sim_s = 10;
  std::function<void(double sim_s, int agents_done, int agents, int64_t turns_done)> progress;
};

// One model turn as the simulation saw it. Times are seconds since the simulation began.
struct SimTurn {
  int32_t agent = 0;
  int32_t step = 0;
  double submit_s = 0;
  double first_token_s = 0;
  double finish_s = 0;
  int64_t context_tokens = 0;  // the prompt: identical across policies
  int64_t cached_tokens = 0;   // capped at context_tokens
  int64_t cached_host_tokens = 0;
  int64_t first_prefill_tokens = 0;  // appended since the previous reply
  int64_t reprefill_tokens = 0;      // everything else recomputed
  int64_t recomputed_tokens = 0;     // the engine's figure (re-prefills counted again)
  // Tokens the engine counted beyond the context (cached + recomputed - context): each
  // re-admission after preemption counts the sequence again. 0: never preempted.
  int64_t recounted_tokens = 0;
  int64_t generated_tokens = 0;
  bool ok = false;  // finished with stop or length
};

struct SimAgent {
  double arrival_s = 0;
  double finish_s = 0;     // end of its last turn
  int32_t turns = 0;       // turns run
  bool truncated = false;  // stopped early: the context would pass max_position_tokens
  bool failed = false;     // a turn ended in error
};

struct SimResult {
  std::vector<SimTurn> turns;
  std::vector<SimAgent> agents;
  SimBackendCounters backend;
  EngineStats engine;
  double end_s = 0;
  int64_t engine_steps = 0;  // steps with a turn in flight (not those that only apply hints)
  int64_t idle_jumps = 0;    // times the clock jumped to the next event
  double pin_block_s = 0;    // device blocks held by live pins, integrated over time
};

// Runs the workload. InvalidArgument for bad options or an unknown policy; the engine's
// error if it stops making progress.
Result<SimResult> RunAgentSim(const std::vector<replay::AgentProgram>& programs,
                              const std::vector<replay::AgentArrival>& arrivals,
                              const SimOptions& options);

// The figures bench/policy_bench reports for one policy at one load.
struct SimSummary {
  double mean_jct_s = 0, p99_jct_s = 0;    // over agents that finished
  double mean_ttft_s = 0, p99_ttft_s = 0;  // over turns
  double hit_ratio = 0;                    // sum cached / sum context
  int64_t context_tokens = 0, cached_tokens = 0, cached_host_tokens = 0;
  int64_t first_prefill_tokens = 0, reprefill_tokens = 0;
  int64_t recomputed_tokens = 0;  // first + re-prefill
  int64_t recounted_tokens = 0;   // of the engine's counts, re-admissions after preemption
  int64_t preempted_turns = 0;    // turns with recounted tokens
  double pin_block_s = 0;         // GPU block-seconds held by pins
  int64_t pin_violations = 0;
  int64_t pins_granted = 0, pins_used = 0, pins_expired = 0;
  int64_t turns = 0, agents_done = 0, agents_truncated = 0, agents_failed = 0;
  int64_t reclaimed_sessions = 0, swapped_in_blocks = 0;
  double swap_s = 0, swap_wait_s = 0;  // host <-> device copying, and steps waiting on it
  // The pool's own reclaim: device blocks evicted (demoted to host, or dropped), and
  // blocks dropped from the bottom tier (recomputed if needed again).
  int64_t evicted_blocks = 0, dropped_blocks = 0;
  int64_t engine_steps = 0;
  double end_s = 0;
};
SimSummary Summarize(const SimResult& result);

// The turns as CSV, one row per model turn in the order they finished: agent, program
// (its id in the trace), turn, submit_s, first_token_s, finish_s, context_tokens,
// cached_tokens, cached_host_tokens, first_prefill_tokens, reprefill_tokens: for a
// turn-by-turn diff against a real run's turns.csv.
std::string TurnsCsv(const SimResult& result, const std::vector<replay::AgentProgram>& programs,
                     const std::vector<replay::AgentArrival>& arrivals);

// Nearest-rank percentile (q in [0, 1]) of values; 0 for none.
double Percentile(std::vector<double> values, double q);

}  // namespace kvkeep::sim
