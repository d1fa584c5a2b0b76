// The TTL rule with a fake clock: monotone in benefit and pressure, converging to the
// tool's latency quantiles, the prior without samples, and Continuum's fixed rule.
#include "policy/ttl_policy.h"

#include <gtest/gtest.h>

#include <cmath>
#include <functional>
#include <random>
#include <set>

#include "tests/testlib/test_util.h"

namespace kvkeep {
namespace {

constexpr int64_t kSecond = 1'000'000;

// Reference argmax over the same candidates on a known CDF, written out independently.
double ReferenceTtl(const std::vector<double>& taus, const std::function<double(double)>& cdf,
                    double benefit, double cost_per_s) {
  double best = 0, best_value = 0;
  for (double t : taus) {
    const double v = cdf(t) * benefit - cost_per_s * t;
    if (v > best_value + 1e-12 || (std::abs(v - best_value) <= 1e-12 && v > 0 && t < best)) {
      best = t;
      best_value = v;
    }
  }
  return best;
}

TEST(TtlPolicy, PressureIsZeroWithFreeBlocksAndGrowsAsTheyRunOut) {
  TtlOptions o;
  o.pressure_knee_free_fraction = 0.25;
  EXPECT_EQ(MemoryPressure({1000, 900}, o), 0.0);
  EXPECT_EQ(MemoryPressure({1000, 250}, o), 0.0);
  double last = 0;
  for (int64_t free_blocks : {200, 150, 100, 50, 10, 0}) {
    const double p = MemoryPressure({1000, free_blocks}, o);
    EXPECT_GT(p, last) << free_blocks;
    last = p;
  }
  EXPECT_DOUBLE_EQ(MemoryPressure({1000, 0}, o), 1.0);
  EXPECT_DOUBLE_EQ(MemoryPressure({0, 0}, o), 1.0);
}

TEST(TtlPolicy, PriorAppliesWithNoSamples) {
  FakeClock clock;
  ToolStatsOptions so;
  so.prior_mean_s = 3.0;
  ToolLatencyStats stats(so, &clock);
  TtlOptions o;
  o.max_ttl_s = 1000;
  CostModel m;
  m.prefill_per_token_s = 1e-4;  // 10k tokens: 1 s to rebuild
  PinCandidate s{10'000, 625, false, false, 0};
  // No pressure: the largest candidate, the prior's p99 = -3 ln(0.01).
  TtlDecision d = DecideTtlForTool(stats, "pytest", m, s, {10'000, 9'000}, o);
  EXPECT_EQ(d.source, DistributionSource::kPrior);
  EXPECT_NEAR(d.ttl_s, -3.0 * std::log(0.01), 1e-9);
  EXPECT_NEAR(d.hit_probability, 0.99, 1e-9);
  EXPECT_NEAR(d.benefit_s, 1.0, 1e-12);
  // max_ttl_s caps it.
  o.max_ttl_s = 5;
  EXPECT_DOUBLE_EQ(DecideTtlForTool(stats, "pytest", m, s, {10'000, 9'000}, o).ttl_s, 5.0);
}

TEST(TtlPolicy, TtlRisesWithBenefit) {
  DurationDistribution f = DurationDistribution::Exponential(5.0);
  TtlOptions o;
  o.max_ttl_s = 1000;
  double last = -1;
  std::vector<double> ttls;
  for (double benefit : {0.001, 0.05, 0.2, 0.5, 1.0, 2.0, 5.0, 20.0, 100.0}) {
    TtlDecision d = DecideTtl(f, benefit, 1000, /*pressure=*/0.5, o);
    EXPECT_GE(d.ttl_s, last) << benefit;
    last = d.ttl_s;
    ttls.push_back(d.ttl_s);
  }
  EXPECT_EQ(ttls.front(), 0.0);                                      // not worth holding memory
  EXPECT_DOUBLE_EQ(ttls.back(), f.Quantile(0.99));                   // worth the longest candidate
  EXPECT_GT(std::set<double>(ttls.begin(), ttls.end()).size(), 3u);  // and steps between
}

TEST(TtlPolicy, TtlFallsAsPressureRises) {
  DurationDistribution f = DurationDistribution::Exponential(5.0);
  TtlOptions o;
  o.max_ttl_s = 1000;
  const int64_t blocks = 8000;  // at full pressure 0.4 s per s held: B / (k m) = 1, t* = 0
  double last = INFINITY;
  std::vector<double> ttls;
  for (int64_t free_blocks : {5000, 2500, 2000, 1500, 1000, 500, 200, 0}) {
    const double p = MemoryPressure({10'000, free_blocks}, o);
    TtlDecision d = DecideTtl(f, /*benefit_s=*/2.0, blocks, p, o);
    EXPECT_LE(d.ttl_s, last) << free_blocks;
    last = d.ttl_s;
    ttls.push_back(d.ttl_s);
  }
  EXPECT_DOUBLE_EQ(ttls.front(), f.Quantile(0.99));  // free pool: pin to the tail
  EXPECT_EQ(ttls.back(), 0.0);                       // full pool: no pin for this one
}

TEST(TtlPolicy, ConvergesToTheToolsLatencyQuantiles) {
  const uint64_t seed = testing::TestSeed();
  std::mt19937_64 rng(seed);
  const double mu = std::log(4.0), sigma = 0.8;  // lognormal tool time, median 4 s
  std::lognormal_distribution<double> tool(mu, sigma);
  auto true_cdf = [&](double t) {
    return 0.5 * std::erfc(-(std::log(t) - mu) / (sigma * M_SQRT2));
  };
  auto true_quantile = [&](double q) {
    // Bisection on the true CDF.
    double lo = 1e-6, hi = 1e4;
    for (int i = 0; i < 200; ++i) {
      double mid = std::sqrt(lo * hi);
      (true_cdf(mid) < q ? lo : hi) = mid;
    }
    return hi;
  };
  FakeClock clock;
  ToolStatsOptions so;
  so.window_samples = 100'000;
  ToolLatencyStats stats(so, &clock);
  TtlOptions o;
  o.max_ttl_s = 1000;
  std::vector<double> true_taus;
  for (double q : o.candidate_quantiles) true_taus.push_back(true_quantile(q));
  const double benefit = 1.5, blocks = 1000, pressure = 0.2;
  const double cost_per_s = blocks * o.full_pressure_cost_s_per_block_s * pressure;
  const double want = ReferenceTtl(true_taus, true_cdf, benefit, cost_per_s);
  ASSERT_GT(want, 0);
  double err_at_50 = 0, err_at_20000 = 0;
  int n = 0;
  for (int target : {50, 20'000}) {
    for (; n < target; ++n) {
      stats.AddSample("pytest", static_cast<int64_t>(tool(rng) * 1e6));
      clock.AdvanceMicros(kSecond);
    }
    TtlDecision d = DecideTtl(stats.ForKey("pytest"), benefit, blocks, pressure, o);
    EXPECT_EQ(d.source, DistributionSource::kKey);
    (target == 50 ? err_at_50 : err_at_20000) = std::abs(d.ttl_s - want) / want;
    // With no pressure the TTL is the key's p99, which converges to the true p99.
    TtlDecision free = DecideTtl(stats.ForKey("pytest"), benefit, blocks, 0.0, o);
    if (target == 20'000) {
      EXPECT_NEAR(free.ttl_s, true_quantile(0.99), 0.08 * true_quantile(0.99));
    }
  }
  EXPECT_LT(err_at_20000, 0.05) << "seed " << seed;
  EXPECT_LE(err_at_20000, err_at_50 + 0.05) << "seed " << seed;
}

TEST(TtlPolicy, BenefitUsesTheBestTierAfterDemotionPlusQueueing) {
  CostModel m;
  m.prefill_per_token_s = 1e-4;
  m.kv_bytes_per_token = 1000;
  m.host_to_device_bytes_per_s = 1e9;  // 10k tokens: 0.01 s
  m.disk_to_device_bytes_per_s = 1e7;  // 10k tokens: 1 s, slower than a 1 s prefill? equal
  PinCandidate s{10'000, 625, true, true, 0};
  HitBenefit b = ComputeHitBenefit(m, s);
  EXPECT_EQ(b.rebuild_from, RebuildSource::kHost);
  EXPECT_NEAR(b.rebuild_s, 0.01, 1e-12);
  s.host_has_room = false;
  m.disk_to_device_bytes_per_s = 2e7;
  b = ComputeHitBenefit(m, s);
  EXPECT_EQ(b.rebuild_from, RebuildSource::kDisk);
  EXPECT_NEAR(b.rebuild_s, 0.5, 1e-12);
  s.disk_has_room = false;
  s.queued_prefill_tokens = 3000;
  b = ComputeHitBenefit(m, s);
  EXPECT_EQ(b.rebuild_from, RebuildSource::kPrefill);
  EXPECT_NEAR(b.rebuild_s, 1.0, 1e-12);
  EXPECT_NEAR(b.queue_s, 0.3, 1e-12);
  EXPECT_NEAR(b.total_s(), 1.3, 1e-12);
  // A tier whose bandwidth is unmeasured is never chosen.
  m.host_to_device_bytes_per_s = 0;
  s.host_has_room = true;
  EXPECT_EQ(ComputeHitBenefit(m, s).rebuild_from, RebuildSource::kPrefill);
}

TEST(TtlPolicy, FixedTtlIsContinuumsRule) {
  FakeClock clock;
  ToolLatencyStats stats({}, &clock);
  FixedTtlOptions o;  // 2 s pin when the mean is <= 2 s or the tool is unseen
  EXPECT_EQ(FixedTtl(stats, "unseen", o), 2.0);
  stats.AddSample("cat", 300'000);
  stats.AddSample("cat", 700'000);
  EXPECT_EQ(FixedTtl(stats, "cat", o), 2.0);
  stats.AddSample("pytest", 1 * kSecond);
  stats.AddSample("pytest", 4 * kSecond);  // mean 2.5 s
  EXPECT_EQ(FixedTtl(stats, "pytest", o), 0.0);
  o.ttl_s = 3.5;
  o.mean_threshold_s = 3.0;
  EXPECT_EQ(FixedTtl(stats, "pytest", o), 3.5);
}

}  // namespace
}  // namespace kvkeep
