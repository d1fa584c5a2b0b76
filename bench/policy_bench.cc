// policy_bench: the tool-aware TTL policy's benchmark in simulated time (issue 15).
//
//   policy_bench --trace FILE --out DIR [--agents 8,16,32,64,128,256]
//                [--policies ttl,ttl-fcfs,fixed-ttl,lru,none] [--window-s 60 | --rate R]
//                [--max-turns N] [--seed S] [--jobs J] [--kv-gib 60] [--host-gib 64] [--host-gbps
//                51]
//                [--timings bench/data/h100_8b_timings.json | --cost-model FILE
//                 [--fit-step-log STEPS.csv ...]]
//                [--model DIR] [--kv-blocks N] [--host-blocks N] [--arrivals poisson|recorded]
//                [--max-batch-tokens N] [--prefill-chunk-tokens N] [--max-running N]
//
// To predict a real run (bench/gpu/agents.sh): --model is the directory kvkeepd served
// (every message is re-tokenized with its tokenizer and chat template, as the daemon
// counts it: bench/sim/served_tokens.h), --cost-model the daemon's calibration file
// (state dir's cost_model.json), --kv-blocks/--host-blocks and the engine flags the
// daemon's, --arrivals recorded with --window-s ignored (the trace's arrival times, as
// `kvkeep replay run` uses them by default).
//
// The canonical trace (`kvkeep replay import` output) becomes agent programs
// (tools/replay/agent_workload.h); for each load, N agents arrive as a seeded Poisson
// process and each policy replays them through the real engine in simulated time
// (bench/sim/agent_sim.h over engine/sim_backend.h, priced by the 8B-shape H100 cost
// model fitted from --timings). It prints the cost model, the trace's tool keys, the TTL
// the rule would pick per key, then one table row per (load, policy), and writes
// DIR/workload.json, DIR/policy_bench.json ({"loads": [{"agents", "policies": {name:
// figures}}]}) and DIR/policy_bench.png (bench/policy_bench_plot.py, matplotlib from
// .venv). docs/policy.md ("The policy simulator") describes the model.
#include <CLI/CLI.hpp>
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <mutex>
#include <nlohmann/json.hpp>
#include <thread>

#include "base/clock.h"
#include "base/file.h"
#include "bench/sim/agent_sim.h"
#include "bench/sim/served_tokens.h"
#include "engine/model_config.h"
#include "policy/cost_model.h"
#include "policy/step_log.h"
#include "policy/tool_key.h"
#include "policy/tool_stats.h"
#include "policy/ttl_policy.h"
#include "tools/replay/agent_workload.h"
#include "tools/replay/trace.h"

