// VectorIndex: real FAISS. Search results against a brute-force inner product computed
// here; serialise/restore round trips (flat, IVF-Flat and HNSW); IVF-Flat and HNSW agree with flat
// on the top-1 of a fixed set; bad input gets a Status, not an exception.
#include "index/vector_index.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <random>

#include "index/embedder.h"
#include "tests/testlib/test_util.h"

namespace kvkeep::index {
namespace {

std::vector<float> RandomUnit(int64_t rows, int32_t dim, std::mt19937_64& rng) {
  std::normal_distribution<float> n(0.0f, 1.0f);
  std::vector<float> v(static_cast<size_t>(rows) * dim);
  for (float& x : v) x = n(rng);
  NormalizeRows(v.data(), rows, dim);
  return v;
}

std::vector<int64_t> Ids(int64_t n, int64_t base) {
  std::vector<int64_t> ids(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) ids[i] = base + 7 * i;  // not 0..n-1: ids are the caller's
  return ids;
}

int64_t BruteTop1(const std::vector<float>& data, const std::vector<int64_t>& ids, int32_t dim,
                  const float* q) {
  int64_t best = -1;
  float best_score = -1e9f;
  for (size_t i = 0; i < ids.size(); ++i) {
    const float s = Dot(data.data() + i * dim, q, dim);
    if (s > best_score) best_score = s, best = ids[i];
  }
  return best;
}

TEST(VectorIndex, SearchMatchesBruteForce) {
  std::mt19937_64 rng(testing::TestSeed());
  const int32_t dim = 24;
  auto data = RandomUnit(300, dim, rng);
  auto ids = Ids(300, 1000);
  auto index = VectorIndex::Create(dim);
  ASSERT_TRUE(index.ok());
  ASSERT_TRUE((*index)->Add(ids, data).ok());
  EXPECT_EQ((*index)->size(), 300);
  EXPECT_FALSE((*index)->is_approximate());
  auto queries = RandomUnit(20, dim, rng);
  for (int q = 0; q < 20; ++q) {
    std::vector<float> query(queries.begin() + q * dim, queries.begin() + (q + 1) * dim);
    auto hits = (*index)->Search(query, 5);
    ASSERT_TRUE(hits.ok());
    ASSERT_EQ(hits->size(), 5u);
    EXPECT_EQ((*hits)[0].id, BruteTop1(data, ids, dim, query.data()));
    for (size_t i = 1; i < hits->size(); ++i) EXPECT_GE((*hits)[i - 1].score, (*hits)[i].score);
  }
}

TEST(VectorIndex, SerializeRestoreRoundTripsFlatIvfAndHnsw) {
  std::mt19937_64 rng(testing::TestSeed());
  const int32_t dim = 16;
  struct Case {
    int64_t threshold;
    AnnKind ann;
    const char* kind;
  };
  for (const Case& c :
       {Case{100000, AnnKind::kIvfFlat, "flat"}, Case{50, AnnKind::kIvfFlat, "ivf_flat"},
        Case{50, AnnKind::kHnsw, "hnsw"}}) {
    SCOPED_TRACE(c.kind);
    VectorIndexOptions o;
    o.ann_threshold = c.threshold;
    o.ann = c.ann;
    auto index = VectorIndex::Create(dim, o);
    ASSERT_TRUE(index.ok());
    auto data = RandomUnit(200, dim, rng);
    ASSERT_TRUE((*index)->Add(Ids(200, 5), data).ok());
    EXPECT_STREQ((*index)->kind_name(), c.kind);
    EXPECT_EQ((*index)->is_approximate(), c.threshold == 50);
    auto bytes = (*index)->Serialize();
    ASSERT_TRUE(bytes.ok());
    auto restored = VectorIndex::Restore(*bytes, o);
    ASSERT_TRUE(restored.ok()) << restored.status().ToString();
    EXPECT_EQ((*restored)->size(), 200);
    EXPECT_STREQ((*restored)->kind_name(), c.kind);
    auto v = (*restored)->Reconstruct(5 + 7 * 3);
    ASSERT_TRUE(v.ok());
    EXPECT_EQ(*v, std::vector<float>(data.begin() + 3 * dim, data.begin() + 4 * dim));
    auto queries = RandomUnit(10, dim, rng);
    for (int q = 0; q < 10; ++q) {
      std::vector<float> query(queries.begin() + q * dim, queries.begin() + (q + 1) * dim);
      auto a = (*index)->Search(query, 3);
      auto b = (*restored)->Search(query, 3);
      ASSERT_TRUE(a.ok() && b.ok());
      ASSERT_EQ(a->size(), b->size());
      for (size_t i = 0; i < a->size(); ++i) {
        EXPECT_EQ((*a)[i].id, (*b)[i].id);
        EXPECT_FLOAT_EQ((*a)[i].score, (*b)[i].score);
      }
    }
    // The restored index keeps growing.
    ASSERT_TRUE((*restored)->Add({999999}, RandomUnit(1, dim, rng)).ok());
    EXPECT_EQ((*restored)->size(), 201);
  }
}

// Both approximate kinds, each given its vectors in two adds across the switch.
TEST(VectorIndex, ApproximateIndexesAgreeWithFlatOnTop1OfAFixedSet) {
  for (AnnKind kind : {AnnKind::kIvfFlat, AnnKind::kHnsw}) {
    SCOPED_TRACE(kind == AnnKind::kHnsw ? "hnsw" : "ivf_flat");
    std::mt19937_64 rng(20261205);  // a fixed set
    const int32_t dim = 32;
    auto data = RandomUnit(2000, dim, rng);
    auto ids = Ids(2000, 0);
    VectorIndexOptions flat_o;
    flat_o.ann_threshold = 1 << 30;
    VectorIndexOptions ann_o;
    ann_o.ann_threshold = 1000;
    ann_o.ann = kind;
    auto flat = VectorIndex::Create(dim, flat_o);
    auto ann = VectorIndex::Create(dim, ann_o);
    ASSERT_TRUE(flat.ok() && ann.ok());
    ASSERT_TRUE((*flat)->Add(ids, data).ok());
    std::vector<int64_t> ids_a(ids.begin(), ids.begin() + 600), ids_b(ids.begin() + 600, ids.end());
    ASSERT_TRUE(
        (*ann)->Add(ids_a, std::vector<float>(data.begin(), data.begin() + 600 * dim)).ok());
    EXPECT_FALSE((*ann)->is_approximate());
    ASSERT_TRUE((*ann)->Add(ids_b, std::vector<float>(data.begin() + 600 * dim, data.end())).ok());
    EXPECT_TRUE((*ann)->is_approximate());
    // Queries near stored vectors have a clear top-1, which the index must find.
    std::normal_distribution<float> noise(0.0f, 0.05f);
    for (int q = 0; q < 100; ++q) {
      const int64_t target = (q * 37) % 2000;
      std::vector<float> query(data.begin() + target * dim, data.begin() + (target + 1) * dim);
      for (float& x : query) x += noise(rng);
      NormalizeRows(query.data(), 1, dim);
      auto a = (*flat)->Search(query, 1);
      auto b = (*ann)->Search(query, 1);
      ASSERT_TRUE(a.ok() && b.ok());
      ASSERT_EQ(a->size(), 1u);
      ASSERT_EQ(b->size(), 1u);
      EXPECT_EQ((*a)[0].id, (*b)[0].id) << "query " << q;
    }
  }
}

TEST(VectorIndex, BadInputGetsAStatus) {
  auto index = VectorIndex::Create(8);
  ASSERT_TRUE(index.ok());
  EXPECT_TRUE((*index)->Add({1, 2}, std::vector<float>(8)).IsInvalidArgument());
  ASSERT_TRUE((*index)->Add({1}, std::vector<float>(8, 0.5f)).ok());
  EXPECT_EQ((*index)->Add({1}, std::vector<float>(8, 0.5f)).code(), StatusCode::kAlreadyExists);
  EXPECT_TRUE((*index)->Search(std::vector<float>(7), 1).status().IsInvalidArgument());
  EXPECT_TRUE((*index)->Search(std::vector<float>(8), 0).status().IsInvalidArgument());
  EXPECT_TRUE((*index)->Reconstruct(42).status().IsNotFound());
  EXPECT_FALSE(VectorIndex::Create(0).ok());
  EXPECT_EQ(VectorIndex::Restore("not faiss at all").status().code(), StatusCode::kCorruption);
  auto bytes = (*index)->Serialize();
  ASSERT_TRUE(bytes.ok());
  EXPECT_EQ(VectorIndex::Restore(bytes->substr(0, bytes->size() / 2)).status().code(),
            StatusCode::kCorruption);
  // An empty index searches to nothing.
  auto empty = VectorIndex::Create(4);
  ASSERT_TRUE(empty.ok());
  auto hits = (*empty)->Search(std::vector<float>(4, 0.5f), 3);
  ASSERT_TRUE(hits.ok());
  EXPECT_TRUE(hits->empty());
}

}  // namespace
}  // namespace kvkeep::index
