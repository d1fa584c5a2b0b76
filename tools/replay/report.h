// The replay report: per-policy summary figures, report.json, turns.csv, occupancy.csv, a
// summary table for stdout, and PNG plots drawn by gnuplot (from Debian's gnuplot-nox).
#pragma once

#include <map>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "base/status.h"
#include "tools/replay/replayer.h"

namespace kvkeep::replay {

struct PolicySummary {
  int sessions = 0;
  int failed_sessions = 0;
  int clipped_sessions = 0;  // did not fit the model's context: clipped or cut short
  int skipped_sessions = 0;  // clipped ones that ran no model turn at all
  int turns = 0;
  double mean_ttft_ms = 0;
  double p50_ttft_ms = 0;
  double p99_ttft_ms = 0;
  double mean_jct_s = 0;
  double hit_ratio = 0;        // cached / context tokens (each turn's cached capped at its context)
  int64_t context_tokens = 0;  // identical across policies
  int64_t first_prefill_tokens = 0;  // appended since the previous reply
  int64_t reprefill_tokens = 0;      // recomputed again: eviction, preemption, partial blocks
  int64_t prompt_tokens = 0;         // the engine's cached + recomputed
  int64_t cached_tokens = 0;
  int64_t recomputed_tokens = 0;
  int64_t generated_tokens = 0;
  // Pins during the run (the daemon's counters, last sample minus first).
  int64_t pins_granted = 0, pins_used = 0, pins_expired = 0, pins_violated = 0;
  double wall_s = 0;
};

PolicySummary Summarize(const ReplayResult& result);

// Quantile q in [0,1] of values (nearest rank); 0 for an empty list.
double Quantile(std::vector<double> values, double q);

struct ReportInput {
  std::vector<std::string> policies;            // in run order
  std::map<std::string, ReplayResult> results;  // by policy
  nlohmann::json params;                        // the run's parameters, copied into report.json
};

// InvalidArgument when no policy ran a single model turn, saying why (sessions that did
// not fit the model's context, failed ones and the first error); there is nothing to plot.
Status CheckNotEmpty(const ReportInput& input);

// Writes report.json, turns.csv, sessions.csv and occupancy.csv into out_dir.
Status WriteReport(const std::string& out_dir, const ReportInput& input);
// The summary table printed on stdout.
std::string SummaryTable(const ReportInput& input);
// ttft_cdf.png, kv_occupancy.png and hit_ratio_by_turn.png in out_dir; returns their paths.
// Unavailable when gnuplot is not installed (scripts/setup installs it).
Result<std::vector<std::string>> WritePlots(const std::string& out_dir, const ReportInput& input);

}  // namespace kvkeep::replay
