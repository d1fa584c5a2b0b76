// ToolLatencyStats with a fake clock: per-key, pooled and prior distributions, window and
// decay ageing, quantiles against a sorted-copy reference.
#include "policy/tool_stats.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <random>

#include "tests/testlib/test_util.h"

namespace kvkeep {
namespace {

constexpr int64_t kSecond = 1'000'000;

TEST(ToolStats, PriorWithNoSamplesIsExponential) {
  FakeClock clock;
  ToolStatsOptions o;
  o.prior_mean_s = 4.0;
  ToolLatencyStats stats(o, &clock);
  DurationDistribution d = stats.ForKey("pytest");
  EXPECT_EQ(d.source(), DistributionSource::kPrior);
  EXPECT_NEAR(d.Mean(), 4.0, 1e-12);
  EXPECT_NEAR(d.Cdf(4.0), 1 - std::exp(-1.0), 1e-12);
  EXPECT_NEAR(d.Quantile(0.5), 4.0 * std::log(2.0), 1e-12);
  EXPECT_NEAR(d.Cdf(d.Quantile(0.9)), 0.9, 1e-12);
  EXPECT_FALSE(stats.HasSamples("pytest"));
}

TEST(ToolStats, KeyNeedsMinSamplesElseShrinksTowardPooled) {
  FakeClock clock;
  ToolStatsOptions o;
  o.min_samples_per_key = 20;
  ToolLatencyStats stats(o, &clock);
  for (int i = 0; i < 30; ++i) stats.AddSample("cat", 100'000);  // 0.1 s
  for (int i = 0; i < 19; ++i) stats.AddSample("pytest", 20 * kSecond);
  // 19 < 20: pytest's 19 samples, and the pooled CDF (49 samples) with weight 20 - 19.
  DurationDistribution pytest = stats.ForKey("pytest");
  EXPECT_EQ(pytest.source(), DistributionSource::kBlended);
  const double pooled_mean = (30 * 0.1 + 19 * 20.0) / 49;
  EXPECT_NEAR(pytest.Mean(), (19 * 20.0 + 1 * pooled_mean) / 20, 1e-9);
  EXPECT_NEAR(pytest.effective_samples(), 20, 1e-9);
  EXPECT_NEAR(pytest.Quantile(0.5), 20.0, 1e-9) << "the key's own samples count at once";
  EXPECT_NEAR(pytest.Cdf(0.1), 1.0 / 20 * 30 / 49, 1e-9);
  stats.AddSample("pytest", 20 * kSecond);
  EXPECT_EQ(stats.ForKey("pytest").source(), DistributionSource::kKey);
  EXPECT_NEAR(stats.ForKey("pytest").Quantile(0.5), 20.0, 1e-9);
  EXPECT_NEAR(stats.ForKey("pytest").Mean(), 20.0, 1e-9);
  EXPECT_EQ(stats.ForKey("cat").source(), DistributionSource::kKey);
  DurationDistribution unseen = stats.ForKey("never-seen");
  EXPECT_EQ(unseen.source(), DistributionSource::kPooled);
  EXPECT_NEAR(unseen.Mean(), (30 * 0.1 + 20 * 20.0) / 50, 1e-9);
}

// Before the pooled CDF has min_samples_per_key samples it is shrunk toward the prior, so
// the first samples count at once and the prior keeps the tail.
TEST(ToolStats, FewPooledSamplesShrinkTowardThePrior) {
  FakeClock clock;
  ToolStatsOptions o;
  o.min_samples_per_key = 20;
  o.prior_mean_s = 5.0;
  ToolLatencyStats stats(o, &clock);
  for (int i = 0; i < 5; ++i) stats.AddSample("cat", 200'000);  // 0.2 s
  DurationDistribution d = stats.ForKey("grep");
  EXPECT_EQ(d.source(), DistributionSource::kPooled);
  EXPECT_NEAR(d.effective_samples(), 20, 1e-9);
  // A quarter of the mass at 0.2 s, plus the prior's three points below it (its quantiles
  // at 0.5/64, 1.5/64 and 2.5/64 are 0.039, 0.118 and 0.199 s).
  EXPECT_NEAR(d.Cdf(0.2), 5.0 / 20 + 15.0 / 20 * 3 / 64, 1e-9);
  // The prior's points: its quantiles at (i + 0.5) / 64, so its mean is close to 5 s.
  const double prior_points_mean = [] {
    double m = 0;
    for (int i = 0; i < DurationDistribution::kPriorPoints; ++i) {
      m += DurationDistribution::Exponential(5.0).Quantile((i + 0.5) /
                                                           DurationDistribution::kPriorPoints);
    }
    return m / DurationDistribution::kPriorPoints;
  }();
  EXPECT_NEAR(d.Mean(), (5 * 0.2 + 15 * prior_points_mean) / 20, 1e-9);
  EXPECT_GT(d.Quantile(0.99), 10.0) << "the tail is the prior's";
  // "cat" itself: its 5 samples shrunk toward that pooled distribution.
  DurationDistribution cat = stats.ForKey("cat");
  EXPECT_EQ(cat.source(), DistributionSource::kBlended);
  EXPECT_NEAR(cat.Mean(), (5 * 0.2 + 15 * d.Mean()) / 20, 1e-9);
}

TEST(ToolStats, QuantilesMatchASortedReference) {
  const uint64_t seed = testing::TestSeed();
  std::mt19937_64 rng(seed);
  std::lognormal_distribution<double> dist(0.0, 1.0);
  FakeClock clock;
  ToolStatsOptions o;
  o.window_samples = 1000;
  ToolLatencyStats stats(o, &clock);
  std::vector<double> ref;
  for (int i = 0; i < 500; ++i) {
    const int64_t us = static_cast<int64_t>(dist(rng) * 1e6);
    stats.AddSample("k", us);
    ref.push_back(static_cast<double>(us) / 1e6);
  }
  std::sort(ref.begin(), ref.end());
  ToolKeySummary s = stats.Summary("k");
  EXPECT_EQ(s.num_samples, 500);
  // Nearest rank: the ceil(q * n)-th smallest.
  EXPECT_DOUBLE_EQ(s.p50_s, ref[249]);
  EXPECT_DOUBLE_EQ(s.p90_s, ref[449]);
  EXPECT_DOUBLE_EQ(s.p99_s, ref[494]);
  DurationDistribution d = stats.ForKey("k");
  EXPECT_DOUBLE_EQ(d.Cdf(ref[99]), 100.0 / 500);
  EXPECT_DOUBLE_EQ(d.Cdf(ref[0] / 2), 0.0);
}

TEST(ToolStats, SlidingWindowForgetsTheOldRegime) {
  FakeClock clock;
  ToolStatsOptions o;
  o.window_samples = 50;
  ToolLatencyStats stats(o, &clock);
  for (int i = 0; i < 50; ++i) stats.AddSample("pip", 1 * kSecond);
  EXPECT_NEAR(stats.ForKey("pip").Quantile(0.99), 1.0, 1e-9);
  for (int i = 0; i < 50; ++i) stats.AddSample("pip", 30 * kSecond);
  EXPECT_NEAR(stats.ForKey("pip").Quantile(0.01), 30.0, 1e-9);
  EXPECT_EQ(stats.Summary("pip").num_samples, 50);
}

TEST(ToolStats, ExponentialDecayWeighsRecentSamples) {
  FakeClock clock;
  ToolStatsOptions o;
  o.ageing = ToolStatsOptions::Ageing::kDecay;
  o.half_life_s = 60;
  o.min_samples_per_key = 1;
  ToolLatencyStats stats(o, &clock);
  for (int i = 0; i < 10; ++i) stats.AddSample("grep", 1 * kSecond);
  clock.AdvanceMicros(120 * kSecond);  // two half-lives: the old ten weigh 2.5
  for (int i = 0; i < 5; ++i) stats.AddSample("grep", 9 * kSecond);
  DurationDistribution d = stats.ForKey("grep");
  EXPECT_NEAR(d.effective_samples(), 10 * 0.25 + 5, 1e-9);
  EXPECT_NEAR(d.Cdf(1.0), 2.5 / 7.5, 1e-9);
  EXPECT_NEAR(d.Quantile(0.5), 9.0, 1e-9);
  // After many half-lives the old samples fall below min_weight and are dropped.
  clock.AdvanceMicros(3600 * kSecond);
  stats.AddSample("grep", 2 * kSecond);
  EXPECT_EQ(stats.Summary("grep").num_samples, 1);
  EXPECT_NEAR(stats.ForKey("grep").Mean(), 2.0, 1e-9);
}

}  // namespace
}  // namespace kvkeep
