// The EpiCache compressor's mechanics on random-weight models (issue 13): the peak-memory
// bound, budget >= history equals full KV, compaction keeps exactly the top-scored entries
// (checked against a reference gather of a full-KV prefill), and positions survive
// compaction (logits over a compacted cache equal a fresh prefill of the same kept tokens
// at their original positions).
#include "engine/episode_cache.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <numeric>
#include <random>

#include "cache/block_pool.h"
#include "engine/model_runner.h"
#include "engine/sequence.h"
#include "tests/engine/engine_fixture.h"

namespace kvkeep::enginetest {
namespace {

constexpr int kBs = 16;

using EpisodeCacheTest = TinyModelTest;

// K (kv = 0) or V (kv = 1) of entry j, layer l, head h, from a pool read block by block.
std::vector<float> ReadEntry(Backend* backend, const std::vector<int32_t>& blocks, int32_t j,
                             int32_t l, int32_t h, int kv) {
  const KvPoolShape& s = backend->kv_shape();
  std::vector<float> block(backend->block_bytes() / sizeof(float));
  EXPECT_TRUE(backend->ReadBlock(blocks[j / kBs], block.data()).ok());
  const int64_t off = l * s.layer_stride() + kv * s.kv_stride() +
                      (int64_t{h} * s.block_size + j % kBs) * s.head_dim;
  return std::vector<float>(block.begin() + off, block.begin() + off + s.head_dim);
}

// One block of n random history tokens compressed to o.budget_tokens under a q-token
// prompt, and the reference: the full KV of history + prompt prefilled into other blocks
// of the same pool and scored independently of the compressor (ForwardScored on a
// hand-built batch). scores: [layer][kv head][n].
struct OneBlockBuild {
  std::unique_ptr<Backend> backend;
  EpisodeCache cache;
  std::vector<int32_t> reference_blocks;
  std::vector<float> scores;
};

void BuildOneBlockWithReference(const TestModel& model, std::mt19937_64* rng, int n, int q,
                                const CompressOptions& o, OneBlockBuild* out) {
  std::vector<int32_t> history = RandomTokens(*rng, n), prompt = RandomTokens(*rng, q);
  const int32_t needed = CompressBlocksNeeded(o, q, kBs);
  out->backend = MakeBackend(*model.weights, 2 * needed, kBs);
  ASSERT_NE(out->backend, nullptr);
  EpisodeCompressor compressor(out->backend.get());
  auto cache = compressor.Build(history, prompt, o, Iota(needed));
  ASSERT_TRUE(cache.ok()) << cache.status().ToString();
  out->cache = *std::move(cache);
  std::vector<int32_t> all = history;
  all.insert(all.end(), prompt.begin(), prompt.end());
  out->reference_blocks = Iota(needed, needed);
  RunBatch(out->backend.get(), MakeBatch({{&all, &out->reference_blocks, 0, n}}, kBs, false));
  std::vector<float> logits;
  ASSERT_TRUE(out->backend
                  ->ForwardScored(MakeBatch({{&all, &out->reference_blocks, n, n + q}}, kBs, false),
                                  n, &logits, &out->scores)
                  .ok());
}

TEST_F(EpisodeCacheTest, PeakStaysWithinBudgetPlusBlockPlusPrompt) {
  std::vector<int32_t> history = RandomTokens(rng_, 333), prompt = RandomTokens(rng_, 21);
  CompressOptions o{.budget_tokens = 64, .block_tokens = 48};
  const int32_t needed = CompressBlocksNeeded(o, 21, kBs);
  // The pool holds exactly the blocks the bound allows: any overrun fails the forward.
  auto backend = MakeBackend(*model_->weights, needed, kBs);
  ASSERT_NE(backend, nullptr);
  EpisodeCompressor compressor(backend.get());
  auto cache = compressor.Build(history, prompt, o, Iota(needed));
  ASSERT_TRUE(cache.ok()) << cache.status().ToString();
  EXPECT_LE(cache->peak_entries, 64 + 48 + 21);
  EXPECT_EQ(cache->peak_entries, 64 + 48 + 21);  // reached once a full block lands on M
  EXPECT_EQ(cache->num_kept, 64);
  EXPECT_EQ(cache->history_tokens, 333);
  // One block fewer than the bound is refused up front.
  EXPECT_FALSE(compressor.Build(history, prompt, o, Iota(needed - 1)).ok());
  EXPECT_FALSE(compressor.Build({}, prompt, o, Iota(needed)).ok());
  EXPECT_FALSE(compressor.Build(history, {}, o, Iota(needed)).ok());
  o.budget_tokens = 0;
  EXPECT_FALSE(compressor.Build(history, prompt, o, Iota(needed)).ok());
}

// Advance(max_tokens) as the engine calls it with what the step's budget leaves: no step
// forwards more than max_tokens (P_e's 21 tokens are scored in runs of 7), NextStepTokens
// says what each uncapped step would run, and the kept entries are the one-shot build's
// (each entry's score is its largest over the runs: every query sees the same context).
TEST_F(EpisodeCacheTest, CappedStepsScoreThePromptInRuns) {
  std::vector<int32_t> history = RandomTokens(rng_, 200), prompt = RandomTokens(rng_, 21);
  CompressOptions o{.budget_tokens = 64, .block_tokens = 48, .method = KeepMethod::kEpisode};
  const int32_t needed = CompressBlocksNeeded(o, 21, kBs);
  auto backend = MakeBackend(*model_->weights, 2 * needed, kBs);
  ASSERT_NE(backend, nullptr);
  EpisodeCompressor one_shot(backend.get());
  auto want = one_shot.Build(history, prompt, o, Iota(needed));
  ASSERT_TRUE(want.ok()) << want.status().ToString();
  EpisodeCompressor capped(backend.get());
  ASSERT_TRUE(capped.Start(history, prompt, o, Iota(needed, needed), {}).ok());
  while (!capped.done()) {
    const int32_t wanted = capped.NextStepTokens();
    const int64_t before = capped.forwarded_tokens();
    ASSERT_TRUE(capped.Advance(7).ok());
    const int64_t ran = capped.forwarded_tokens() - before;
    EXPECT_EQ(ran, std::min(wanted, 7));
  }
  EpisodeCache got = capped.TakeCache();
  // 5 blocks (48 x 4, then 8); the blocks past the first reach M = 64: 4 scorings of 3 runs.
  int32_t steps = 0;
  for (int32_t s = 0; s < 200; s += 48) {
    const int32_t b = std::min(48, 200 - s);
    steps += (b + 6) / 7 + (s + b > 64 ? 3 : 0);
  }
  EXPECT_EQ(capped.steps(), steps);
  EXPECT_EQ(capped.forwarded_tokens(), one_shot.forwarded_tokens());
  EXPECT_EQ(got.peak_entries, want->peak_entries);
  ASSERT_EQ(got.positions.size(), want->positions.size());
  int64_t same = 0;
  for (size_t i = 0; i < got.positions.size(); ++i) same += got.positions[i] == want->positions[i];
  EXPECT_GE(same, static_cast<int64_t>(got.positions.size() * 0.98));
}

// A build run in steps of at most step_tokens (as the engine runs it between other
// sequences' steps) stays within the same peak, takes the steps its blocks and scorings
// need, and keeps the entries the one-shot build keeps: splitting a causal block's
// prefill changes only floating-point rounding, so the kept positions agree except at
// near-ties and the next-token logits agree within f32 tolerance. Every method.
TEST_F(EpisodeCacheTest, SteppedBuildMatchesTheOneShotBuild) {
  std::vector<int32_t> history = RandomTokens(rng_, 333), prompt = RandomTokens(rng_, 21);
  std::vector<int32_t> message = RandomTokens(rng_, 9);
  for (KeepMethod method : {KeepMethod::kEpisode, KeepMethod::kSnapKv, KeepMethod::kStreaming}) {
    SCOPED_TRACE(static_cast<int>(method));
    CompressOptions o{.budget_tokens = 64, .block_tokens = 48, .method = method};
    o.snap_window = 8;
    const int32_t needed = CompressBlocksNeeded(o, 21, kBs);
    auto backend = MakeBackend(*model_->weights, 2 * needed, kBs);  // the bound, twice
    ASSERT_NE(backend, nullptr);
    EpisodeCompressor one_shot(backend.get());
    auto want = one_shot.Build(history, prompt, o, Iota(needed));
    ASSERT_TRUE(want.ok()) << want.status().ToString();
    o.step_tokens = 10;
    EpisodeCompressor stepped(backend.get());
    ASSERT_TRUE(stepped.Start(history, prompt, o, Iota(needed, needed), {}).ok());
    while (!stepped.done()) ASSERT_TRUE(stepped.Advance().ok());
    EpisodeCache got = stepped.TakeCache();
    EXPECT_EQ(got.peak_entries, want->peak_entries);
    EXPECT_EQ(got.num_kept, want->num_kept);
    // 7 blocks of 48 (the last 45): each prefilled in ceil(plain / 10) runs (kSnapKv scores
    // its last 8 in the scoring step), and every block past the first one that reaches
    // M = 64 tokens scored in a step of its own.
    int32_t steps = 0;
    for (int32_t s = 0; s < 333; s += 48) {
      const int32_t b = std::min(48, 333 - s);
      const bool evict = s + b > 64;
      const int32_t plain = evict && method == KeepMethod::kSnapKv ? b - 8 : b;
      steps += (plain + 9) / 10 + (evict ? 1 : 0);
    }
    EXPECT_EQ(stepped.steps(), steps);
    ASSERT_EQ(got.positions.size(), want->positions.size());
    int64_t same = 0;
    for (size_t i = 0; i < got.positions.size(); ++i)
      same += got.positions[i] == want->positions[i];
    EXPECT_GE(same, static_cast<int64_t>(got.positions.size() * 0.98));
    if (method == KeepMethod::kStreaming) {
      EXPECT_EQ(got.positions, want->positions);
    }
    std::vector<float> a, b;
    EpisodeDecoder da(backend.get(), *want), db(backend.get(), got);
    ASSERT_TRUE(da.Append(message, true, &a).ok());
    ASSERT_TRUE(db.Append(message, true, &b).ok());
    if (got.positions == want->positions) {
      EXPECT_LT(RelDiff(b, a), 1e-4);
    }
  }
}

TEST_F(EpisodeCacheTest, BudgetCoveringHistoryEqualsFullKv) {
  const int n = 150, kBlock = 64;
  std::vector<int32_t> history = RandomTokens(rng_, n), prompt = RandomTokens(rng_, 10);
  std::vector<int32_t> message = RandomTokens(rng_, 12);
  CompressOptions o{.budget_tokens = n, .block_tokens = kBlock};
  const int32_t needed = CompressBlocksNeeded(o, 10, kBs);
  auto backend = MakeBackend(*model_->weights, 2 * needed, kBs);
  ASSERT_NE(backend, nullptr);
  EpisodeCompressor compressor(backend.get());
  auto cache = compressor.Build(history, prompt, o, Iota(needed));
  ASSERT_TRUE(cache.ok()) << cache.status().ToString();
  ASSERT_EQ(cache->num_kept, n);
  EpisodeDecoder decoder(backend.get(), *cache);
  std::vector<float> got;
  ASSERT_TRUE(decoder.Append(message, false, &got).ok());

  // Full KV: the same history prefilled in the same chunks, then the message.
  std::vector<int32_t> all = history;
  all.insert(all.end(), message.begin(), message.end());
  std::vector<int32_t> blocks = Iota(needed, needed);
  for (int s = 0; s < n; s += kBlock) {
    RunBatch(backend.get(), MakeBatch({{&all, &blocks, s, std::min(n, s + kBlock)}}, kBs, false));
  }
  ForwardBatch tail = MakeBatch({{&all, &blocks, n, n + 12}}, kBs, true);
  std::vector<float> want = RunBatch(backend.get(), tail);
  EXPECT_EQ(RelDiff(got, want), 0.0);
  // Reset: the cache is reusable for the next message.
  decoder.Reset();
  std::vector<float> again;
  ASSERT_TRUE(decoder.Append(message, false, &again).ok());
  EXPECT_EQ(again, got);
}

TEST_F(EpisodeCacheTest, CompactionKeepsExactlyTheTopScoredEntries) {
  const int n = 120, q = 9, budget = 40;
  OneBlockBuild b;  // the reference's top 40 are chosen here
  ASSERT_NO_FATAL_FAILURE(BuildOneBlockWithReference(
      *model_, &rng_, n, q, CompressOptions{.budget_tokens = budget, .block_tokens = n}, &b));
  Backend* backend = b.backend.get();
  const EpisodeCache* cache = &b.cache;
  const std::vector<int32_t>& blocks = b.reference_blocks;
  const std::vector<float>& scores = b.scores;
  const ModelConfig& c = model_->config;
  int distinct_sets = 0;
  std::vector<int32_t> first_set;
  for (int l = 0; l < c.num_layers; ++l) {
    for (int h = 0; h < c.num_kv_heads; ++h) {
      const float* s = scores.data() + (int64_t{l} * c.num_kv_heads + h) * n;
      std::vector<int32_t> order(n);
      std::iota(order.begin(), order.end(), 0);
      std::stable_sort(order.begin(), order.end(), [s](int a, int b) { return s[a] > s[b]; });
      std::vector<int32_t> want(order.begin(), order.begin() + budget);
      std::sort(want.begin(), want.end());
      std::vector<int32_t> got(cache->positions.begin() + (l * c.num_kv_heads + h) * budget,
                               cache->positions.begin() + (l * c.num_kv_heads + h + 1) * budget);
      ASSERT_EQ(got, want) << "layer " << l << " head " << h;
      if (first_set.empty()) first_set = got;
      distinct_sets += got != first_set;
      for (int i = 0; i < budget; ++i) {  // the reference gather
        for (int kv = 0; kv < 2; ++kv) {
          ASSERT_EQ(ReadEntry(backend, cache->blocks, i, l, h, kv),
                    ReadEntry(backend, blocks, want[i], l, h, kv))
              << "layer " << l << " head " << h << " entry " << i;
        }
      }
    }
  }
  EXPECT_GT(distinct_sets, 0) << "every layer and head kept the same set";
}

// The kept set under the selection knobs, against a reference selection made here from
// independently computed full-KV scores: SnapKV's max-pooling over pool_kernel neighbours,
// then the reserved entries (the last recent_tokens and, with reserve_sinks, the first
// sink_tokens) raised above every score, then the top M with ties to the later entry.
struct KnobCase {
  int32_t recent_tokens;
  bool reserve_sinks;
  int32_t pool_kernel;
};
class EpisodeKnobTest : public TinyModelTest, public ::testing::WithParamInterface<KnobCase> {};

TEST_P(EpisodeKnobTest, KeptSetMatchesAReferenceSelection) {
  const KnobCase k = GetParam();
  const int n = 120, q = 9, budget = 40;
  CompressOptions o{.budget_tokens = budget, .block_tokens = n};  // one block
  o.recent_tokens = k.recent_tokens;
  o.reserve_sinks = k.reserve_sinks;
  o.pool_kernel = k.pool_kernel;
  OneBlockBuild b;
  ASSERT_NO_FATAL_FAILURE(BuildOneBlockWithReference(*model_, &rng_, n, q, o, &b));
  const EpisodeCache* cache = &b.cache;
  const std::vector<float>& scores = b.scores;
  const ModelConfig& c = model_->config;
  const int r = k.pool_kernel / 2, sinks = k.reserve_sinks ? o.sink_tokens : 0;
  int plain_top_differs = 0;
  for (int l = 0; l < c.num_layers; ++l) {
    for (int h = 0; h < c.num_kv_heads; ++h) {
      const float* raw = scores.data() + (int64_t{l} * c.num_kv_heads + h) * n;
      std::vector<double> s(n);
      for (int j = 0; j < n; ++j) {
        s[j] = raw[j];
        for (int i = std::max(0, j - r); i <= std::min(n - 1, j + r); ++i) {
          s[j] = std::max<double>(s[j], raw[i]);
        }
        if (j >= n - k.recent_tokens || j < sinks) s[j] = 10.0;
      }
      auto top = [&](const auto& score) {
        std::vector<int32_t> order(n);
        std::iota(order.begin(), order.end(), 0);
        std::sort(order.begin(), order.end(),
                  [&](int a, int b) { return score[a] != score[b] ? score[a] > score[b] : a > b; });
        std::vector<int32_t> want(order.begin(), order.begin() + budget);
        std::sort(want.begin(), want.end());
        return want;
      };
      const std::vector<int32_t> want = top(s);
      auto got = cache->PositionsOf(l, h, c.num_kv_heads);
      ASSERT_EQ(std::vector<int32_t>(got.begin(), got.end()), want)
          << "layer " << l << " head " << h;
      for (int j = std::max(0, n - k.recent_tokens); j < n; ++j) {
        EXPECT_TRUE(std::binary_search(want.begin(), want.end(), j)) << j;
      }
      plain_top_differs += top(std::vector<float>(raw, raw + n)) != want;
    }
  }
  // The knob changed the selection somewhere: without it the test would fail.
  EXPECT_GT(plain_top_differs, 0);
}

INSTANTIATE_TEST_SUITE_P(Knobs, EpisodeKnobTest,
                         ::testing::Values(KnobCase{16, true, 1}, KnobCase{0, false, 5},
                                           KnobCase{8, true, 7}),
                         [](const ::testing::TestParamInfo<KnobCase>& info) {
                           const KnobCase& k = info.param;
                           return "Recent" + std::to_string(k.recent_tokens) +
                                  (k.reserve_sinks ? "Sinks" : "") + "Pool" +
                                  std::to_string(k.pool_kernel);
                         });

TEST_F(EpisodeCacheTest, KnobsAreValidated) {
  auto backend = MakeBackend(*model_->weights, 64, kBs);
  ASSERT_NE(backend, nullptr);
  EpisodeCompressor compressor(backend.get());
  std::vector<int32_t> history = RandomTokens(rng_, 40), prompt = RandomTokens(rng_, 4);
  for (auto bad : {CompressOptions{.budget_tokens = 8, .block_tokens = 16, .pool_kernel = 4},
                   CompressOptions{.budget_tokens = 8, .block_tokens = 16, .pool_kernel = 0},
                   CompressOptions{.budget_tokens = 8, .block_tokens = 16, .recent_tokens = -1}}) {
    EXPECT_EQ(compressor.Build(history, prompt, bad, Iota(8)).status().code(),
              StatusCode::kInvalidArgument);
  }
}

// With one layer, an entry's K/V depend only on its token and position, so a fresh
// prefill of the kept tokens at their original positions is a dense reference for the
// compacted cache. StreamingLLM's selection keeps the same set in every head.
TEST_F(EpisodeCacheTest, PositionsSurviveCompaction) {
  ModelConfig one_layer = model_->config;
  one_layer.num_layers = 1;
  auto weights = ModelWeights::Load(DefaultEnv(), model_->dir.path(), one_layer);
  ASSERT_TRUE(weights.ok()) << weights.status().ToString();
  const int n = 200, budget = 36;
  std::vector<int32_t> history = RandomTokens(rng_, n), message = RandomTokens(rng_, 7);
  CompressOptions o{.budget_tokens = budget, .block_tokens = 50, .method = KeepMethod::kStreaming};
  const int32_t needed = CompressBlocksNeeded(o, 0, kBs);
  auto backend = MakeBackend(**weights, 2 * needed, kBs);
  ASSERT_NE(backend, nullptr);
  EpisodeCompressor compressor(backend.get());
  auto cache = compressor.Build(history, {}, o, Iota(needed));
  ASSERT_TRUE(cache.ok()) << cache.status().ToString();
  std::vector<int32_t> kept(cache->positions.begin(), cache->positions.begin() + budget);
  for (int r = 1; r < one_layer.num_kv_heads; ++r) {
    ASSERT_TRUE(std::equal(kept.begin(), kept.end(), cache->positions.begin() + r * budget));
  }
  ASSERT_EQ(kept.front(), 0);
  ASSERT_EQ(kept.back(), n - 1);
  EpisodeDecoder decoder(backend.get(), *cache);
  std::vector<float> got;
  ASSERT_TRUE(decoder.Append(message, false, &got).ok());

  // Reference: kept tokens then the message, at positions kept..., n, n+1, ...
  auto reference = [&](int32_t message_start) {
    ForwardBatch b;
    std::vector<int32_t> blocks = Iota(needed, needed);
    for (int i = 0; i < budget + 7; ++i) {
      b.token_ids.push_back(i < budget ? history[kept[i]] : message[i - budget]);
      b.positions.push_back(i < budget ? kept[i] : message_start + i - budget);
      b.slot_mapping.push_back(blocks[i / kBs] * kBs + i % kBs);
      if (i >= budget) b.logit_rows.push_back(i);
    }
    b.q_start = {0, budget + 7};
    b.kv_len = {budget + 7};
    b.block_tables = blocks;
    b.max_blocks_per_seq = needed;
    return RunBatch(backend.get(), b);
  };
  EXPECT_LT(RelDiff(got, reference(n)), 1e-5);
  // The check can fail: renumbering the message after the kept entries changes the logits.
  EXPECT_GT(RelDiff(got, reference(budget)), 1e-3);
}

TEST_F(EpisodeCacheTest, DecoderGeneratesAndRefusesOverflow) {
  std::vector<int32_t> history = RandomTokens(rng_, 90), prompt = RandomTokens(rng_, 5);
  CompressOptions o{.budget_tokens = 32, .block_tokens = 32};
  const int32_t needed = CompressBlocksNeeded(o, 5, kBs);
  auto backend = MakeBackend(*model_->weights, needed, kBs);
  ASSERT_NE(backend, nullptr);
  EpisodeCompressor compressor(backend.get());
  auto cache = compressor.Build(history, prompt, o, Iota(needed));
  ASSERT_TRUE(cache.ok()) << cache.status().ToString();
  EpisodeDecoder decoder(backend.get(), *cache);
  std::vector<int32_t> message = RandomTokens(rng_, 6);
  auto out = decoder.Generate(message, 5, {});
  ASSERT_TRUE(out.ok()) << out.status().ToString();
  EXPECT_EQ(out->size(), 5u);
  EXPECT_EQ(decoder.num_entries(), 32 + 6 + 4);
  // Greedy decode agrees with teacher forcing the generated tokens.
  decoder.Reset();
  std::vector<int32_t> forced = message;
  forced.insert(forced.end(), out->begin(), out->end() - 1);
  std::vector<float> logits;
  ASSERT_TRUE(decoder.Append(forced, false, &logits).ok());
  const int32_t vocab = model_->config.vocab_size;
  for (size_t i = 0; i < out->size(); ++i) {
    const float* row = logits.data() + (message.size() - 1 + i) * vocab;
    EXPECT_EQ(std::max_element(row, row + vocab) - row, (*out)[i]);
  }
  decoder.Reset();
  std::vector<int32_t> too_long = RandomTokens(rng_, needed * kBs);
  EXPECT_EQ(decoder.Append(too_long, true, &logits).code(), StatusCode::kResourceExhausted);
}

TEST_F(EpisodeCacheTest, BackendRejectsBadScoringAndCompaction) {
  auto backend = MakeBackend(*model_->weights, 8, kBs);
  ASSERT_NE(backend, nullptr);
  std::vector<int32_t> a = RandomTokens(rng_, 20), b = RandomTokens(rng_, 20);
  std::vector<int32_t> blocks_a = {0, 1}, blocks_b = {2, 3};
  std::vector<float> logits, scores;
  ForwardBatch two = MakeBatch({{&a, &blocks_a, 0, 20}, {&b, &blocks_b, 0, 20}}, kBs, false);
  EXPECT_EQ(backend->ForwardScored(two, 5, &logits, &scores).code(), StatusCode::kInvalidArgument);
  ForwardBatch one = MakeBatch({{&a, &blocks_a, 0, 20}}, kBs, false);
  EXPECT_EQ(backend->ForwardScored(one, 21, &logits, &scores).code(), StatusCode::kInvalidArgument);
  ASSERT_TRUE(backend->ForwardScored(one, 20, &logits, &scores).ok());
  const ModelConfig& c = model_->config;
  EXPECT_EQ(scores.size(), size_t(c.num_layers) * c.num_kv_heads * 20);
  const int rows = c.num_layers * c.num_kv_heads;
  std::vector<int32_t> keep(rows * 2, 0);
  for (int r = 0; r < rows; ++r) keep[2 * r + 1] = 3;
  EXPECT_TRUE(backend->CompactKv(blocks_a, 20, keep, 2).ok());
  EXPECT_FALSE(backend->CompactKv(blocks_a, 20, std::vector<int32_t>(3, 0), 2).ok());  // size
  EXPECT_FALSE(backend->CompactKv(std::vector<int32_t>{0}, 20, keep, 2).ok());      // short table
  EXPECT_FALSE(backend->CompactKv(std::vector<int32_t>{0, 99}, 20, keep, 2).ok());  // bad id
  keep[1] = 0;  // not increasing
  EXPECT_FALSE(backend->CompactKv(blocks_a, 20, keep, 2).ok());
}
}  // namespace
}  // namespace kvkeep::enginetest

