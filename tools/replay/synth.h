// The workload synthesiser: SWE-agent-like sessions drawn from a statistical model, so a
// clone without ../shared can run the demo and the tests, and load can scale beyond the
// recorded traces. Every draw is deterministic in (seed, agent, turn).
//
// Defaults fitted on 2026-11-22 to the 25 mini-swe-agent v2 (deepseek-chat) trajectories
// in ../shared/data (lognormal mu/sigma of natural logs; lengths in characters):
//   model turns per session   mu 4.257 sigma 0.330  (median 71, range 36-132)
//   task message              mu 8.670 sigma 0.153  (median 5.8k chars)
//   assistant turn (text+call) mu 5.629 sigma 1.363 (median 280 chars)
//   tool observation          mu 5.781 sigma 1.421  (median 324 chars, capped at 10,613)
//   command classes           read 58%, run 35%, edit 7% (1,835 commands)
// plus the tool-duration and model-latency model of timing_model.h.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "tools/replay/timing_model.h"
#include "tools/replay/trace.h"

namespace kvkeep::replay {

struct SynthOptions {
  int agents = 4;
  uint64_t seed = 0;
  double arrival_rate_per_s = 0;  // Poisson arrivals; 0: every session arrives at t=0
  LogNormal turns{4.257, 0.330};
  int min_turns = 2;
  int max_turns = 200;
  LogNormal task_chars{8.670, 0.153};
  LogNormal assistant_chars{5.629, 1.363};
  LogNormal observation_chars{5.781, 1.421};
  int max_observation_chars = 10613;
  double p_read = 0.58;
  double p_run = 0.35;  // edit: the rest
  TimingModel timing;
};

std::vector<Session> Synthesize(const SynthOptions& options);

}  // namespace kvkeep::replay
