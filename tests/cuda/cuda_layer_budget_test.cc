// Per-layer budgets on the CUDA backend (issue 13, ForwardBatch::layer_kv_trim) against
// the CPU backend doing the same trimmed forward. Both start from identical restored KV
// (a CPU prefill's bf16 blocks copied into the GPU pool); then a prefill and a decode step
// on top, each layer with its own trim: the logits agree within bf16 tolerance, every
// layer's new K/V land at that layer's own entries (kv_len - trim - n_new ..) and agree
// with the CPU's there, the entries a trim skips keep their bytes, and ForwardScored
// scores each layer's own entries (zeros past them) as on the CPU. Finally a whole
// EpisodeCompressor build with per-layer budgets on CUDA against the CPU build.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <numeric>
#include <random>
#include <set>
#include <vector>

#include "base/bf16.h"
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

// The same bf16 weights on both; both pools bf16, so their bytes are comparable.
std::unique_ptr<Backends> MakeBackends(uint64_t seed) {
  return MakeCpuGpuBackends(seed, KvDType::kBF16, kBlocks, kBs);
}

// tokens[start, end) at KV entries entry.. and positions first_position.., over the first
// entry + (end - start) entries of blocks; trims per layer (empty: none).
ForwardBatch Batch(const std::vector<int32_t>& tokens, int32_t start, int32_t end, int32_t entry,
                   int32_t first_position, const std::vector<int32_t>& blocks,
                   const std::vector<int32_t>& trims) {
  ForwardBatch b;
  for (int32_t p = start; p < end; ++p) {
    const int32_t e = entry + (p - start);
    b.token_ids.push_back(tokens[p]);
    b.positions.push_back(first_position + (p - start));
    b.slot_mapping.push_back(blocks[e / kBs] * kBs + e % kBs);
  }
  b.q_start = {0, end - start};
  b.kv_len = {entry + end - start};
  b.block_tables = blocks;
  b.max_blocks_per_seq = static_cast<int32_t>(blocks.size());
  b.logit_rows = {end - start - 1};
  b.layer_kv_trim = trims;
  return b;
}

// max |a - b| / max |b|.
double RelErr(const std::vector<float>& a, const std::vector<float>& b) {
  double diff = 0, peak = 1e-9;
  for (size_t i = 0; i < a.size() && i < b.size(); ++i) {
    diff = std::max(diff, double(std::fabs(a[i] - b[i])));
    peak = std::max(peak, double(std::fabs(b[i])));
  }
  return a.size() == b.size() ? diff / peak : INFINITY;
}

// K (kv 0) or V (kv 1) of entry e, layer l, KV head h, from a pool's block bytes.
std::vector<float> Entry(Backend* be, const std::vector<int32_t>& blocks, int32_t e, int l, int h,
                         int kv) {
  const KvPoolShape& s = be->kv_shape();
  std::vector<uint8_t> raw(be->block_bytes());
  EXPECT_TRUE(be->ReadBlock(blocks[e / kBs], raw.data()).ok());
  const bf16* p = reinterpret_cast<const bf16*>(raw.data()) + l * s.layer_stride() +
                  kv * s.kv_stride() + (int64_t{h} * kBs + e % kBs) * s.head_dim;
  std::vector<float> out(s.head_dim);
  for (int d = 0; d < s.head_dim; ++d) out[d] = Bf16ToFloat(p[d]);
  return out;
}

void CopyBlocks(Backend* from, Backend* to, const std::vector<int32_t>& blocks) {
  std::vector<uint8_t> raw(from->block_bytes());
  for (int32_t id : blocks) {
    ASSERT_TRUE(from->ReadBlock(id, raw.data()).ok());
    ASSERT_TRUE(to->WriteBlock(id, raw.data()).ok());
  }
}

