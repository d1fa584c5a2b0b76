// Sampler: greedy is the argmax, top-k = 1 is greedy, seeds reproduce, and draws follow
// the temperature / top-k / top-p distribution (statistical checks with fixed seeds).
#include "engine/sampler.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <map>
#include <random>

#include "tests/testlib/test_util.h"

namespace kvkeep {
namespace {

std::vector<float> RandomLogits(std::mt19937_64& rng, int n) {
  std::normal_distribution<float> dist(0.0f, 3.0f);
  std::vector<float> v(n);
  for (float& x : v) x = dist(rng);
  return v;
}

std::vector<float> LogitsOf(const std::vector<double>& probs) {
  std::vector<float> v;
  for (double p : probs) v.push_back(static_cast<float>(std::log(p)));
  return v;
}

// Frequencies of n draws.
std::map<int32_t, double> Draw(const SamplingParams& params, const std::vector<float>& logits,
                               int n) {
  Sampler s(params);
  std::map<int32_t, double> f;
  for (int i = 0; i < n; ++i) f[s.Sample(logits.data(), logits.size())] += 1.0 / n;
  return f;
}

TEST(SamplerTest, GreedyIsArgmax) {
  std::mt19937_64 rng(testing::TestSeed());
  Sampler greedy(SamplingParams{});
  for (int trial = 0; trial < 200; ++trial) {
    std::vector<float> logits = RandomLogits(rng, 1000);
    const int32_t want = std::max_element(logits.begin(), logits.end()) - logits.begin();
    EXPECT_EQ(greedy.Sample(logits.data(), logits.size()), want);
  }
}

TEST(SamplerTest, GreedyTiesPickLowestIndex) {
  std::vector<float> logits = {0.5f, 2.0f, -1.0f, 2.0f, 2.0f};
  Sampler greedy(SamplingParams{});
  EXPECT_EQ(greedy.Sample(logits.data(), logits.size()), 1);
  logits[0] = NAN;
  logits[1] = NAN;
  EXPECT_EQ(greedy.Sample(logits.data(), logits.size()), 3);
}

TEST(SamplerTest, TopKOneIsGreedy) {
  std::mt19937_64 rng(testing::TestSeed());
  SamplingParams p;
  p.temperature = 1.5f;
  p.top_k = 1;
  p.seed = rng();
  Sampler s(p);
  for (int trial = 0; trial < 200; ++trial) {
    std::vector<float> logits = RandomLogits(rng, 300);
    EXPECT_EQ(s.Sample(logits.data(), logits.size()),
              std::max_element(logits.begin(), logits.end()) - logits.begin());
  }
}

TEST(SamplerTest, SameSeedSameTokensOtherSeedOtherTokens) {
  std::mt19937_64 rng(testing::TestSeed());
  std::vector<std::vector<float>> rows;
  for (int i = 0; i < 100; ++i) rows.push_back(RandomLogits(rng, 64));
  SamplingParams p;
  p.temperature = 1.0f;
  p.top_p = 0.95f;
  p.seed = rng();
  auto run = [&](uint64_t seed) {
    SamplingParams q = p;
    q.seed = seed;
    Sampler s(q);
    std::vector<int32_t> out;
    for (const auto& r : rows) out.push_back(s.Sample(r.data(), r.size()));
    return out;
  };
  EXPECT_EQ(run(p.seed), run(p.seed));
  EXPECT_NE(run(p.seed), run(p.seed + 1));
}

TEST(SamplerTest, TopPKeepsOnlyTheNucleus) {
  // p = {0.5, 0.3, 0.15, 0.05}: the 0.7 nucleus is {0, 1}, renormalised to {0.625, 0.375}.
  const std::vector<float> logits = LogitsOf({0.5, 0.3, 0.15, 0.05});
  SamplingParams p;
  p.temperature = 1.0f;
  p.top_p = 0.7f;
  p.seed = 20261122;
  auto f = Draw(p, logits, 20000);
  EXPECT_EQ(f.count(2), 0u);
  EXPECT_EQ(f.count(3), 0u);
  EXPECT_NEAR(f[0], 0.625, 0.02);
  EXPECT_NEAR(f[1], 0.375, 0.02);
  // A nucleus smaller than the top token still keeps it.
  p.top_p = 0.1f;
  f = Draw(p, logits, 100);
  EXPECT_DOUBLE_EQ(f[0], 1.0);
}

TEST(SamplerTest, TemperatureAndTopKShapeTheDistribution) {
  const std::vector<double> probs = {0.4, 0.3, 0.2, 0.1};
  const std::vector<float> logits = LogitsOf(probs);
  SamplingParams p;
  p.seed = 7;
  p.temperature = 1.0f;
  auto f = Draw(p, logits, 20000);
  for (int i = 0; i < 4; ++i) EXPECT_NEAR(f[i], probs[i], 0.02) << i;
  // T = 2: p_i^(1/2), renormalised.
  p.temperature = 2.0f;
  f = Draw(p, logits, 20000);
  double z = 0;
  for (double q : probs) z += std::sqrt(q);
  for (int i = 0; i < 4; ++i) EXPECT_NEAR(f[i], std::sqrt(probs[i]) / z, 0.02) << i;
  // top-k = 2 at T = 1: {0.4, 0.3} renormalised.
  p.temperature = 1.0f;
  p.top_k = 2;
  f = Draw(p, logits, 20000);
  EXPECT_EQ(f.count(2) + f.count(3), 0u);
  EXPECT_NEAR(f[0], 0.4 / 0.7, 0.02);
}

TEST(SamplerTest, CandidatesAreSortedAndNormalised) {
  std::mt19937_64 rng(testing::TestSeed());
  std::vector<float> logits = RandomLogits(rng, 500);
  SamplingParams p;
  p.temperature = 0.8f;
  p.top_k = 50;
  p.top_p = 0.9f;
  auto c = Sampler::Candidates(p, logits.data(), logits.size());
  ASSERT_FALSE(c.empty());
  EXPECT_LE(c.size(), 50u);
  double sum = 0;
  for (size_t i = 0; i < c.size(); ++i) {
    sum += c[i].second;
    if (i > 0) {
      EXPECT_GE(c[i - 1].second, c[i].second);
    }
  }
  EXPECT_NEAR(sum, 1.0, 1e-5);
  // The kept tokens are the most likely ones.
  std::vector<float> sorted = logits;
  std::sort(sorted.rbegin(), sorted.rend());
  EXPECT_EQ(logits[c[0].first], sorted[0]);
  EXPECT_EQ(logits[c.back().first], sorted[c.size() - 1]);
}

}  // namespace
}  // namespace kvkeep
