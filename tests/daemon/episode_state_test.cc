// The episode state's byte format (round trip; every kind of damage is Corruption, never a
// crash) and UpdateEpisodes (no episodes under budget, full clustering, incremental
// assignment in between, a full re-clustering past the growth factor).
#include "daemon/episode_state.h"

#include <gtest/gtest.h>

#include <random>

#include "index/embedder.h"

namespace kvkeep {
namespace {

constexpr int32_t kDim = 8;

// n unit vectors around four well-separated directions (axes 0, 2, 4, 6).
std::vector<float> Windows(int32_t n, uint64_t seed = 5) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> noise(0.0f, 0.05f);
  std::vector<float> v(static_cast<size_t>(n) * kDim);
  for (int32_t i = 0; i < n; ++i) {
    for (int32_t d = 0; d < kDim; ++d) v[i * kDim + d] = noise(rng);
    v[i * kDim + 2 * (i % 4)] += 1.0f;
  }
  index::NormalizeRows(v.data(), n, kDim);
  return v;
}

SessionEpisodes MakeState(int32_t windows) {
  SessionEpisodes s;
  s.embedder = "hashed";
  s.dim = kDim;
  s.indexed_messages = windows * 4 + 2;
  s.budget_tokens = 77;
  s.segment_index = index::VectorIndex::Create(kDim).value();
  std::vector<float> v = Windows(windows, 9);
  std::vector<int64_t> ids;
  for (int32_t i = 0; i < windows; ++i) {
    ids.push_back(i);
    s.segments.push_back({i, i + 1, 3, 40 + i});
  }
  EXPECT_TRUE(s.segment_index->Add(ids, v).ok());
  s.window_vectors = Windows(windows);
  s.turns.push_back({12, 2, 4, 0.5f, false, 1234});
  return s;
}

TEST(EpisodeStateTest, RoundTrip) {
  SessionEpisodes s = MakeState(10);
  auto back = DecodeSessionEpisodes(EncodeSessionEpisodes(s), {});
  ASSERT_TRUE(back.ok()) << back.status().ToString();
  EXPECT_EQ(back->embedder, "hashed");
  EXPECT_EQ(back->dim, kDim);
  EXPECT_EQ(back->indexed_messages, 42);
  EXPECT_EQ(back->budget_tokens, 77);
  EXPECT_EQ(back->window_vectors, s.window_vectors);
  ASSERT_EQ(back->segments.size(), 10u);
  EXPECT_EQ(back->segments[3].end_byte, 43);
  ASSERT_EQ(back->turns.size(), 1u);
  EXPECT_EQ(back->turns[0].message_seq, 12);
  EXPECT_EQ(back->turns[0].episode, 2);
  // The FAISS index answers as the original does.
  std::vector<float> q(s.window_vectors.begin(), s.window_vectors.begin() + kDim);
  auto a = s.segment_index->Search(q, 3);
  auto b = back->segment_index->Search(q, 3);
  ASSERT_TRUE(a.ok() && b.ok());
  ASSERT_EQ(a->size(), b->size());
  for (size_t i = 0; i < a->size(); ++i) EXPECT_EQ((*a)[i].id, (*b)[i].id);
}

TEST(EpisodeStateTest, EveryDamageIsCorruption) {
  const std::string good = EncodeSessionEpisodes(MakeState(6));
  std::vector<std::string> bad = {"",
                                  "KVEP",
                                  "KVID" + good.substr(4),
                                  good.substr(0, 20),
                                  good.substr(0, good.size() - 1),
                                  good + "x"};
  for (size_t at : {size_t{5}, size_t{9}, size_t{17}, good.size() / 2, good.size() - 3}) {
    std::string flipped = good;
    flipped[at] ^= 0x40;
    bad.push_back(flipped);
  }
  for (size_t i = 0; i < bad.size(); ++i) {
    auto r = DecodeSessionEpisodes(bad[i], {});
    ASSERT_FALSE(r.ok()) << i;
    EXPECT_EQ(r.status().code(), StatusCode::kCorruption) << i << ": " << r.status().ToString();
  }
  // A valid checksum over a payload that lies about its FAISS bytes.
  SessionEpisodes s = MakeState(4);
  s.segments.pop_back();  // one segment fewer than the index holds
  auto r = DecodeSessionEpisodes(EncodeSessionEpisodes(s), {});
  EXPECT_EQ(r.status().code(), StatusCode::kCorruption);
}

TEST(EpisodeStateTest, IdfRoundTripAndDamage) {
  IdfState idf{5, {0, 1, 5, 2}};
  auto back = DecodeIdf(EncodeIdf(idf));
  ASSERT_TRUE(back.ok());
  EXPECT_EQ(back->num_observed, 5);
  EXPECT_EQ(back->doc_freq, idf.doc_freq);
  std::string bytes = EncodeIdf(idf);
  bytes[bytes.size() - 2] ^= 1;
  EXPECT_EQ(DecodeIdf(bytes).status().code(), StatusCode::kCorruption);
  EXPECT_EQ(DecodeIdf(EncodeSessionEpisodes(MakeState(2))).status().code(),
            StatusCode::kCorruption);
}

TEST(EpisodeStateTest, UpdateEpisodesClustersOverBudgetAndGrowsIncrementally) {
  SessionEpisodes s;
  s.dim = kDim;
  EpisodeClusterPolicy policy;  // E = 4, regrow 1.25
  s.window_vectors = Windows(16);
  s.total_tokens = 100;
  // At or under budget, or no budget: no episodes.
  for (int64_t budget : {int64_t{0}, int64_t{100}, int64_t{1000}}) {
    auto ran = UpdateEpisodes(&s, budget, policy);
    ASSERT_TRUE(ran.ok());
    EXPECT_FALSE(*ran);
    EXPECT_TRUE(s.episodes.episodes.empty());
  }
  auto ran = UpdateEpisodes(&s, 99, policy);
  ASSERT_TRUE(ran.ok());
  EXPECT_TRUE(*ran);
  ASSERT_EQ(s.episodes.episodes.size(), 4u);
  EXPECT_EQ(s.clustered_windows, 16);
  // Windows i and i + 4 share a direction: the same episode.
  for (int32_t i = 0; i + 4 < 16; ++i) {
    EXPECT_EQ(s.episodes.assignment[i], s.episodes.assignment[i + 4]) << i;
  }
  const auto centroids_before = s.episodes.episodes[0].centroid;
  // Three more windows (19 < 16 * 1.25 = 20): assigned to their nearest centroid.
  s.window_vectors = Windows(19);
  ran = UpdateEpisodes(&s, 99, policy);
  ASSERT_TRUE(ran.ok());
  EXPECT_FALSE(*ran);
  ASSERT_EQ(s.episodes.assignment.size(), 19u);
  for (int32_t i = 16; i < 19; ++i)
    EXPECT_EQ(s.episodes.assignment[i], s.episodes.assignment[i - 4]);
  EXPECT_EQ(s.episodes.episodes[0].centroid, centroids_before);
  size_t members = 0;
  for (const auto& e : s.episodes.episodes) members += e.members.size();
  EXPECT_EQ(members, 19u);
  // Twenty windows: a full re-clustering.
  s.window_vectors = Windows(20);
  ran = UpdateEpisodes(&s, 99, policy);
  ASSERT_TRUE(ran.ok());
  EXPECT_TRUE(*ran);
  EXPECT_EQ(s.clustered_windows, 20);
  EXPECT_EQ(s.num_reclusters, 2);
}

// The three-step form the index uses to cluster outside its lock gives the same episodes
// as UpdateEpisodes, and a window added while clustering ran is assigned incrementally.
TEST(EpisodeStateTest, ClusteringOutsideTheLockEqualsUpdateEpisodes) {
  EpisodeClusterPolicy policy;
  SessionEpisodes a, b;
  for (SessionEpisodes* s : {&a, &b}) {
    s->dim = kDim;
    s->window_vectors = Windows(16);
    s->total_tokens = 100;
  }
  EXPECT_FALSE(FullClusteringDue(a, 100, policy));  // at budget
  EXPECT_FALSE(FullClusteringDue(a, 0, policy));    // no budget
  ASSERT_TRUE(FullClusteringDue(a, 99, policy));
  ASSERT_TRUE(UpdateEpisodes(&a, 99, policy).ok());
  auto clustered = ClusterWindows(b.window_vectors, kDim, policy);
  ASSERT_TRUE(clustered.ok());
  EXPECT_EQ(clustered->num_windows, 16);
  b.window_vectors = Windows(17);  // appended while the clustering ran
  InstallEpisodes(&b, std::move(clustered).value());
  auto ran = UpdateEpisodes(&b, 99, policy);
  ASSERT_TRUE(ran.ok());
  EXPECT_FALSE(*ran);  // 17 < 16 * 1.25: incremental
  EXPECT_EQ(b.num_reclusters, a.num_reclusters);
  EXPECT_EQ(b.clustered_windows, 16);
  ASSERT_EQ(b.episodes.assignment.size(), 17u);
  EXPECT_EQ(std::vector<int32_t>(b.episodes.assignment.begin(), b.episodes.assignment.end() - 1),
            a.episodes.assignment);
  EXPECT_EQ(b.episodes.assignment[16], b.episodes.assignment[12]);  // same direction
  for (size_t e = 0; e < a.episodes.episodes.size(); ++e) {
    EXPECT_EQ(b.episodes.episodes[e].centroid, a.episodes.episodes[e].centroid);
  }
  EXPECT_FALSE(FullClusteringDue(b, 99, policy));
}

}  // namespace
}  // namespace kvkeep