TEST(CudaLayerBudgetTest, TrimmedForwardMatchesCpu) {
  GpuArena probe;
  KVKEEP_REQUIRE_GPU(probe);
  std::mt19937_64 rng(TestSeed());
  auto b = MakeBackends(TestSeed());
  ASSERT_NE(b, nullptr);
  const ModelConfig& c = b->cpu->config();
  const KvPoolShape& s = b->cpu->kv_shape();
  const int32_t restored = 120, n_new = 13;
  std::vector<int32_t> tokens(restored + n_new + 1);
  for (int32_t& t : tokens) t = static_cast<int32_t>(rng() % 256);
  std::vector<int32_t> blocks(10);  // 160 entries, shuffled ids
  std::vector<int32_t> all(kBlocks);
  std::iota(all.begin(), all.end(), 0);
  std::shuffle(all.begin(), all.end(), rng);
  std::copy_n(all.begin(), blocks.size(), blocks.begin());
  // The restored entries: a CPU prefill, copied byte for byte into the GPU pool.
  std::vector<float> logits;
  ASSERT_TRUE(b->cpu->Forward(Batch(tokens, 0, restored, 0, 0, blocks, {}), &logits).ok());
  CopyBlocks(b->cpu.get(), b->gpu.get(), blocks);
  // Each layer its own trim (layer 0 none); positions continue a longer history.
  std::vector<int32_t> trims(c.num_layers);
  for (int l = 0; l < c.num_layers; ++l) trims[l] = (l * 37) % (restored / 2);
  const int32_t first_position = 900;
  std::vector<float> want, got;
  ForwardBatch prefill =
      Batch(tokens, restored, restored + n_new, restored, first_position, blocks, trims);
  ASSERT_TRUE(b->cpu->Forward(prefill, &want).ok());
  ASSERT_TRUE(b->gpu->Forward(prefill, &got).ok());
  EXPECT_LT(RelErr(got, want), 0.05) << "bf16 activations through every layer";
  // Layer l's new entries sit at restored - trim_l + j on both, and agree there.
  double worst = 0;
  for (int l = 0; l < c.num_layers; ++l) {
    for (int h = 0; h < s.num_kv_heads; ++h) {
      for (int kv = 0; kv < 2; ++kv) {
        for (int32_t j = 0; j < n_new; ++j) {
          const int32_t e = restored - trims[l] + j;
          worst = std::max(worst, RelErr(Entry(b->gpu.get(), blocks, e, l, h, kv),
                                         Entry(b->cpu.get(), blocks, e, l, h, kv)));
        }
      }
    }
  }
  EXPECT_LT(worst, 0.1);
  // Entries a trim skipped past the new ones keep the restored bytes on the GPU.
  for (int l = 0; l < c.num_layers; ++l) {
    for (int32_t e = restored - trims[l] + n_new; e < restored; ++e) {
      EXPECT_EQ(Entry(b->gpu.get(), blocks, e, l, 0, 0), Entry(b->cpu.get(), blocks, e, l, 0, 0))
          << "layer " << l << " entry " << e;
    }
  }
  // One decode step on top (the GPU's decode path, without graphs under trims).
  ForwardBatch decode = Batch(tokens, restored + n_new, restored + n_new + 1, restored + n_new,
                              first_position + n_new, blocks, trims);
  ASSERT_TRUE(b->cpu->Forward(decode, &want).ok());
  ASSERT_TRUE(b->gpu->Forward(decode, &got).ok());
  EXPECT_LT(RelErr(got, want), 0.05);
  // Scoring: each layer scores its own first num_scored - trim entries, zeros past them.
  CopyBlocks(b->cpu.get(), b->gpu.get(), blocks);  // the same bytes again on both
  const int32_t scored = restored;
  std::vector<float> ws, gs;
  ForwardBatch query = Batch(tokens, 0, 9, restored, first_position, blocks, trims);
  ASSERT_TRUE(b->cpu->ForwardScored(query, scored, &want, &ws).ok());
  ASSERT_TRUE(b->gpu->ForwardScored(query, scored, &got, &gs).ok());
  ASSERT_EQ(gs.size(), ws.size());
  double diff = 0, peak = 0;
  for (int l = 0; l < c.num_layers; ++l) {
    for (int h = 0; h < s.num_kv_heads; ++h) {
      const size_t row = (size_t(l) * s.num_kv_heads + h) * scored;
      for (int32_t j = 0; j < scored; ++j) {
        if (j >= scored - trims[l]) {
          EXPECT_EQ(gs[row + j], 0.0f) << "layer " << l << " entry " << j;
          continue;
        }
        diff = std::max(diff, double(std::fabs(gs[row + j] - ws[row + j])));
        peak = std::max(peak, double(ws[row + j]));
      }
    }
  }
  EXPECT_GT(peak, 0.02);
  EXPECT_LT(diff, 0.03 * peak);
  // A trim past num_scored is refused.
  std::vector<int32_t> bad = trims;
  bad.back() = restored;
  EXPECT_FALSE(
      b->gpu->ForwardScored(Batch(tokens, 0, 9, restored, 0, blocks, bad), 10, &got, &gs).ok());
}

