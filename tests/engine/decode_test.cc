// Decoding N tokens one step at a time after a prefill gives the logits of prefilling the
// whole sequence at once, for fp32 KV and (loosely) bf16 KV, and with several sequences
// decoding in one batch.
#include <gtest/gtest.h>

#include <random>

#include "tests/engine/engine_fixture.h"

namespace kvkeep::enginetest {
namespace {

using DecodeTest = TinyModelTest;

TEST_F(DecodeTest, StepwiseDecodeMatchesFullPrefill) {
  const int kBs = 16, kPrompt = 45, kDecode = 30, kTotal = kPrompt + kDecode;
  std::vector<int32_t> tokens = RandomTokens(rng_, kTotal);
  std::vector<int32_t> blocks = {3, 0, 4, 1, 2};
  std::vector<int32_t> full_blocks = Iota(5, 5);
  auto backend = MakeBackend(*model_->weights, 10, kBs);
  ASSERT_NE(backend, nullptr);
  std::vector<float> full =
      RunBatch(backend.get(), MakeBatch({{&tokens, &full_blocks, 0, kTotal}}, kBs, true));
  const int32_t vocab = model_->config.vocab_size;
  std::vector<float> stepwise =
      RunBatch(backend.get(), MakeBatch({{&tokens, &blocks, 0, kPrompt}}, kBs, true));
  for (int p = kPrompt; p < kTotal; ++p) {
    std::vector<float> row =
        RunBatch(backend.get(), MakeBatch({{&tokens, &blocks, p, p + 1}}, kBs, false));
    ASSERT_EQ(row.size(), static_cast<size_t>(vocab));
    stepwise.insert(stepwise.end(), row.begin(), row.end());
  }
  EXPECT_LT(RelDiff(stepwise, full), 1e-5);
}

TEST_F(DecodeTest, BatchedDecodeMatchesSingleSequenceDecode) {
  const int kBs = 8;
  std::vector<int32_t> a = RandomTokens(rng_, 20), b = RandomTokens(rng_, 33);
  std::vector<int32_t> a_blocks = {0, 1, 2}, b_blocks = {3, 4, 5, 6, 7};
  std::vector<int32_t> a2 = {8, 9, 10}, b2 = {11, 12, 13, 14, 15};
  auto backend = MakeBackend(*model_->weights, 16, kBs);
  ASSERT_NE(backend, nullptr);
  RunBatch(backend.get(), MakeBatch({{&a, &a_blocks, 0, 19}, {&b, &b_blocks, 0, 32}}, kBs, false));
  RunBatch(backend.get(), MakeBatch({{&a, &a2, 0, 19}}, kBs, false));
  RunBatch(backend.get(), MakeBatch({{&b, &b2, 0, 32}}, kBs, false));
  std::vector<float> batched = RunBatch(
      backend.get(), MakeBatch({{&a, &a_blocks, 19, 20}, {&b, &b_blocks, 32, 33}}, kBs, false));
  std::vector<float> sa = RunBatch(backend.get(), MakeBatch({{&a, &a2, 19, 20}}, kBs, false));
  std::vector<float> sb = RunBatch(backend.get(), MakeBatch({{&b, &b2, 32, 33}}, kBs, false));
  sa.insert(sa.end(), sb.begin(), sb.end());
  EXPECT_LT(RelDiff(batched, sa), 1e-5);
}

TEST_F(DecodeTest, Bf16KvDecodeTracksFp32) {
  const int kBs = 16, kTotal = 60;
  std::vector<int32_t> tokens = RandomTokens(rng_, kTotal);
  std::vector<int32_t> blocks = Iota(4);
  auto f32 = MakeBackend(*model_->weights, 4, kBs, KvDType::kF32);
  auto b16 = MakeBackend(*model_->weights, 4, kBs, KvDType::kBF16);
  ASSERT_TRUE(f32 && b16);
  std::vector<float> want =
      RunBatch(f32.get(), MakeBatch({{&tokens, &blocks, 0, kTotal}}, kBs, false));
  RunBatch(b16.get(), MakeBatch({{&tokens, &blocks, 0, kTotal - 1}}, kBs, false));
  std::vector<float> got =
      RunBatch(b16.get(), MakeBatch({{&tokens, &blocks, kTotal - 1, kTotal}}, kBs, false));
  EXPECT_LT(RelDiff(got, want), 3e-2);
}

}  // namespace
}  // namespace kvkeep::enginetest