namespace kvkeep::enginetest {
namespace {

// The engine takes a sequence's positions from its KvView: the identity for full KV, the
// history's numbering for a sequence decoding on top of a compressed cache.
TEST(KvViewTest, ForwardBatchTakesPositionsFromTheView) {
  GenerateRequest req;
  req.prompt = {1, 2, 3, 4, 5, 6};
  for (KvView view : {KvView{}, KvView{4, 1000}}) {
    Sequence seq(req, 4, HashScope{}, {}, nullptr);
    seq.kv_view = view;
    BlockPool pool(BlockPoolOptions{.num_blocks = 8, .block_size = 4});
    std::vector<BlockCopy> copies;
    ASSERT_TRUE(pool.PrepareAppend(&seq.table, 6, &copies).ok());
    seq.table.AdvanceTokens(4);  // 4 computed (restored) entries, 2 pending
    ScheduledBatch batch;
    batch.seqs.push_back(ScheduledSeq{&seq, 2, true});
    ForwardBatch fb;
    BuildForwardBatch(batch, &fb);
    const int32_t first = view.num_restored == 0 ? 4 : 1000;
    EXPECT_EQ(fb.positions, (std::vector<int32_t>{first, first + 1}));
    EXPECT_EQ(fb.slot_mapping, (std::vector<int32_t>{seq.table.Slot(4), seq.table.Slot(5)}));
    EXPECT_EQ(fb.token_ids, (std::vector<int32_t>{5, 6}));
    EXPECT_EQ(fb.kv_len, (std::vector<int32_t>{6}));
  }
}

}  // namespace
}  // namespace kvkeep::enginetest