TEST(CudaLayerBudgetTest, PerLayerBudgetBuildMatchesCpuUpToTies) {
  GpuArena probe;
  KVKEEP_REQUIRE_GPU(probe);
  std::mt19937_64 rng(TestSeed());
  auto b = MakeBackends(TestSeed());
  ASSERT_NE(b, nullptr);
  const ModelConfig& c = b->cpu->config();
  std::vector<int32_t> history(300), prompt(14);
  for (int32_t& t : history) t = static_cast<int32_t>(rng() % 256);
  for (int32_t& t : prompt) t = static_cast<int32_t>(rng() % 256);
  CompressOptions o{.budget_tokens = 60, .block_tokens = 96};
  for (int l = 0; l < c.num_layers; ++l) o.layer_budget_tokens.push_back(30 + 20 * (l % 3));
  const int32_t needed = CompressBlocksNeeded(o, 14, kBs);
  ASSERT_LE(needed, kBlocks);
  std::vector<int32_t> blocks(needed);
  std::iota(blocks.begin(), blocks.end(), 0);
  EpisodeCompressor on_cpu(b->cpu.get()), on_gpu(b->gpu.get());
  auto want = on_cpu.Build(history, prompt, o, blocks);
  auto got = on_gpu.Build(history, prompt, o, blocks);
  ASSERT_TRUE(want.ok()) << want.status().ToString();
  ASSERT_TRUE(got.ok()) << got.status().ToString();
  ASSERT_EQ(got->layer_kept, want->layer_kept);
  ASSERT_EQ(got->positions.size(), want->positions.size());
  double overlap = 0;
  int rows = 0;
  for (int l = 0; l < c.num_layers; ++l) {
    for (int h = 0; h < c.num_kv_heads; ++h, ++rows) {
      std::span<const int32_t> a = want->PositionsOf(l, h, c.num_kv_heads);
      std::span<const int32_t> g = got->PositionsOf(l, h, c.num_kv_heads);
      std::set<int32_t> in_a(a.begin(), a.end());
      int common = 0;
      for (int32_t p : g) common += in_a.count(p);
      overlap += double(common) / a.size();
    }
  }
  EXPECT_GT(overlap / rows, 0.85) << "a random M_l of 300 would share a tenth to a third";
  // Decoding on top of the GPU's cache against the CPU decoding the same bytes.
  CopyBlocks(b->gpu.get(), b->cpu.get(), got->blocks);
  std::vector<int32_t> message = {5, 9, 200, 17};
  std::vector<float> lc, lg;
  EpisodeDecoder dc(b->cpu.get(), *got), dg(b->gpu.get(), *got);
  ASSERT_TRUE(dc.Append(message, true, &lc).ok());
  ASSERT_TRUE(dg.Append(message, true, &lg).ok());
  EXPECT_LT(RelErr(lg, lc), 0.05);
}

}  // namespace
}  // namespace kvkeep::testing
