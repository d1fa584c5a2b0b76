#include "policy/ttl_policy.h"

#include <algorithm>
#include <cmath>

namespace kvkeep {

double MemoryPressure(const PoolState& pool, const TtlOptions& options) {
  if (pool.total_blocks <= 0) return 1.0;
  const double free_fraction = std::clamp(
      static_cast<double>(pool.free_blocks) / static_cast<double>(pool.total_blocks), 0.0, 1.0);
  const double knee = std::clamp(options.pressure_knee_free_fraction, 1e-9, 1.0);
  const double x = std::max(0.0, knee - free_fraction) / knee;
  return x * x;
}

HitBenefit ComputeHitBenefit(const CostModel& model, const PinCandidate& session) {
  HitBenefit b;
  b.rebuild_from = RebuildSource::kPrefill;
  b.rebuild_s = model.RebuildSeconds(RebuildSource::kPrefill, session.context_tokens);
  // The best tier the session would sit on after demotion: host if it has room, else disk.
  if (session.host_has_room || session.disk_has_room) {
    const RebuildSource tier = session.host_has_room ? RebuildSource::kHost : RebuildSource::kDisk;
    const double reload_s = model.RebuildSeconds(tier, session.context_tokens);
    if (reload_s < b.rebuild_s) {
      b.rebuild_s = reload_s;
      b.rebuild_from = tier;
    }
  }
  b.queue_s = model.PrefillSeconds(session.queued_prefill_tokens, 0);
  return b;
}

TtlDecision DecideTtl(const DurationDistribution& durations, double benefit_s, int64_t blocks_held,
                      double pressure, const TtlOptions& options) {
  TtlDecision best;
  best.benefit_s = benefit_s;
  best.pressure = pressure;
  best.source = durations.source();
  const double cost_per_s = static_cast<double>(std::max<int64_t>(blocks_held, 0)) *
                            options.full_pressure_cost_s_per_block_s * pressure;
  double best_value = 0;  // tau = 0: no hit, no cost
  std::vector<double> candidates;
  for (double q : options.candidate_quantiles) {
    if (!(q > 0 && q < 1)) continue;
    const double tau = std::min(durations.Quantile(q), options.max_ttl_s);
    if (tau > 0 && std::isfinite(tau)) candidates.push_back(tau);
  }
  std::sort(candidates.begin(), candidates.end());
  for (double tau : candidates) {
    const double hit = durations.Cdf(tau);
    const double cost = cost_per_s * tau;
    const double value = hit * benefit_s - cost;
    if (value > best_value + 1e-12) {  // strictly better: ties keep the shorter TTL
      best_value = value;
      best.ttl_s = tau;
      best.hit_probability = hit;
      best.cost_s = cost;
    }
  }
  return best;
}

TtlDecision DecideTtlForTool(const ToolLatencyStats& stats, const std::string& key,
                             const CostModel& model, const PinCandidate& session,
                             const PoolState& pool, const TtlOptions& options) {
  const HitBenefit benefit = ComputeHitBenefit(model, session);
  TtlDecision d = DecideTtl(stats.ForKey(key), benefit.total_s(), session.device_blocks,
                            MemoryPressure(pool, options), options);
  d.rebuild_from = benefit.rebuild_from;
  return d;
}

double FixedTtl(const ToolLatencyStats& stats, const std::string& key,
                const FixedTtlOptions& options) {
  if (!stats.HasSamples(key)) return options.ttl_s;
  return stats.KeyOnly(key).Mean() <= options.mean_threshold_s ? options.ttl_s : 0.0;
}

}  // namespace kvkeep
