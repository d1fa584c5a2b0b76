// policy_bench: the tool-aware TTL policy's benchmark in simulated time (issue 15).
//
//   policy_bench --trace FILE --out DIR [--agents 8,16,32,64,128,256] [--rate R]
//                [--seed S] [--timings bench/data/h100_8b_timings.json] [--kv-gib G]
//
// What exists today is its input side:
//   - the canonical trace (`kvkeep replay import` output) becomes agent programs, each a
//     list of model turns and the recorded tool waits between them
//     (tools/replay/agent_workload.h);
//   - the cost model of the 8B shape on an H100 is fitted from bench/data/h100_8b_timings.json
//     (figures of bench/RESULTS.md) and printed with its fit;
//   - the trace's tool durations, keyed by policy/tool_key.h, give the per-key quantiles
//     the TTL policy would start from;
//   - the TTL the rule picks per key for a session of the mean context, as the device pool
//     (--kv-gib of KV, default 60) fills, next to fixed-ttl's;
//   - for each load, N agents get seeded Poisson arrivals at --rate programs per second.
// It writes DIR/workload.json. The simulator itself, which must replay this through the
// real cache bookkeeping of issue 10 (not a second cache model), is not built yet, so no
// policy_bench.json is written.
#include <CLI/CLI.hpp>
#include <cstdio>
#include <nlohmann/json.hpp>
#include <sstream>

#include "base/clock.h"
#include "base/file.h"
#include "policy/cost_model.h"
#include "policy/tool_key.h"
#include "policy/tool_stats.h"
#include "policy/ttl_policy.h"
#include "tools/replay/agent_workload.h"
#include "tools/replay/trace.h"

