// Episode clustering and routing: well-separated blobs are recovered exactly (checked
// against the generating labels), a fixed seed gives identical episodes, medoids are the
// members nearest the centroid (checked by brute force), and each router picks what a
// direct computation here says it should.
#include "index/episodes.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <map>
#include <random>

#include "index/embedder.h"
#include "tests/testlib/test_util.h"

namespace kvkeep::index {
namespace {

// n points around each of k random unit directions, labels in order blob by blob but
// interleaved in the output (point i belongs to blob i % k).
std::vector<float> Blobs(int32_t k, int32_t per_blob, int32_t dim, uint64_t seed,
                         std::vector<int32_t>* labels) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> n(0.0f, 1.0f);
  std::vector<float> centers(static_cast<size_t>(k) * dim);
  for (float& x : centers) x = n(rng);
  NormalizeRows(centers.data(), k, dim);
  std::vector<float> points;
  labels->clear();
  for (int32_t i = 0; i < k * per_blob; ++i) {
    const int32_t c = i % k;
    for (int32_t d = 0; d < dim; ++d) points.push_back(centers[c * dim + d] + 0.05f * n(rng));
    labels->push_back(c);
  }
  NormalizeRows(points.data(), k * per_blob, dim);
  return points;
}

TEST(Episodes, RecoversSeparatedBlobs) {
  std::vector<int32_t> labels;
  const int32_t k = 4, per = 25, dim = 32;
  auto x = Blobs(k, per, dim, testing::TestSeed(), &labels);
  ClusterOptions o;
  o.num_episodes = k;
  auto set = ClusterEpisodes(x, k * per, dim, o);
  ASSERT_TRUE(set.ok()) << set.status().ToString();
  ASSERT_EQ(set->episodes.size(), 4u);
  // Same partition as the labels, up to renaming.
  std::map<int32_t, int32_t> rename;
  for (int32_t i = 0; i < k * per; ++i) {
    auto [it, inserted] = rename.emplace(labels[i], set->assignment[i]);
    EXPECT_EQ(it->second, set->assignment[i]) << "point " << i;
  }
  EXPECT_EQ(rename.size(), 4u);
  size_t total = 0;
  for (const Episode& e : set->episodes) {
    total += e.members.size();
    EXPECT_TRUE(std::is_sorted(e.members.begin(), e.members.end()));
    double norm = 0;
    for (float c : e.centroid) norm += c * c;
    EXPECT_NEAR(norm, 1.0, 1e-4);
  }
  EXPECT_EQ(total, static_cast<size_t>(k * per));
}

TEST(Episodes, FixedSeedIsDeterministic) {
  std::vector<int32_t> labels;
  // Overlapping blobs, so the seed matters.
  std::mt19937_64 rng(7);
  std::normal_distribution<float> n(0.0f, 1.0f);
  const int32_t count = 120, dim = 16;
  std::vector<float> x(static_cast<size_t>(count) * dim);
  for (float& v : x) v = n(rng);
  NormalizeRows(x.data(), count, dim);
  ClusterOptions o;
  o.num_episodes = 5;
  o.seed = 99;
  auto a = ClusterEpisodes(x, count, dim, o);
  auto b = ClusterEpisodes(x, count, dim, o);
  ASSERT_TRUE(a.ok() && b.ok());
  EXPECT_EQ(a->assignment, b->assignment);
  EXPECT_EQ(a->objective, b->objective);
  for (size_t e = 0; e < a->episodes.size(); ++e) {
    EXPECT_EQ(a->episodes[e].centroid, b->episodes[e].centroid);
    EXPECT_EQ(a->episodes[e].medoid_windows, b->episodes[e].medoid_windows);
  }
  // Routing a fixed query is deterministic too.
  std::vector<float> q(x.begin(), x.begin() + dim);
  RouterOptions centroid{RouteMethod::kCentroid, 1};
  EXPECT_EQ(*RouteQuery(*a, q, {}, centroid), *RouteQuery(*b, q, {}, centroid));
  // More restarts never lower the objective (the best restart is kept, seeds shared).
  ClusterOptions more = o;
  more.restarts = o.restarts * 3;
  auto c = ClusterEpisodes(x, count, dim, more);
  ASSERT_TRUE(c.ok());
  EXPECT_GE(c->objective, a->objective - 1e-6);
}

TEST(Episodes, MedoidsAreTheMembersNearestTheCentroid) {
  std::vector<int32_t> labels;
  const int32_t dim = 12;
  auto x = Blobs(3, 20, dim, testing::TestSeed(), &labels);
  ClusterOptions o;
  o.num_episodes = 3;
  o.medoid_windows = 4;
  auto set = ClusterEpisodes(x, 60, dim, o);
  ASSERT_TRUE(set.ok());
  for (const Episode& e : set->episodes) {
    ASSERT_EQ(e.medoid_windows.size(), 4u);
    EXPECT_TRUE(std::is_sorted(e.medoid_windows.begin(), e.medoid_windows.end()));
    float worst_medoid = 2.0f;
    for (int32_t w : e.medoid_windows) {
      EXPECT_TRUE(std::binary_search(e.members.begin(), e.members.end(), w));
      worst_medoid = std::min(worst_medoid, Dot(&x[w * dim], e.centroid.data(), dim));
    }
    for (int32_t w : e.members) {
      if (std::binary_search(e.medoid_windows.begin(), e.medoid_windows.end(), w)) continue;
      EXPECT_LE(Dot(&x[w * dim], e.centroid.data(), dim), worst_medoid + 1e-6);
    }
  }
}

TEST(Episodes, RoutersPickWhatTheirDefinitionSays) {
  // Two episodes by hand: {0, 1, 2} and {3, 4}.
  EpisodeSet set;
  set.dim = 2;
  set.assignment = {0, 0, 0, 1, 1};
  set.episodes.resize(2);
  set.episodes[0].centroid = {1.0f, 0.0f};
  set.episodes[0].members = {0, 1, 2};
  set.episodes[1].centroid = {0.0f, 1.0f};
  set.episodes[1].members = {3, 4};
  const std::vector<float> query = {0.8f, 0.6f};  // nearer centroid 0
  const std::vector<float> scores = {0.5f, 0.45f, 0.1f, 0.9f, 0.0f};
  EXPECT_EQ(*RouteQuery(set, query, scores, {RouteMethod::kCentroid, 1}), 0);
  // Best single window: 0.9 in episode 1.
  EXPECT_EQ(*RouteQuery(set, query, scores, {RouteMethod::kTopWindows, 1}), 1);
  // Mean of the best two: episode 0 (0.5 + 0.45) / 2 = 0.475 vs episode 1 0.45.
  EXPECT_EQ(*RouteQuery(set, query, scores, {RouteMethod::kTopWindows, 2}), 0);
  EXPECT_TRUE(
      RouteQuery(set, query, {0.1f}, {RouteMethod::kTopWindows, 1}).status().IsInvalidArgument());
  EXPECT_TRUE(
      RouteQuery(set, {1.0f}, scores, {RouteMethod::kCentroid, 1}).status().IsInvalidArgument());
}

TEST(Episodes, FewWindowsAndBadInput) {
  std::vector<float> x = {1, 0, 0, 1};
  ClusterOptions o;
  o.num_episodes = 4;
  auto set = ClusterEpisodes(x, 2, 2, o);
  ASSERT_TRUE(set.ok());
  EXPECT_EQ(set->episodes.size(), 2u);  // E is capped by the windows
  EXPECT_NE(set->assignment[0], set->assignment[1]);
  EXPECT_TRUE(ClusterEpisodes({}, 0, 2, o).status().IsInvalidArgument());
  EXPECT_TRUE(ClusterEpisodes(x, 3, 2, o).status().IsInvalidArgument());
}

}  // namespace
}  // namespace kvkeep::index
