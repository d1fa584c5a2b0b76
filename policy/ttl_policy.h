// The TTL decision: how long to keep a session's KV pinned on the device while its agent
// waits on a tool (docs/policy.md, "The TTL rule").
//
//   tau* = argmax over tau in {0} U C of  F(tau) * B - Cost(tau)
//     F      the tool key's duration CDF (ToolLatencyStats::ForKey: per key, pooled, prior)
//     C      F's quantiles at candidate_quantiles, each capped at max_ttl_s
//     B      seconds a hit saves: rebuilding the KV from the best place it would sit after
//            demotion (host or disk reload, else prefill, from the CostModel), plus the
//            re-admission queueing delay (prefill of the tokens queued ahead of it now)
//     Cost   blocks_held * tau * full_pressure_cost_s_per_block_s * pressure(free fraction)
//     pressure(f) = (max(0, knee - f) / knee)^2: zero while more than `knee` of the pool
//            is free, 1 when nothing is.
// Ties go to the shorter TTL. `fixed-ttl` (FixedTtl) is Continuum's released rule.
//
// Thread-safety: pure functions over their arguments.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "policy/cost_model.h"
#include "policy/tool_stats.h"

namespace kvkeep {

struct TtlOptions {
  double max_ttl_s = 30.0;  // --max-ttl-s
  std::vector<double> candidate_quantiles = {0.1, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99};
  double pressure_knee_free_fraction = 0.25;
  // Seconds of other sessions' time that one held block costs per second when the pool
  // has no free block; calibrated by bench/policy_bench.
  double full_pressure_cost_s_per_block_s = 5e-5;
};

// The device pool as the policy sees it.
struct PoolState {
  int64_t total_blocks = 0;
  int64_t free_blocks = 0;
};

// The session a pin would hold, as plain figures.
struct PinCandidate {
  int64_t context_tokens = 0;         // KV tokens the session has on the device
  int64_t device_blocks = 0;          // blocks a pin would hold
  bool host_has_room = false;         // demotion would land in host memory
  bool disk_has_room = false;         // else on disk
  int64_t queued_prefill_tokens = 0;  // prefill tokens queued ahead of a re-admission now
};

struct HitBenefit {
  double rebuild_s = 0;
  double queue_s = 0;
  RebuildSource rebuild_from = RebuildSource::kPrefill;
  double total_s() const { return rebuild_s + queue_s; }
};

struct TtlDecision {
  double ttl_s = 0;
  double hit_probability = 0;  // F(ttl_s)
  double benefit_s = 0;        // B
  double cost_s = 0;           // Cost(ttl_s)
  double pressure = 0;         // pressure(free fraction)
  RebuildSource rebuild_from = RebuildSource::kPrefill;
  DistributionSource source = DistributionSource::kPrior;
};

// pressure(f) above, in [0, 1]. A pool with no blocks counts as full.
double MemoryPressure(const PoolState& pool, const TtlOptions& options);

// B for a session: the cheapest rebuild among the tiers it could land on, plus queueing.
HitBenefit ComputeHitBenefit(const CostModel& model, const PinCandidate& session);

// The argmax above for a given distribution, benefit, size and pressure.
TtlDecision DecideTtl(const DurationDistribution& durations, double benefit_s, int64_t blocks_held,
                      double pressure, const TtlOptions& options);

// The whole rule for one tool_begin: F from stats for key, B from the cost model.
TtlDecision DecideTtlForTool(const ToolLatencyStats& stats, const std::string& key,
                             const CostModel& model, const PinCandidate& session,
                             const PoolState& pool, const TtlOptions& options);

// `fixed-ttl`: Continuum's released rule. A pin of ttl_s when the key is unseen or its mean
// duration is at most mean_threshold_s; no pin otherwise.
struct FixedTtlOptions {
  double ttl_s = 2.0;             // --fixed-ttl-s
  double mean_threshold_s = 2.0;  // Continuum's threshold
};
double FixedTtl(const ToolLatencyStats& stats, const std::string& key,
                const FixedTtlOptions& options);

}  // namespace kvkeep