namespace kvkeep {
namespace {

struct Args {
  std::string trace, out, timings = "bench/data/h100_8b_timings.json";
  std::vector<int> agents = {8, 16, 32, 64, 128, 256};
  double kv_gib = 60;  // an 80 GB H100 less 8B bf16 weights (16 GB) and activations
  int block_tokens = 16;
  double rate_per_s = 0.5;
  uint64_t seed = 1;
};

// The TTL the rule picks per key for a session of the trace's mean context, as the
// device pool fills, next to fixed-ttl's.
void PrintTtlTable(const Args& a, const std::vector<replay::AgentProgram>& programs,
                   const ToolLatencyStats& stats, const CostModel& model, int64_t context_tokens) {
  const int64_t mean_context = context_tokens / static_cast<int64_t>(programs.size());
  const int64_t block_bytes = model.kv_bytes_per_token * a.block_tokens;
  const int64_t pool_blocks = static_cast<int64_t>(a.kv_gib * (1 << 30)) / block_bytes;
  PinCandidate session;
  session.context_tokens = mean_context;
  session.device_blocks = (mean_context + a.block_tokens - 1) / a.block_tokens;
  const TtlOptions options;
  const double free_fractions[] = {0.5, 0.2, 0.1, 0.05, 0.0};
  std::printf(
      "\nTTL (s) for a session of %lld tokens (%lld of %lld device blocks), B = %.3f s "
      "(prefill), by free fraction of the pool:\n%-16s",
      static_cast<long long>(mean_context), static_cast<long long>(session.device_blocks),
      static_cast<long long>(pool_blocks), ComputeHitBenefit(model, session).total_s(), "tool key");
  for (double f : free_fractions) std::printf(" %8.0f%%", 100 * f);
  std::printf(" %9s\n", "fixed-ttl");
  for (const ToolKeySummary& k : stats.Summaries()) {
    std::printf("%-16s", k.key.c_str());
    for (double f : free_fractions) {
      const PoolState pool{pool_blocks, static_cast<int64_t>(f * static_cast<double>(pool_blocks))};
      std::printf(" %9.2f", DecideTtlForTool(stats, k.key, model, session, pool, options).ttl_s);
    }
    std::printf(" %9.2f\n", FixedTtl(stats, k.key, {}));
  }
}

Status Run(const Args& a) {
  ASSIGN_OR_RETURN(std::vector<replay::Session> sessions, replay::ReadTraceFile(a.trace));
  ASSIGN_OR_RETURN(std::vector<replay::AgentProgram> programs,
                   replay::ProgramsFromTrace(sessions, {}));
  ASSIGN_OR_RETURN(auto timing, LoadTimingSamples(DefaultEnv(), a.timings));
  ASSIGN_OR_RETURN(CostFit fit, FitCostModel(timing.first, timing.second));
  std::printf("cost model (%s):\n%s\n", timing.second.source.c_str(), FormatCostFit(fit).c_str());

  FakeClock clock;
  ToolStatsOptions stats_options;
  stats_options.window_samples = 1 << 20;
  ToolLatencyStats stats(stats_options, &clock);
  int64_t turns = 0, context_tokens = 0, timed_tools = 0;
  for (const replay::AgentProgram& p : programs) {
    context_tokens += p.ContextTokens();
    for (const replay::AgentStep& s : p.steps) {
      ++turns;
      if (s.tool.empty() || !s.tool_timed) continue;
      ++timed_tools;
      stats.AddSample(ToolKey(s.tool, s.command), static_cast<int64_t>(s.tool_s * 1e6));
    }
  }
  std::printf(
      "%zu programs, %lld model turns, %lld timed tool calls, %.0f context tokens per "
      "program on average\n\n%-16s %7s %9s %9s %9s %9s\n",
      programs.size(), static_cast<long long>(turns), static_cast<long long>(timed_tools),
      static_cast<double>(context_tokens) / static_cast<double>(programs.size()), "tool key",
      "samples", "mean_s", "p50_s", "p90_s", "p99_s");
  nlohmann::json keys = nlohmann::json::array();
  for (const ToolKeySummary& k : stats.Summaries()) {
    std::printf("%-16s %7lld %9.3f %9.3f %9.3f %9.3f\n", k.key.c_str(),
                static_cast<long long>(k.num_samples), k.mean_s, k.p50_s, k.p90_s, k.p99_s);
    keys.push_back({{"key", k.key},
                    {"samples", k.num_samples},
                    {"mean_s", k.mean_s},
                    {"p50_s", k.p50_s},
                    {"p90_s", k.p90_s},
                    {"p99_s", k.p99_s}});
  }
  PrintTtlTable(a, programs, stats, fit.model, context_tokens);
  nlohmann::json loads = nlohmann::json::array();
  for (int n : a.agents) {
    ASSIGN_OR_RETURN(auto arrivals, replay::MakeArrivals(programs.size(), n, a.rate_per_s, a.seed));
    nlohmann::json times = nlohmann::json::array(), which = nlohmann::json::array();
    for (const replay::AgentArrival& x : arrivals) {
      times.push_back(x.arrival_s);
      which.push_back(programs[x.program].id);
    }
    loads.push_back({{"agents", n}, {"arrival_s", times}, {"program", which}});
    std::printf("load %4d agents: arrivals over %.1f s\n", n, arrivals.back().arrival_s);
  }
  nlohmann::json out = {{"trace", a.trace},
                        {"rate_per_s", a.rate_per_s},
                        {"seed", a.seed},
                        {"cost_model",
                         {{"prefill_per_token_s", fit.model.prefill_per_token_s},
                          {"prefill_attention_s", fit.model.prefill_attention_s},
                          {"decode_fixed_s", fit.model.decode_fixed_s},
                          {"decode_per_context_token_s", fit.model.decode_per_context_token_s},
                          {"max_relative_error", fit.max_relative_error}}},
                        {"tool_keys", keys},
                        {"loads", loads}};
  RETURN_IF_ERROR(DefaultEnv()->CreateDirs(a.out));
  const std::string path = JoinPath(a.out, "workload.json");
  RETURN_IF_ERROR(DefaultEnv()->WriteFileAtomic(path, out.dump(1) + "\n"));
  std::printf(
      "\nwrote %s\nsimulation: not built yet (it needs the cache bookkeeping of issue 10)\n",
      path.c_str());
  return Status::OK();
}

}  // namespace
}  // namespace kvkeep

int main(int argc, char** argv) {
  kvkeep::Args a;
  CLI::App app{"policy_bench: the TTL policy benchmark's workload (simulation not built yet)"};
  app.add_option("--trace", a.trace, "canonical trace file (kvkeep replay import)")->required();
  app.add_option("--out", a.out, "output directory")->required();
  app.add_option("--agents", a.agents, "concurrent agents per load")->delimiter(',');
  app.add_option("--rate", a.rate_per_s, "program arrivals per second (Poisson)")
      ->check(CLI::PositiveNumber);
  app.add_option("--seed", a.seed, "arrival seed");
  app.add_option("--timings", a.timings, "timing samples for the cost model");
  app.add_option("--kv-gib", a.kv_gib, "device KV pool size for the TTL table")
      ->check(CLI::PositiveNumber);
  CLI11_PARSE(app, argc, argv);
  kvkeep::Status st = Run(a);
  if (!st.ok()) {
    std::fprintf(stderr, "policy_bench: %s\n", st.ToString().c_str());
    return 1;
  }
  return 0;
}
