// The documented model that fills in durations a trace source did not record, and that
// the workload synthesiser draws from. Every draw is a deterministic function of a key
// (session id, event index), so re-importing a file gives identical traces.
//
// Fitted on 2026-11-22 to the 25 mini-swe-agent v2 (deepseek-chat) trajectories in
// ../shared/data, which record a timestamp per message (docs/trace-format.md shows how):
//   tool duration, lognormal per command class (seconds):
//     read  (cat, grep, find, ls, ...)      mu -1.342 sigma 0.446  (p50 0.25 s, n=1057)
//     run   (python, pytest, pip, make ...)  mu -0.847 sigma 0.932  (p50 0.35 s, n=650)
//     edit  (sed -i, cat >, cp, mv, patch)   mu -1.501 sigma 0.730  (p50 0.24 s, n=128)
//   model latency per call (seconds)         mu  1.832 sigma 0.871  (p50 4.4 s, n=1835)
#pragma once

#include <cstdint>
#include <string_view>

namespace kvkeep::replay {

enum class CommandClass { kRead, kRun, kEdit };
CommandClass ClassifyCommand(std::string_view command);

struct LogNormal {
  double mu = 0;
  double sigma = 0;
};

struct TimingModel {
  LogNormal tool_read{-1.342, 0.446};
  LogNormal tool_run{-0.847, 0.932};
  LogNormal tool_edit{-1.501, 0.730};
  LogNormal model_latency{1.832, 0.871};

  double ToolSeconds(std::string_view command, uint64_t key) const;
  double ModelSeconds(uint64_t key) const;
};

// Deterministic draws: splitmix64 of the key, then Box-Muller.
double DrawLogNormal(const LogNormal& d, uint64_t key);
double DrawUniform01(uint64_t key);
uint64_t MixKey(uint64_t a, uint64_t b);
uint64_t HashString(std::string_view s);  // FNV-1a 64

}  // namespace kvkeep::replay
