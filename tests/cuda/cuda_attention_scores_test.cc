// The CUDA attention-scoring kernel (the EpiCache compressor's signal) against the CPU
// reference (kernels/cpu/attention_scores.h, itself tested against a dense softmax), on a
// bf16 pool with a scrambled block table.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <random>
#include <vector>

#include "kernels/cpu/attention_scores.h"
#include "kernels/cuda/attention.h"
#include "tests/cuda/cuda_test_util.h"
#include "tests/testlib/test_util.h"

namespace kvkeep::testing {
namespace {

struct ScoreCase {
  int head_dim, num_kv_heads, group, kv_len, n_new, num_scored;
};

class CudaAttentionScoresTest : public ::testing::TestWithParam<ScoreCase> {};

TEST_P(CudaAttentionScoresTest, MatchesCpuReference) {
  GpuArena gpu;
  KVKEEP_REQUIRE_GPU(gpu);
  const ScoreCase c = GetParam();
  std::mt19937_64 rng(TestSeed());
  KvPoolShape shape;
  shape.num_layers = 1;
  shape.num_kv_heads = c.num_kv_heads;
  shape.block_size = 16;
  shape.head_dim = c.head_dim;
  const int used = (c.kv_len + 15) / 16;
  shape.num_blocks = used + 5;
  std::vector<bf16> pool = RandomBf16(rng, shape.total_elements());
  std::vector<int32_t> table(shape.num_blocks);
  std::iota(table.begin(), table.end(), 0);
  std::shuffle(table.begin(), table.end(), rng);
  const int nq = c.num_kv_heads * c.group;
  std::vector<bf16> q = RandomBf16(rng, size_t(c.n_new) * nq * c.head_dim, 1.5f);
  AttentionParams params{.num_q_heads = nq, .scale = 1.0f / std::sqrt(float(c.head_dim))};

  // CPU reference over the same bf16 pool.
  const int32_t q_start[2] = {0, c.n_new};
  AttentionBatch batch{.num_seqs = 1,
                       .q_start = q_start,
                       .kv_len = &c.kv_len,
                       .block_tables = table.data(),
                       .max_blocks_per_seq = shape.num_blocks};
  std::vector<float> want(size_t(c.num_kv_heads) * c.num_scored);
  std::vector<float> qf = ToFloat(q);
  ASSERT_TRUE(cpu::AttentionScores(params, batch, LayerView(pool.data(), shape, 0), qf.data(),
                                   c.num_scored, want.data())
                  .ok());

  auto* dpool = reinterpret_cast<cuda::bf16_t*>(gpu.Upload(pool));
  PagedKv<cuda::bf16_t> kv = LayerView(dpool, shape, 0);
  float* scores = gpu.Alloc<float>(want.size());
  gpu.Poison(scores, want.size());
  float* ws = gpu.Alloc<float>(cuda::AttentionScoresWorkspaceBytes(c.n_new, nq) / sizeof(float));
  ASSERT_TRUE(cuda::AttentionScores(params, kv, gpu.Upload(table), c.kv_len, c.n_new,
                                    reinterpret_cast<const cuda::bf16_t*>(gpu.Upload(q)),
                                    int64_t{nq} * c.head_dim, c.num_scored, scores, ws,
                                    gpu.stream())
                  .ok());
  std::vector<float> got = gpu.Download(scores, want.size());
  EXPECT_LT(MaxAbsDiff(got, want), 1e-4);
  EXPECT_GT(*std::max_element(want.begin(), want.end()), 0.05f);  // not all near zero
}

INSTANTIATE_TEST_SUITE_P(Shapes, CudaAttentionScoresTest,
                         ::testing::Values(ScoreCase{64, 3, 3, 500, 40, 460},
                                           ScoreCase{128, 2, 4, 333, 17, 333},
                                           ScoreCase{64, 8, 1, 64, 64, 10},
                                           ScoreCase{32, 1, 8, 1000, 3, 997}));

TEST(CudaAttentionScores, RejectsBadInput) {
  AttentionParams params{.num_q_heads = 4, .scale = 1.0f};
  PagedKv<cuda::bf16_t> kv;
  kv.num_kv_heads = 2;
  kv.head_dim = 512;
  EXPECT_FALSE(
      cuda::AttentionScores(params, kv, nullptr, 10, 2, nullptr, 0, 5, nullptr, nullptr, nullptr)
          .ok());
  kv.head_dim = 64;
  EXPECT_FALSE(
      cuda::AttentionScores(params, kv, nullptr, 10, 2, nullptr, 0, 11, nullptr, nullptr, nullptr)
          .ok());
}

}  // namespace
}  // namespace kvkeep::testing
