// Block-wise (chunked) prefill gives the logits of a one-shot prefill, and a step mixing
// one sequence's prefill chunk with another's decode gives the logits of running them
// separately.
#include <gtest/gtest.h>

#include <random>

#include "tests/engine/engine_fixture.h"

namespace kvkeep::enginetest {
namespace {

using ChunkedPrefillTest = testing::TinyModelFixture<::testing::TestWithParam<int>>;

TEST_P(ChunkedPrefillTest, ChunksMatchOneShotPrefill) {
  const int kBs = 16, kChunk = GetParam();
  const int n = 100 + static_cast<int>(rng_() % 101);  // 100..200, crossing blocks
  SCOPED_TRACE("prompt " + std::to_string(n) + " tokens, chunk " + std::to_string(kChunk));
  std::vector<int32_t> tokens = RandomTokens(rng_, n);
  const int num_blocks = (n + kBs - 1) / kBs;
  std::vector<int32_t> blocks = Iota(num_blocks);
  std::vector<int32_t> other_blocks = Iota(num_blocks, num_blocks);

  auto backend = MakeBackend(*model_->weights, 2 * num_blocks, kBs);
  ASSERT_NE(backend, nullptr);
  std::vector<float> one_shot =
      RunBatch(backend.get(), MakeBatch({{&tokens, &blocks, 0, n}}, kBs, true));
  std::vector<float> chunked;
  for (int start = 0; start < n; start += kChunk) {
    const int end = std::min(n, start + kChunk);
    std::vector<float> part =
        RunBatch(backend.get(), MakeBatch({{&tokens, &other_blocks, start, end}}, kBs, true));
    chunked.insert(chunked.end(), part.begin(), part.end());
  }
  EXPECT_LT(RelDiff(chunked, one_shot), 1e-5);
}

INSTANTIATE_TEST_SUITE_P(ChunkSizes, ChunkedPrefillTest, ::testing::Values(1, 7, 16, 64));

TEST_F(ChunkedPrefillTest, MixedPrefillAndDecodeStepMatchesSeparateRuns) {
  const int kBs = 16;
  std::vector<int32_t> a = RandomTokens(rng_, 90);  // prefilling: chunk [40, 90)
  std::vector<int32_t> b = RandomTokens(rng_, 37);  // decoding token 36
  std::vector<int32_t> a_blocks = {0, 1, 2, 3, 4, 5};
  std::vector<int32_t> b_blocks = {8, 7, 6};
  std::vector<int32_t> a2_blocks = {10, 11, 12, 13, 14, 15};
  std::vector<int32_t> b2_blocks = {18, 17, 16};
  auto backend = MakeBackend(*model_->weights, 20, kBs);
  ASSERT_NE(backend, nullptr);
  // Common history: a's first chunk and b's prompt, in both block sets.
  for (const auto* ab : {&a_blocks, &a2_blocks})
    RunBatch(backend.get(), MakeBatch({{&a, ab, 0, 40}}, kBs, false));
  for (const auto* bb : {&b_blocks, &b2_blocks})
    RunBatch(backend.get(), MakeBatch({{&b, bb, 0, 36}}, kBs, false));

  std::vector<float> mixed = RunBatch(
      backend.get(), MakeBatch({{&a, &a_blocks, 40, 90}, {&b, &b_blocks, 36, 37}}, kBs, true));
  std::vector<float> alone_a =
      RunBatch(backend.get(), MakeBatch({{&a, &a2_blocks, 40, 90}}, kBs, true));
  std::vector<float> alone_b =
      RunBatch(backend.get(), MakeBatch({{&b, &b2_blocks, 36, 37}}, kBs, true));
  std::vector<float> separate = alone_a;
  separate.insert(separate.end(), alone_b.begin(), alone_b.end());
  EXPECT_LT(RelDiff(mixed, separate), 1e-5);
}

}  // namespace
}  // namespace kvkeep::enginetest