namespace kvkeep {
namespace {

// The floor's pool against the benchmark's: at 128 agents of the deepseek traces a pool
// ten times the benchmark's already evicts nothing (bench/RESULTS.md); the floor warns if
// it does.
constexpr int32_t kFloorPoolScale = 16;

struct Args {
  std::string trace, out, timings = "bench/data/h100_8b_timings.json";
  std::vector<int> agents = {8, 16, 32, 64, 128, 256};
  std::vector<std::string> policies = {"ttl", "ttl-fcfs", "fixed-ttl", "lru", "none"};
  double kv_gib = 60;  // an 80 GB H100 less 8B bf16 weights (16 GB) and activations
  double host_gib = 64;
  // The CUDA backend's swaps of scattered 8B-shape blocks on an H100 (tiers_swap_bench,
  // bench/RESULTS.md, 2026-12-07); 25 before it was measured.
  double host_gbps = 51;
  // Each direction's share of its rate while swaps move both ways (SimHostLink); a cost
  // model's own figure wins.
  double duplex_share = SimBackendOptions{}.duplex_share;
  int block_tokens = 16;
  double window_s = 60;   // arrivals spread over about this long (rate = agents / window)
  double rate_per_s = 0;  // > 0: a fixed arrival rate instead
  int max_turns = 0;
  uint64_t seed = 1;
  int jobs = 1;  // simulations run at once
  TtlOptions ttl;
  double turn_end_grace_s = PolicyOptions{}.turn_end_grace_s;
  bool serial_swaps = false;  // each swap stalls its step (SimOptions::overlap_swaps off)
  // Per load, `ttl` once more on a pool kFloorPoolScale times larger: the unlimited-memory
  // floor, the anchor every policy's figures compare with (what memory costs them).
  bool floor = true;
  std::string cost_model;  // a calibration file (kvkeepd's state dir); overrides timings
  std::vector<std::string> fit_step_logs;  // kvkeepd --step-log files: refit cost_model to them
  std::string model;                       // re-tokenize with this model (kvkeepd's --model)
  int64_t max_tokens = 4096;  // the daemon's limits.max_tokens (the replayer's output cap)
  int32_t kv_blocks = 0, host_blocks = -1;  // override --kv-gib / --host-gib
  int64_t kv_bytes_per_token = 0;           // override the cost model's
  int kv_dtype_bytes = 2;                   // with --model, when the cost model has none
  std::string arrivals = "poisson";
  double time_scale = 1;
  bool turns_csv = false;           // DIR/turns_n<agents>_<policy>.csv per run
  bool step_logs = false;           // DIR/steps_n<agents>_<policy>.csv per run
  double client_round_trip_ms = 0;  // SimOptions::client_round_trip_s
  sim::SimOptions engine;           // max_batch_tokens, prefill_chunk_tokens, max_running
  std::string python = ".venv/bin/python", plot_script = "bench/policy_bench_plot.py";
};

int32_t Blocks(double gib, int64_t block_bytes) {
  return static_cast<int32_t>(static_cast<int64_t>(gib * (1 << 30)) / block_bytes);
}

// The TTL the rule picks per key for a session of the trace's mean context, as the
// device pool fills, next to fixed-ttl's.
void PrintTtlTable(int64_t pool_blocks, int block_tokens, const ToolLatencyStats& stats,
                   const CostModel& model, int64_t mean_context, const TtlOptions& options) {
  PinCandidate session;
  session.context_tokens = mean_context;
  session.device_blocks = (mean_context + block_tokens - 1) / block_tokens;
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

// The trace's tool durations per key; returns them as JSON and prints them.
nlohmann::json DescribeTools(const std::vector<replay::AgentProgram>& programs,
                             ToolLatencyStats* stats) {
  int64_t turns = 0, context_tokens = 0, timed_tools = 0;
  for (const replay::AgentProgram& p : programs) {
    context_tokens += p.ContextTokens();
    for (const replay::AgentStep& s : p.steps) {
      ++turns;
      if (s.tool.empty() || !s.tool_timed) continue;
      ++timed_tools;
      stats->AddSample(ToolKey(s.tool, s.command), static_cast<int64_t>(s.tool_s * 1e6));
    }
  }
  std::printf(
      "%zu programs, %lld model turns, %lld timed tool calls, %.0f context tokens per "
      "program on average\n\n%-16s %7s %9s %9s %9s %9s\n",
      programs.size(), static_cast<long long>(turns), static_cast<long long>(timed_tools),
      static_cast<double>(context_tokens) / static_cast<double>(programs.size()), "tool key",
      "samples", "mean_s", "p50_s", "p90_s", "p99_s");
  nlohmann::json keys = nlohmann::json::array();
  for (const ToolKeySummary& k : stats->Summaries()) {
    std::printf("%-16s %7lld %9.3f %9.3f %9.3f %9.3f\n", k.key.c_str(),
                static_cast<long long>(k.num_samples), k.mean_s, k.p50_s, k.p90_s, k.p99_s);
    keys.push_back({{"key", k.key},
                    {"samples", k.num_samples},
                    {"mean_s", k.mean_s},
                    {"p50_s", k.p50_s},
                    {"p90_s", k.p90_s},
                    {"p99_s", k.p99_s}});
  }
  return keys;
}

nlohmann::json SummaryJson(const sim::SimSummary& s, double wall_s) {
  return {{"mean_jct_s", s.mean_jct_s},
          {"p99_jct_s", s.p99_jct_s},
          {"mean_ttft_s", s.mean_ttft_s},
          {"p99_ttft_s", s.p99_ttft_s},
          {"hit_ratio", s.hit_ratio},
          {"recomputed_tokens", s.recomputed_tokens},
          {"reprefill_tokens", s.reprefill_tokens},
          {"first_prefill_tokens", s.first_prefill_tokens},
          {"recounted_tokens", s.recounted_tokens},
          {"preempted_turns", s.preempted_turns},
          {"context_tokens", s.context_tokens},
          {"cached_tokens", s.cached_tokens},
          {"cached_host_tokens", s.cached_host_tokens},
          {"pin_block_s", s.pin_block_s},
          {"pin_violations", s.pin_violations},
          {"pins_granted", s.pins_granted},
          {"pins_used", s.pins_used},
          {"pins_expired", s.pins_expired},
          {"reclaimed_sessions", s.reclaimed_sessions},
          {"swapped_in_blocks", s.swapped_in_blocks},
          {"swap_s", s.swap_s},
          {"swap_wait_s", s.swap_wait_s},
          {"evicted_blocks", s.evicted_blocks},
          {"dropped_blocks", s.dropped_blocks},
          {"turns", s.turns},
          {"agents_done", s.agents_done},
          {"agents_truncated", s.agents_truncated},
          {"agents_failed", s.agents_failed},
          {"engine_steps", s.engine_steps},
          {"sim_end_s", s.end_s},
          {"wall_s", wall_s}};
}

// The cost model: the daemon's calibration file as is, or a fit of timing samples.
// With --fit-step-log, the prefill and decode terms are refitted to the logged steps of a
// real run, and the rest (bandwidths, KV bytes) kept.
Result<CostFit> LoadCost(const Args& a) {
  if (!a.cost_model.empty()) {
    CostFit fit;
    ASSIGN_OR_RETURN(fit.model, LoadCostModel(DefaultEnv(), a.cost_model));
    if (fit.model.host_to_device_bytes_per_s <= 0) {
      fit.model.host_to_device_bytes_per_s = a.host_gbps * 1e9;
    }
    if (a.fit_step_logs.empty()) return fit;
    std::vector<TimingSample> samples;
    for (const std::string& path : a.fit_step_logs) {
      ASSIGN_OR_RETURN(std::vector<StepTiming> steps, ReadStepLog(DefaultEnv(), path));
      std::vector<TimingSample> more = StepSamples(steps);
      samples.insert(samples.end(), more.begin(), more.end());
    }
    ASSIGN_OR_RETURN(CostFit refit, FitCostModel(samples, fit.model));
    refit.model.source = "fitted to " + std::to_string(samples.size()) + " logged steps";
    return refit;
  }
  if (!a.fit_step_logs.empty()) {
    return Status::InvalidArgument("--fit-step-log needs --cost-model (its bandwidths)");
  }
  ASSIGN_OR_RETURN(auto timing, LoadTimingSamples(DefaultEnv(), a.timings));
  CostModel base = timing.second;
  if (base.host_to_device_bytes_per_s <= 0) base.host_to_device_bytes_per_s = a.host_gbps * 1e9;
  return FitCostModel(timing.first, base);
}

Status Run(const Args& a) {
  ASSIGN_OR_RETURN(std::vector<replay::Session> sessions, replay::ReadTraceFile(a.trace));
  ASSIGN_OR_RETURN(CostFit fit, LoadCost(a));
  if (a.kv_bytes_per_token > 0) fit.model.kv_bytes_per_token = a.kv_bytes_per_token;
  if (fit.model.kv_bytes_per_token < 1 && !a.model.empty()) {
    // A calibration file may not say: K and V of every layer, in the served dtype.
    ASSIGN_OR_RETURN(ModelConfig c, LoadModelConfig(DefaultEnv(), a.model));
    fit.model.kv_bytes_per_token =
        int64_t{2} * c.num_layers * c.num_kv_heads * c.head_dim * a.kv_dtype_bytes;
  }
  std::printf("cost model (%s):\n%s\n", fit.model.source.c_str(), FormatCostFit(fit).c_str());
  if (fit.model.kv_bytes_per_token < 1) {
    return Status::InvalidArgument("the cost model has no kv_bytes_per_token");
  }
  const int64_t block_bytes = fit.model.kv_bytes_per_token * a.block_tokens;
  sim::SimOptions options = a.engine;
  options.client_round_trip_s = a.client_round_trip_ms / 1000;
  options.cost = fit.model;
  options.block_size = a.block_tokens;
  options.device_blocks = a.kv_blocks > 0 ? a.kv_blocks : Blocks(a.kv_gib, block_bytes);
  options.host_blocks = a.host_blocks >= 0 ? a.host_blocks : Blocks(a.host_gib, block_bytes);
  // A calibration file's measured bandwidth; with timing samples, --host-gbps as before.
  options.host_bytes_per_s =
      a.cost_model.empty() ? a.host_gbps * 1e9 : fit.model.host_to_device_bytes_per_s;
  options.ttl = a.ttl;
  options.turn_end_grace_s = a.turn_end_grace_s;
  options.duplex_share =
      fit.model.host_duplex_share > 0 ? fit.model.host_duplex_share : a.duplex_share;
  options.overlap_swaps = !a.serial_swaps;

  replay::WorkloadOptions workload;
  workload.max_turns = a.max_turns;
  workload.time_scale = a.time_scale;
  std::vector<std::vector<replay::ServedEventTokens>> served;
  if (!a.model.empty()) {
    // The daemon's context limit: its device pool, or the model's positions if fewer.
    ASSIGN_OR_RETURN(ModelConfig config, LoadModelConfig(DefaultEnv(), a.model));
    sim::ServedTokenOptions so;
    so.max_context_tokens = int64_t{options.device_blocks} * a.block_tokens;
    if (config.max_position_embeddings > 0) {
      so.max_context_tokens =
          std::min<int64_t>(so.max_context_tokens, config.max_position_embeddings);
    }
    so.max_tokens = a.max_tokens;
    so.max_turns = a.max_turns;
    ASSIGN_OR_RETURN(auto counter, sim::ServedTokenCounter::Create(DefaultEnv(), a.model));
    ASSIGN_OR_RETURN(served, counter->CountAll(sessions, so));
    workload.served_tokens = &served;
    options.max_position_tokens = static_cast<int32_t>(so.max_context_tokens);
    options.vocab_size = config.vocab_size;
    options.shared_cache_salt = true;  // one uid's sessions, as `kvkeep replay run` sends them
    std::printf("tokens as %s serves them (context limit %lld)\n", a.model.c_str(),
                static_cast<long long>(so.max_context_tokens));
  }
  ASSIGN_OR_RETURN(std::vector<replay::AgentProgram> programs,
                   replay::ProgramsFromTrace(sessions, workload));

  FakeClock clock;
  ToolStatsOptions stats_options;
  stats_options.window_samples = 1 << 20;
  ToolLatencyStats stats(stats_options, &clock);
  const nlohmann::json keys = DescribeTools(programs, &stats);
  int64_t context_tokens = 0;
  for (const replay::AgentProgram& p : programs) context_tokens += p.ContextTokens();
  PrintTtlTable(options.device_blocks, a.block_tokens, stats, fit.model,
                context_tokens / static_cast<int64_t>(programs.size()), a.ttl);
  std::printf(
      "\nsimulated device: %d device blocks (%.1f GiB of KV), host tier %d blocks (%.1f GiB) at "
      "%.1f GB/s (duplex share %.2f), %d-token blocks of %lld bytes; batch %d tokens, chunk %d, %d "
      "running\n",
      options.device_blocks,
      static_cast<double>(options.device_blocks) * static_cast<double>(block_bytes) / (1 << 30),
      options.host_blocks,
      static_cast<double>(options.host_blocks) * static_cast<double>(block_bytes) / (1 << 30),
      options.host_bytes_per_s / 1e9, options.duplex_share, a.block_tokens,
      static_cast<long long>(block_bytes), options.max_batch_tokens, options.prefill_chunk_tokens,
      options.max_running);

  nlohmann::json loads = nlohmann::json::array(), arrivals_json = nlohmann::json::array();
  std::printf("\n%6s %-10s %9s %9s %8s %8s %6s %12s %12s %9s %6s %7s %7s\n", "agents", "policy",
              "mean_jct", "p99_jct", "ttft", "p99ttft", "hit", "recomputed", "reprefill",
              "pin_blk_s", "viol", "swapwait", "wall_s");
  // Every (load, policy) run is independent: --jobs of them run at once, each on its own
  // engine; rows print as runs finish, the JSON keeps the order of the flags.
  struct Job {
    int agents = 0;
    std::string policy;
    bool floor = false;  // the policy on the unlimited-memory pool
    std::string label() const { return floor ? "floor" : policy; }
    std::vector<replay::AgentArrival> arrivals;
    Status status;
    nlohmann::json figures;
    std::string turns_csv;
    std::unique_ptr<StepLog> steps;  // with --step-logs
  };
  std::vector<Job> jobs;
  for (int n : a.agents) {
    const double rate = a.rate_per_s > 0 ? a.rate_per_s : n / a.window_s;
    ASSIGN_OR_RETURN(auto arrivals, replay::MakeArrivals(programs.size(), n, rate, a.seed));
    if (a.arrivals == "recorded") {  // agent i runs program i at its recorded arrival
      for (auto& arrival : arrivals) arrival.arrival_s = programs[arrival.program].arrival_s;
    }
    arrivals_json.push_back({{"agents", n}, {"arrivals", a.arrivals}, {"rate_per_s", rate}});
    for (const std::string& policy : a.policies) {
      jobs.push_back({n, policy, false, arrivals, {}, {}, {}, nullptr});
    }
    if (a.floor) jobs.push_back({n, "ttl", true, arrivals, {}, {}, {}, nullptr});
  }
  std::vector<size_t> order(jobs.size());  // the largest loads first: the last runs are short
  for (size_t i = 0; i < order.size(); ++i) order[i] = i;
  std::stable_sort(order.begin(), order.end(),
                   [&](size_t x, size_t y) { return jobs[x].agents > jobs[y].agents; });
  std::mutex print_mu;
  std::atomic<size_t> next_job{0};
  auto worker = [&] {
    for (size_t i = next_job++; i < jobs.size(); i = next_job++) {
      Job& job = jobs[order[i]];
      sim::SimOptions run = options;
      run.policy = job.policy;
      if (job.floor) run.device_blocks = options.device_blocks * kFloorPoolScale;
      const std::string label = job.label();
      if (a.step_logs) {
        job.steps = std::make_unique<StepLog>(StepLog::kDefaultCapacity);
        run.step_log = job.steps.get();
      }
      const auto start = std::chrono::steady_clock::now();
      auto last_print = start;
      run.progress = [&](double sim_s, int done, int agents, int64_t turns) {
        const auto now = std::chrono::steady_clock::now();
        if (now - last_print < std::chrono::seconds(5)) return;  // a line every 5 s of wall
        last_print = now;
        std::lock_guard<std::mutex> lock(print_mu);
        std::fprintf(stderr, "  [%s, %d agents] simulated %.0f s: %d/%d agents done, %lld turns\n",
                     label.c_str(), job.agents, sim_s, done, agents, static_cast<long long>(turns));
      };
      Result<sim::SimResult> r = sim::RunAgentSim(programs, job.arrivals, run);
      if (!r.ok()) {
        job.status =
            r.status().WithContext(label + " at " + std::to_string(job.agents) + " agents");
        continue;
      }
      const double wall_s =
          std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
      const sim::SimSummary s = sim::Summarize(*r);
      job.figures = SummaryJson(s, wall_s);
      if (a.turns_csv) job.turns_csv = sim::TurnsCsv(*r, programs, job.arrivals);
      std::lock_guard<std::mutex> lock(print_mu);
      std::printf("%6d %-10s %9.1f %9.1f %8.3f %8.3f %6.3f %12lld %12lld %9.0f %6lld %7.1f %7.1f\n",
                  job.agents, label.c_str(), s.mean_jct_s, s.p99_jct_s, s.mean_ttft_s, s.p99_ttft_s,
                  s.hit_ratio, static_cast<long long>(s.recomputed_tokens),
                  static_cast<long long>(s.reprefill_tokens), s.pin_block_s,
                  static_cast<long long>(s.pin_violations), s.swap_wait_s, wall_s);
      std::fflush(stdout);
    }
  };
  std::vector<std::thread> threads;
  for (int t = 1; t < a.jobs; ++t) threads.emplace_back(worker);
  worker();
  for (std::thread& t : threads) t.join();
  for (size_t i = 0; i < jobs.size();) {
    nlohmann::json per_policy = nlohmann::json::object(), floor;
    const int n = jobs[i].agents;
    for (; i < jobs.size() && jobs[i].agents == n; ++i) {
      RETURN_IF_ERROR(jobs[i].status);
      (jobs[i].floor ? floor : per_policy[jobs[i].policy]) = jobs[i].figures;
      if (a.turns_csv) {
        RETURN_IF_ERROR(DefaultEnv()->CreateDirs(a.out));
        RETURN_IF_ERROR(DefaultEnv()->WriteFileAtomic(
            JoinPath(a.out, "turns_n" + std::to_string(n) + "_" + jobs[i].label() + ".csv"),
            jobs[i].turns_csv));
      }
      if (jobs[i].steps) {
        RETURN_IF_ERROR(DefaultEnv()->CreateDirs(a.out));
        RETURN_IF_ERROR(jobs[i].steps->Write(
            DefaultEnv(),
            JoinPath(a.out, "steps_n" + std::to_string(n) + "_" + jobs[i].label() + ".csv")));
      }
    }
    nlohmann::json load = {{"agents", n}, {"policies", per_policy}};
    if (!floor.is_null()) {
      load["floor"] = floor;
      if (floor["evicted_blocks"].get<int64_t>() > 0) {
        std::printf(
            "warning: the floor at %d agents evicted %lld blocks: its pool (%d blocks) "
            "is not unlimited\n",
            n, static_cast<long long>(floor["evicted_blocks"].get<int64_t>()),
            options.device_blocks * kFloorPoolScale);
      }
    }
    loads.push_back(load);
  }
  RETURN_IF_ERROR(DefaultEnv()->CreateDirs(a.out));
  const nlohmann::json workload_json = {
      {"trace", a.trace},
      {"seed", a.seed},
      {"window_s", a.window_s},
      {"max_turns", a.max_turns},
      {"device_blocks", options.device_blocks},
      {"host_blocks", options.host_blocks},
      {"host_bytes_per_s", options.host_bytes_per_s},
      {"duplex_share", options.duplex_share},
      {"cost_model",
       {{"prefill_per_token_s", fit.model.prefill_per_token_s},
        {"prefill_attention_s", fit.model.prefill_attention_s},
        {"decode_fixed_s", fit.model.decode_fixed_s},
        {"decode_per_context_token_s", fit.model.decode_per_context_token_s},
        {"max_relative_error", fit.max_relative_error}}},
      {"tool_keys", keys},
      {"loads", arrivals_json}};
  RETURN_IF_ERROR(DefaultEnv()->WriteFileAtomic(JoinPath(a.out, "workload.json"),
                                                workload_json.dump(1) + "\n"));
  const std::string json_path = JoinPath(a.out, "policy_bench.json");
  RETURN_IF_ERROR(
      DefaultEnv()->WriteFileAtomic(json_path, nlohmann::json{{"loads", loads}}.dump(1) + "\n"));
  std::printf("\nwrote %s\n", json_path.c_str());
  const std::string png = JoinPath(a.out, "policy_bench.png");
  const std::string plot = a.python + " " + a.plot_script + " " + json_path + " " + png;
  if (std::system(plot.c_str()) != 0) {
    std::printf("no PNG: `%s` failed (scripts/setup installs matplotlib into .venv)\n",
                plot.c_str());
  } else {
    std::printf("wrote %s\n", png.c_str());
  }
  return Status::OK();
}

}  // namespace
}  // namespace kvkeep

int main(int argc, char** argv) {
  kvkeep::Args a;
  CLI::App app{"policy_bench: reclaim policies on agent traces, the real engine in simulated time"};
  app.add_option("--trace", a.trace, "canonical trace file (kvkeep replay import)")->required();
  app.add_option("--out", a.out, "output directory")->required();
  app.add_option("--agents", a.agents, "agents per load")->delimiter(',');
  app.add_option("--policies", a.policies, "policies to compare")->delimiter(',');
  app.add_option("--window-s", a.window_s, "arrivals spread over about this many seconds")
      ->check(CLI::PositiveNumber);
  app.add_option("--rate", a.rate_per_s, "fixed program arrivals per second (Poisson)")
      ->check(CLI::PositiveNumber);
  app.add_option("--max-turns", a.max_turns, "model turns per program (0: all)")
      ->check(CLI::NonNegativeNumber);
  app.add_option("--seed", a.seed, "arrival seed");
  app.add_option("--jobs", a.jobs, "simulations run at once (threads)")->check(CLI::Range(1, 64));
  app.add_option("--timings", a.timings, "timing samples for the cost model");
  app.add_option("--cost-model", a.cost_model,
                 "a cost model file (kvkeepd's state dir cost_model.json) instead of --timings");
  app.add_option("--fit-step-log", a.fit_step_logs,
                 "kvkeepd --step-log files: refit --cost-model's step prices to a run's steps");
  app.add_option("--model", a.model,
                 "count tokens as kvkeepd serving this model directory does (its --model)");
  app.add_option("--max-tokens", a.max_tokens, "the daemon's max_tokens (with --model)")
      ->check(CLI::PositiveNumber);
  app.add_option("--kv-bytes-per-token", a.kv_bytes_per_token, "KV bytes a token (all layers)")
      ->check(CLI::PositiveNumber);
  app.add_option("--kv-dtype-bytes", a.kv_dtype_bytes,
                 "with --model and no kv_bytes_per_token in the cost model: 2 (bf16) or 4 (f32)")
      ->check(CLI::IsMember({2, 4}));
  app.add_option("--kv-blocks", a.kv_blocks, "device pool in blocks (overrides --kv-gib)")
      ->check(CLI::PositiveNumber);
  app.add_option("--host-blocks", a.host_blocks, "host tier in blocks (overrides --host-gib)")
      ->check(CLI::NonNegativeNumber);
  app.add_option("--arrivals", a.arrivals,
                 "poisson (over --window-s or at --rate) or recorded (the trace's times)")
      ->check(CLI::IsMember({"poisson", "recorded"}));
  app.add_option("--time-scale", a.time_scale, "multiplies tool times, think gaps, arrivals")
      ->check(CLI::NonNegativeNumber);
  app.add_option("--max-batch-tokens", a.engine.max_batch_tokens, "engine step token budget")
      ->check(CLI::PositiveNumber);
  app.add_option("--prefill-chunk-tokens", a.engine.prefill_chunk_tokens, "largest prefill chunk")
      ->check(CLI::PositiveNumber);
  app.add_option("--max-running", a.engine.max_running, "sequences decoding at once")
      ->check(CLI::PositiveNumber);
  app.add_option("--kv-gib", a.kv_gib, "device KV pool")->check(CLI::PositiveNumber);
  app.add_option("--host-gib", a.host_gib, "host tier (0: none)")->check(CLI::NonNegativeNumber);
  app.add_option("--host-gbps", a.host_gbps, "host <-> device GB/s")->check(CLI::PositiveNumber);
  app.add_option("--duplex-share", a.duplex_share,
                 "each direction's share of its rate while swaps move both ways (0.5: they "
                 "take turns; 1: full duplex)")
      ->check(CLI::Range(0.5, 1.0));
  app.add_option("--max-ttl-s", a.ttl.max_ttl_s, "the TTL rule's cap")
      ->check(CLI::NonNegativeNumber);
  app.add_option("--ttl-cost-s-per-block-s", a.ttl.full_pressure_cost_s_per_block_s,
                 "the TTL rule's cost of a held block per second at full pressure")
      ->check(CLI::NonNegativeNumber);
  app.add_option("--ttl-pressure-knee", a.ttl.pressure_knee_free_fraction,
                 "free fraction of the pool below which held blocks start to cost")
      ->check(CLI::Range(0.0, 1.0));
  app.add_option("--client-round-trip-ms", a.client_round_trip_ms,
                 "the client's time per turn outside the engine (bench/sim/agent_sim.h)")
      ->check(CLI::NonNegativeNumber);
  app.add_flag("--turns-csv", a.turns_csv, "write DIR/turns_n<agents>_<policy>.csv per run");
  app.add_flag("--step-logs", a.step_logs,
               "write each run's engine steps to DIR/steps_n<agents>_<policy>.csv "
               "(kvkeepd --step-log's format)");
  app.add_option("--turn-end-grace-s", a.turn_end_grace_s,
                 "pinning policies: grace pin from a turn's last token to its tool_begin (0: none)")
      ->check(CLI::NonNegativeNumber);
  app.add_flag("--serial-swaps", a.serial_swaps,
               "each host <-> device swap stalls the step it is in (default: swaps overlap "
               "the steps that do not touch their blocks, as on CUDA)");
  app.add_flag("!--no-floor", a.floor,
               "skip the unlimited-memory floor (ttl on a pool 16x larger; each load's "
               "\"floor\" in the JSON)");
  app.add_option("--python", a.python, "Python with matplotlib for the PNG");
  app.add_option("--plot-script", a.plot_script, "the plotting script");
  CLI11_PARSE(app, argc, argv);
  kvkeep::Status st = Run(a);
  if (!st.ok()) {
    std::fprintf(stderr, "policy_bench: %s\n", st.ToString().c_str());
    return 1;
  }
  return 0;
}
