// The CUDA backend's compressed-cache hooks against the CPU reference (issue 13):
// ForwardScored (cuda::AttentionScores after each layer's KV write) against the CPU
// backend's scores on the same model and tokens; CompactKvLayers against the CPU
// compaction on identical bf16 pools (a move is exact, so bytes must match); and an
// EpisodeCompressor build on CUDA against the CPU build (the same kept sets up to
// near-ties of bf16 scores), then decoding on the CUDA cache against the CPU decoding
// the same bytes; and the fidelity evaluation's teacher-forced rows on a compressed cache.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <random>
#include <set>
#include <vector>

#include "base/file.h"
#include "engine/backend.h"
#include "engine/cuda/cuda_backend.h"
#include "engine/episode_cache.h"
#include "engine/model_weights.h"
#include "engine/synthetic_model.h"
#include "tests/cuda/cpu_gpu_backends.h"
#include "tests/cuda/cuda_test_util.h"
#include "tests/testlib/test_util.h"

namespace kvkeep::testing {
namespace {

constexpr int kBs = 16;
constexpr int kBlocks = 40;

using Backends = CpuGpuBackends;

// The same bf16 weights on both; the CPU pool in kv_dtype.
std::unique_ptr<Backends> MakeBackends(uint64_t seed, KvDType cpu_kv) {
  return MakeCpuGpuBackends(seed, cpu_kv, kBlocks, kBs);
}

ForwardBatch Prefill(const std::vector<int32_t>& tokens, int32_t start, int32_t end,
                     const std::vector<int32_t>& blocks) {
  ForwardBatch b;
  for (int32_t p = start; p < end; ++p) {
    b.token_ids.push_back(tokens[p]);
    b.positions.push_back(p);
    b.slot_mapping.push_back(blocks[p / kBs] * kBs + p % kBs);
  }
  b.q_start = {0, end - start};
  b.kv_len = {end};
  b.block_tables = blocks;
  b.max_blocks_per_seq = static_cast<int32_t>(blocks.size());
  b.logit_rows = {end - start - 1};
  return b;
}

std::vector<int32_t> Shuffled(std::mt19937_64& rng, int n) {
  std::vector<int32_t> v(n);
  std::iota(v.begin(), v.end(), 0);
  std::shuffle(v.begin(), v.end(), rng);
  return v;
}

TEST(CudaEpisodeTest, ForwardScoredMatchesCpu) {
  GpuArena probe;
  KVKEEP_REQUIRE_GPU(probe);
  std::mt19937_64 rng(TestSeed());
  auto b = MakeBackends(TestSeed(), KvDType::kF32);
  ASSERT_NE(b, nullptr);
  const ModelConfig& c = b->cpu->config();
  const int n = 150, q = 12;
  std::vector<int32_t> tokens(n + q);
  for (int32_t& t : tokens) t = static_cast<int32_t>(rng() % 256);
  std::vector<int32_t> blocks = Shuffled(rng, kBlocks);
  std::vector<float> logits, want, got;
  for (Backend* be : {b->cpu.get(), b->gpu.get()}) {
    ASSERT_TRUE(be->Forward(Prefill(tokens, 0, n, blocks), &logits).ok());
  }
  ASSERT_TRUE(b->cpu->ForwardScored(Prefill(tokens, n, n + q, blocks), n, &logits, &want).ok());
  ASSERT_TRUE(b->gpu->ForwardScored(Prefill(tokens, n, n + q, blocks), n, &logits, &got).ok());
  ASSERT_EQ(got.size(), size_t(c.num_layers) * c.num_kv_heads * n);
  ASSERT_EQ(got.size(), want.size());
  double max_diff = 0, max_score = 0;
  for (size_t i = 0; i < got.size(); ++i) {
    max_diff = std::max(max_diff, double(std::fabs(got[i] - want[i])));
    max_score = std::max(max_score, double(want[i]));
  }
  EXPECT_LT(max_diff, 0.03 * max_score) << "bf16 activations through every layer";
  EXPECT_GT(max_score, 0.05);
  // Scoring past the context is refused, as on the CPU.
  EXPECT_EQ(
      b->gpu->ForwardScored(Prefill(tokens, n, n + q, blocks), n + q + 1, &logits, &got).code(),
      StatusCode::kInvalidArgument);
}

TEST(CudaEpisodeTest, CompactKvLayersMovesTheSameBytesAsCpu) {
  GpuArena probe;
  KVKEEP_REQUIRE_GPU(probe);
  std::mt19937_64 rng(TestSeed());
  auto b = MakeBackends(TestSeed(), KvDType::kBF16);  // identical pool layouts
  ASSERT_NE(b, nullptr);
  ASSERT_EQ(b->cpu->block_bytes(), b->gpu->block_bytes());
  const KvPoolShape& s = b->cpu->kv_shape();
  std::vector<uint8_t> raw(b->cpu->block_bytes());
  for (int32_t id = 0; id < kBlocks; ++id) {
    for (uint8_t& x : raw) x = static_cast<uint8_t>(rng());
    ASSERT_TRUE(b->cpu->WriteBlock(id, raw.data()).ok());
    ASSERT_TRUE(b->gpu->WriteBlock(id, raw.data()).ok());
  }
  std::vector<int32_t> blocks = Shuffled(rng, 12);  // 192 entries
  std::vector<int32_t> entries, kept, keep;
  for (int l = 0; l < s.num_layers; ++l) {
    entries.push_back(150 + 10 * l);
    kept.push_back(30 + 7 * l);
    for (int h = 0; h < s.num_kv_heads; ++h) {
      std::vector<int32_t> all = Shuffled(rng, entries[l]);
      all.resize(kept[l]);
      std::sort(all.begin(), all.end());
      keep.insert(keep.end(), all.begin(), all.end());
    }
  }
  ASSERT_TRUE(b->cpu->CompactKvLayers(blocks, entries, keep, kept).ok());
  ASSERT_TRUE(b->gpu->CompactKvLayers(blocks, entries, keep, kept).ok());
  std::vector<uint8_t> a(raw.size()), g(raw.size());
  for (int32_t id = 0; id < kBlocks; ++id) {
    ASSERT_TRUE(b->cpu->ReadBlock(id, a.data()).ok());
    ASSERT_TRUE(b->gpu->ReadBlock(id, g.data()).ok());
    ASSERT_EQ(a, g) << "block " << id;
  }
  // Bad lists are refused before anything moves.
  keep[1] = keep[0];
  EXPECT_EQ(b->gpu->CompactKvLayers(blocks, entries, keep, kept).code(),
            StatusCode::kInvalidArgument);
}

TEST(CudaEpisodeTest, CompressorBuildMatchesCpuUpToTies) {
  GpuArena probe;
  KVKEEP_REQUIRE_GPU(probe);
  std::mt19937_64 rng(TestSeed());
  // Both pools bf16, so the scores differ only by the order of accumulation.
  auto b = MakeBackends(TestSeed(), KvDType::kBF16);
  ASSERT_NE(b, nullptr);
  const ModelConfig& c = b->cpu->config();
  std::vector<int32_t> history(300), prompt(14);
  for (int32_t& t : history) t = static_cast<int32_t>(rng() % 256);
  for (int32_t& t : prompt) t = static_cast<int32_t>(rng() % 256);
  CompressOptions o{.budget_tokens = 60, .block_tokens = 96};
  const int32_t needed = CompressBlocksNeeded(o, 14, kBs);
  ASSERT_LE(needed, kBlocks);
  std::vector<int32_t> blocks(needed);
  std::iota(blocks.begin(), blocks.end(), 0);
  EpisodeCompressor on_cpu(b->cpu.get()), on_gpu(b->gpu.get());
  auto want = on_cpu.Build(history, prompt, o, blocks);
  auto got = on_gpu.Build(history, prompt, o, blocks);
  ASSERT_TRUE(want.ok()) << want.status().ToString();
  ASSERT_TRUE(got.ok()) << got.status().ToString();
  ASSERT_EQ(got->num_kept, 60);
  ASSERT_EQ(got->positions.size(), want->positions.size());
  // Overlap of each (layer, head)'s kept set; later blocks compound early flips, so the
  // bar is on the mean.
  double overlap = 0;
  const int rows = c.num_layers * c.num_kv_heads;
  for (int r = 0; r < rows; ++r) {
    std::set<int32_t> a(want->positions.begin() + r * 60, want->positions.begin() + (r + 1) * 60);
    int common = 0;
    for (int i = 0; i < 60; ++i) common += a.count(got->positions[r * 60 + i]);
    overlap += common / 60.0 / rows;
  }
  EXPECT_GT(overlap, 0.9) << "a random 60 of 300 would share a fifth";
  // Decoding on top of the GPU's cache: the CPU reference decodes the same bytes (copied
  // into its pool, same layout) at the same positions, so a flipped near-tie above cannot
  // move the logits; they agree within bf16 tolerance.
  std::vector<uint8_t> bytes(b->gpu->block_bytes());
  for (int32_t id : got->blocks) {
    ASSERT_TRUE(b->gpu->ReadBlock(id, bytes.data()).ok());
    ASSERT_TRUE(b->cpu->WriteBlock(id, bytes.data()).ok());
  }
  std::vector<int32_t> message = {5, 9, 200, 17};
  std::vector<float> lc, lg;
  EpisodeDecoder dc(b->cpu.get(), *got), dg(b->gpu.get(), *got);
  ASSERT_TRUE(dc.Append(message, true, &lc).ok());
  ASSERT_TRUE(dg.Append(message, true, &lg).ok());
  double diff = 0, peak = 0;
  for (size_t i = 0; i < lc.size(); ++i) {
    diff = std::max(diff, double(std::fabs(lc[i] - lg[i])));
    peak = std::max(peak, double(std::fabs(lc[i])));
  }
  EXPECT_LT(diff, 0.05 * peak);
}

// The fidelity evaluation's scoring (kvkeep eval-episodes --fidelity --device cuda): a
// StreamingLLM cache (its kept set does not depend on scores, so both backends keep the
// same entries) built on each backend, then a question and answer teacher-forced on top
// with every row's logits. Each row's logits, and the answer's NLL per token, agree with
// the CPU's within bf16 tolerance.
TEST(CudaEpisodeTest, TeacherForcedRowsOnACompressedCacheMatchCpu) {
  GpuArena probe;
  KVKEEP_REQUIRE_GPU(probe);
  std::mt19937_64 rng(TestSeed());
  auto b = MakeBackends(TestSeed(), KvDType::kBF16);
  ASSERT_NE(b, nullptr);
  const int32_t vocab = b->cpu->config().vocab_size;
  std::vector<int32_t> history(330), forced(23);
  for (int32_t& t : history) t = static_cast<int32_t>(rng() % 256);
  for (int32_t& t : forced) t = static_cast<int32_t>(rng() % 256);
  CompressOptions o{.budget_tokens = 80, .block_tokens = 128, .method = KeepMethod::kStreaming};
  std::vector<int32_t> blocks(CompressBlocksNeeded(o, 0, kBs) + 2);  // room for the question
  ASSERT_LE(blocks.size(), size_t(kBlocks));
  std::iota(blocks.begin(), blocks.end(), 0);
  EpisodeCompressor on_cpu(b->cpu.get()), on_gpu(b->gpu.get());
  auto want = on_cpu.Build(history, {}, o, blocks);
  auto got = on_gpu.Build(history, {}, o, blocks);
  ASSERT_TRUE(want.ok()) << want.status().ToString();
  ASSERT_TRUE(got.ok()) << got.status().ToString();
  ASSERT_EQ(got->num_kept, 80);
  ASSERT_EQ(got->positions, want->positions);
  EXPECT_EQ(on_gpu.forwarded_tokens(), on_cpu.forwarded_tokens());
  std::vector<float> lc, lg;
  EpisodeDecoder dc(b->cpu.get(), *want), dg(b->gpu.get(), *got);
  ASSERT_TRUE(dc.Append(forced, /*last_only=*/false, &lc).ok());
  ASSERT_TRUE(dg.Append(forced, /*last_only=*/false, &lg).ok());
  ASSERT_EQ(lc.size(), forced.size() * vocab);
  ASSERT_EQ(lg.size(), lc.size());
  auto nll = [vocab](const std::vector<float>& logits, size_t row, int32_t target) {
    const float* r = logits.data() + row * vocab;
    const float m = *std::max_element(r, r + vocab);
    double sum = 0;
    for (int32_t v = 0; v < vocab; ++v) sum += std::exp(double{r[v]} - m);
    return m + std::log(sum) - r[target];
  };
  double nll_cpu = 0, nll_gpu = 0;
  for (size_t row = 0; row < forced.size(); ++row) {
    SCOPED_TRACE(row);
    double diff = 0, peak = 0;
    for (int32_t v = 0; v < vocab; ++v) {
      const size_t i = row * vocab + v;
      diff = std::max(diff, double(std::fabs(lc[i] - lg[i])));
      peak = std::max(peak, double(std::fabs(lc[i])));
    }
    EXPECT_LT(diff, 0.05 * peak);
    if (row + 1 < forced.size()) {  // the "answer" is the rest of the forced tokens
      nll_cpu += nll(lc, row, forced[row + 1]);
      nll_gpu += nll(lg, row, forced[row + 1]);
    }
  }
  EXPECT_NEAR(nll_gpu, nll_cpu, 0.02 * nll_cpu);
  // Reset: the same question again on the unchanged cache gives the same rows.
  dg.Reset();
  std::vector<float> again;
  ASSERT_TRUE(dg.Append(forced, /*last_only=*/false, &again).ok());
  ASSERT_EQ(again.size(), lg.size());
  double drift = 0;
  for (size_t i = 0; i < lg.size(); ++i)
    drift = std::max(drift, double(std::fabs(again[i] - lg[i])));
  EXPECT_LT(drift, 1e-3);
}

}  // namespace
}  // namespace kvkeep::testing
