// Attention scoring and per-head KV compaction on the CPU, against references written here:
// a dense softmax in double over contiguous K, and a gather of the dense K/V.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <random>
#include <vector>

#include "kernels/cpu/attention_scores.h"
#include "kernels/cpu/kv_compact.h"
#include "tests/testlib/test_util.h"

namespace kvkeep::cpu {
namespace {

struct Shape {
  int32_t num_q_heads, num_kv_heads, head_dim, block_size, kv_len, n_new, num_scored;
};

// A pool of num_blocks blocks for one layer, filled from dense K/V through a shuffled
// block table.
struct Pool {
  std::vector<float> data;
  PagedKv<float> kv;
  std::vector<int32_t> table;
};

Pool MakePool(const Shape& s, const std::vector<float>& k, const std::vector<float>& v,
              std::mt19937_64& rng) {
  Pool p;
  const int32_t nb = (s.kv_len + s.block_size - 1) / s.block_size;
  const int64_t head = int64_t{s.block_size} * s.head_dim;
  const int64_t block_stride = 2 * s.num_kv_heads * head;
  p.data.assign((nb + 3) * block_stride, NAN);
  p.table.resize(nb + 3);
  for (int32_t i = 0; i < nb + 3; ++i) p.table[i] = i;
  std::shuffle(p.table.begin(), p.table.end(), rng);
  p.kv = {.k = p.data.data(),
          .v = p.data.data() + s.num_kv_heads * head,
          .block_stride = block_stride,
          .num_blocks = nb + 3,
          .num_kv_heads = s.num_kv_heads,
          .block_size = s.block_size,
          .head_dim = s.head_dim};
  for (int32_t j = 0; j < s.kv_len; ++j) {
    for (int32_t h = 0; h < s.num_kv_heads; ++h) {
      const int64_t off = int64_t{p.table[j / s.block_size]} * block_stride +
                          (int64_t{h} * s.block_size + j % s.block_size) * s.head_dim;
      for (int32_t x = 0; x < s.head_dim; ++x) {
        const int64_t src = (int64_t{j} * s.num_kv_heads + h) * s.head_dim + x;
        p.kv.k[off + x] = k[src];
        p.kv.v[off + x] = v[src];
      }
    }
  }
  return p;
}

std::vector<float> Random(std::mt19937_64& rng, int64_t n, float scale) {
  std::normal_distribution<float> dist(0.0f, scale);
  std::vector<float> x(n);
  for (float& f : x) f = dist(rng);
  return x;
}

class AttentionScoresTest : public ::testing::TestWithParam<Shape> {};

TEST_P(AttentionScoresTest, MatchesDenseSoftmax) {
  const Shape s = GetParam();
  std::mt19937_64 rng(testing::TestSeed());
  const int64_t kv_floats = int64_t{s.kv_len} * s.num_kv_heads * s.head_dim;
  std::vector<float> k = Random(rng, kv_floats, 1.0f), v = Random(rng, kv_floats, 1.0f);
  std::vector<float> q = Random(rng, int64_t{s.n_new} * s.num_q_heads * s.head_dim, 1.5f);
  Pool pool = MakePool(s, k, v, rng);
  const int32_t q_start[2] = {0, s.n_new};
  AttentionBatch batch{.num_seqs = 1,
                       .q_start = q_start,
                       .kv_len = &s.kv_len,
                       .block_tables = pool.table.data(),
                       .max_blocks_per_seq = static_cast<int32_t>(pool.table.size())};
  AttentionParams params{.num_q_heads = s.num_q_heads,
                         .scale = 1.0f / std::sqrt(static_cast<float>(s.head_dim))};
  std::vector<float> got(int64_t{s.num_kv_heads} * s.num_scored, -1.0f);
  ASSERT_TRUE(AttentionScores(params, batch, pool.kv, q.data(), s.num_scored, got.data()).ok());

  // Dense reference in double.
  const int32_t group = s.num_q_heads / s.num_kv_heads;
  std::vector<double> want(got.size(), 0.0);
  for (int32_t t = 0; t < s.n_new; ++t) {
    const int32_t visible = s.kv_len - s.n_new + t + 1;
    for (int32_t qh = 0; qh < s.num_q_heads; ++qh) {
      const int32_t h = qh / group;
      std::vector<double> logit(visible);
      double m = -INFINITY, sum = 0;
      for (int32_t j = 0; j < visible; ++j) {
        double dot = 0;
        for (int32_t x = 0; x < s.head_dim; ++x) {
          dot += double{q[(int64_t{t} * s.num_q_heads + qh) * s.head_dim + x]} *
                 k[(int64_t{j} * s.num_kv_heads + h) * s.head_dim + x];
        }
        logit[j] = dot / std::sqrt(static_cast<double>(s.head_dim));
        m = std::max(m, logit[j]);
      }
      for (double l : logit) sum += std::exp(l - m);
      for (int32_t j = 0; j < std::min(visible, s.num_scored); ++j) {
        double& w = want[int64_t{h} * s.num_scored + j];
        w = std::max(w, std::exp(logit[j] - m) / sum);
      }
    }
  }
  double max_err = 0;
  for (size_t i = 0; i < got.size(); ++i) max_err = std::max(max_err, std::abs(got[i] - want[i]));
  EXPECT_LT(max_err, 1e-5);
  // The scores must discriminate: a constant output would not pass the check above unless
  // the reference were constant too.
  EXPECT_GT(*std::max_element(want.begin(), want.end()),
            2 * *std::min_element(want.begin(), want.end()) + 1e-3);
}

INSTANTIATE_TEST_SUITE_P(Shapes, AttentionScoresTest,
                         ::testing::Values(Shape{4, 2, 64, 16, 200, 24, 176},
                                           Shape{3, 1, 32, 8, 77, 13, 64},
                                           Shape{8, 8, 16, 16, 40, 40, 40},
                                           Shape{9, 3, 64, 16, 300, 1, 299},
                                           Shape{4, 2, 64, 16, 120, 30, 120}));

TEST(AttentionScores, RejectsBadInput) {
  std::vector<float> data(2 * 2 * 16 * 8, 0.0f), q(4 * 8), out(64);
  PagedKv<float> kv{.k = data.data(),
                    .v = data.data() + 16 * 8,
                    .block_stride = 2 * 16 * 8,
                    .num_blocks = 2,
                    .num_kv_heads = 1,
                    .block_size = 16,
                    .head_dim = 8};
  const int32_t table[2] = {0, 1}, q_start[2] = {0, 4}, kv_len = 20, bad_table[2] = {0, 7};
  AttentionParams params{.num_q_heads = 1, .scale = 1.0f};
  AttentionBatch batch{.num_seqs = 1,
                       .q_start = q_start,
                       .kv_len = &kv_len,
                       .block_tables = table,
                       .max_blocks_per_seq = 2};
  EXPECT_TRUE(AttentionScores(params, batch, kv, q.data(), 20, out.data()).ok());
  EXPECT_FALSE(AttentionScores(params, batch, kv, q.data(), 21, out.data()).ok());
  EXPECT_FALSE(AttentionScores(params, batch, kv, q.data(), -1, out.data()).ok());
  batch.block_tables = bad_table;
  EXPECT_FALSE(AttentionScores(params, batch, kv, q.data(), 20, out.data()).ok());
  batch.block_tables = table;
  batch.num_seqs = 2;
  EXPECT_FALSE(AttentionScores(params, batch, kv, q.data(), 20, out.data()).ok());
}

TEST(CompactKv, KeepsExactlyTheChosenEntriesPerHead) {
  const Shape s{4, 2, 16, 8, 70, 1, 0};
  std::mt19937_64 rng(testing::TestSeed());
  const int64_t kv_floats = int64_t{s.kv_len} * s.num_kv_heads * s.head_dim;
  std::vector<float> k = Random(rng, kv_floats, 1.0f), v = Random(rng, kv_floats, 1.0f);
  Pool pool = MakePool(s, k, v, rng);
  const int32_t num_keep = 23;
  std::vector<int32_t> keep;
  for (int32_t h = 0; h < s.num_kv_heads; ++h) {
    std::vector<int32_t> all(s.kv_len);
    for (int32_t j = 0; j < s.kv_len; ++j) all[j] = j;
    std::shuffle(all.begin(), all.end(), rng);
    all.resize(num_keep);
    std::sort(all.begin(), all.end());
    keep.insert(keep.end(), all.begin(), all.end());
  }
  ASSERT_TRUE(CompactKv(pool.kv, pool.table.data(), s.kv_len, keep.data(), num_keep).ok());
  for (int32_t h = 0; h < s.num_kv_heads; ++h) {
    for (int32_t i = 0; i < num_keep; ++i) {
      const int32_t j = keep[h * num_keep + i];
      const int64_t off = int64_t{pool.table[i / s.block_size]} * pool.kv.block_stride +
                          (int64_t{h} * s.block_size + i % s.block_size) * s.head_dim;
      for (int32_t x = 0; x < s.head_dim; ++x) {
        const int64_t src = (int64_t{j} * s.num_kv_heads + h) * s.head_dim + x;
        ASSERT_EQ(pool.kv.k[off + x], k[src]) << "head " << h << " entry " << i;
        ASSERT_EQ(pool.kv.v[off + x], v[src]) << "head " << h << " entry " << i;
      }
    }
  }
  std::vector<int32_t> unsorted = {5, 3};
  unsorted.resize(2 * 2, 0);
  EXPECT_FALSE(CompactKv(pool.kv, pool.table.data(), s.kv_len, unsorted.data(), 2).ok());
  std::vector<int32_t> past_end = {1, 70, 1, 2};
  EXPECT_FALSE(CompactKv(pool.kv, pool.table.data(), s.kv_len, past_end.data(), 2).ok());
}

}  // namespace
}  // namespace kvkeep::cpu
