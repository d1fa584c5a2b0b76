// Per-layer budgets for episode caches (issue 13 item 6): the budget arithmetic (sum,
// floor, alpha = 0 uniform), the sensitivity profile and its cache file, per-layer context
// lengths (ForwardBatch::layer_kv_trim) against a dense attention over each layer's kept
// tokens at their original positions, and a per-layer build against reference scores.
#include "engine/layer_budget.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <numeric>
#include <random>

#include "cache/block_pool.h"
#include "engine/episode_cache.h"
#include "engine/model_runner.h"
#include "engine/sequence.h"
#include "tests/engine/engine_fixture.h"

namespace kvkeep::enginetest {
namespace {

constexpr int kBs = 16;

TEST(LayerBudgetsTest, SumFloorAndOrder) {
  const std::vector<double> sim = {1.0, 0.9, 0.5, 0.95, 0.7, 0.99};
  for (double alpha : {0.5, 1.0, 2.0, 4.0}) {
    auto m = LayerBudgets(sim, 100, alpha);
    ASSERT_TRUE(m.ok()) << m.status().ToString();
    ASSERT_EQ(m->size(), sim.size());
    EXPECT_EQ(std::accumulate(m->begin(), m->end(), 0), 600) << "alpha " << alpha;
    for (int32_t x : *m) EXPECT_GE(x, 25) << "alpha " << alpha;
    EXPECT_EQ((*m)[0], 25);  // s = 1: no sensitivity, the floor
    // More sensitive (lower s) never gets less.
    for (size_t a = 0; a < sim.size(); ++a) {
      for (size_t b = 0; b < sim.size(); ++b) {
        if (sim[a] < sim[b]) {
          EXPECT_GE((*m)[a], (*m)[b]) << a << " vs " << b;
        }
      }
    }
  }
  // Larger alpha concentrates the budget on the most sensitive layer (index 2).
  EXPECT_GT((*LayerBudgets(sim, 100, 2.0))[2], (*LayerBudgets(sim, 100, 0.5))[2]);
}

TEST(LayerBudgetsTest, AlphaZeroIsUniformAndBadInputIsRefused) {
  const std::vector<double> sim = {1.0, 0.3, 0.8};
  auto m = LayerBudgets(sim, 77, 0.0);
  ASSERT_TRUE(m.ok());
  EXPECT_EQ(*m, std::vector<int32_t>(3, 77));
  EXPECT_EQ(*LayerBudgets(std::vector<double>(4, 1.0), 9, 2.0), std::vector<int32_t>(4, 9));
  EXPECT_FALSE(LayerBudgets({}, 10, 1.0).ok());
  EXPECT_FALSE(LayerBudgets(sim, 0, 1.0).ok());
  EXPECT_FALSE(LayerBudgets(sim, 10, -1.0).ok());
  EXPECT_FALSE(LayerBudgets(sim, 10, 1.0, 1.5).ok());
}

TEST(LayerProfileTest, EncodeDecodeAndCorruption) {
  LayerProfile p{"00ab", 512, 2048, {1.0, 0.123456789012345, -0.5}};
  auto back = DecodeLayerProfile(EncodeLayerProfile(p));
  ASSERT_TRUE(back.ok()) << back.status().ToString();
  EXPECT_EQ(back->model_id, "00ab");
  EXPECT_EQ(back->block_tokens, 512);
  EXPECT_EQ(back->calibration_tokens, 2048);
  EXPECT_EQ(back->similarity, p.similarity);
  EXPECT_EQ(DecodeLayerProfile("kvkeep-layer-profile 2\n").status().code(),
            StatusCode::kCorruption);
  std::string text = EncodeLayerProfile(p);
  EXPECT_FALSE(DecodeLayerProfile(text.substr(0, text.size() - 4)).ok());
  EXPECT_FALSE(DecodeLayerProfile(text + "7\n").ok());
}

class LayerBudgetModelTest : public ::testing::Test {
 protected:
  void SetUp() override {
    model_ = MakeTestModel("tiny");
    ASSERT_NE(model_, nullptr);
    ASSERT_GE(model_->config.num_layers, 2);
    rng_.seed(model_->seed);
  }
  std::unique_ptr<TestModel> model_;
  std::mt19937_64 rng_;
};

TEST_F(LayerBudgetModelTest, ProfileIsMeasuredOnceAndCached) {
  std::vector<int32_t> text = RandomTokens(rng_, 200);
  auto backend = MakeBackend(*model_->weights, 16, kBs);
  ASSERT_NE(backend, nullptr);
  auto p = MeasureLayerSensitivity(backend.get(), text, 64, Iota(16));
  ASSERT_TRUE(p.ok()) << p.status().ToString();
  ASSERT_EQ(static_cast<int>(p->similarity.size()), model_->config.num_layers);
  EXPECT_NEAR(p->similarity[0], 1.0, 1e-6);  // layer 0's keys see no attention
  for (size_t l = 1; l < p->similarity.size(); ++l) {
    EXPECT_LT(p->similarity[l], 1.0 - 1e-6) << "layer " << l;
    EXPECT_GT(p->similarity[l], -1.0) << "layer " << l;
  }
  EXPECT_FALSE(MeasureLayerSensitivity(backend.get(), RandomTokens(rng_, 64), 64, Iota(16)).ok());
  EXPECT_FALSE(MeasureLayerSensitivity(backend.get(), text, 64, Iota(3)).ok());

  testing::TempDir state;
  auto first = LoadOrMeasureLayerProfile(DefaultEnv(), state.path(), "m1", backend.get(), text, 64,
                                         Iota(16));
  ASSERT_TRUE(first.ok()) << first.status().ToString();
  EXPECT_EQ(first->similarity, p->similarity);
  ASSERT_TRUE(DefaultEnv()->FileExists(LayerProfilePath(state.path(), "m1")));
  // A second call reads the file: other calibration tokens give the cached figures.
  std::vector<int32_t> other = RandomTokens(rng_, 200);
  auto cached = LoadOrMeasureLayerProfile(DefaultEnv(), state.path(), "m1", backend.get(), other,
                                          64, Iota(16));
  ASSERT_TRUE(cached.ok());
  EXPECT_EQ(cached->similarity, p->similarity);
  // Another block size, or a damaged file, is measured again.
  auto rebuilt = LoadOrMeasureLayerProfile(DefaultEnv(), state.path(), "m1", backend.get(), other,
                                           32, Iota(16));
  ASSERT_TRUE(rebuilt.ok());
  EXPECT_NE(rebuilt->similarity, p->similarity);
  ASSERT_TRUE(DefaultEnv()->WriteFileAtomic(LayerProfilePath(state.path(), "m1"), "junk").ok());
  auto repaired = LoadOrMeasureLayerProfile(DefaultEnv(), state.path(), "m1", backend.get(), text,
                                            64, Iota(16));
  ASSERT_TRUE(repaired.ok());
  EXPECT_EQ(repaired->similarity, p->similarity);
}

// With one layer an entry's K/V depend only on its token and position, so a fresh prefill
// of the kept tokens is a dense reference. The layer keeps `kept` of `restored` entries (the
// rest hold other tokens' K/V); its new tokens must land after its own kept entries and
// attend to those alone.
TEST_F(LayerBudgetModelTest, TrimmedLayerEqualsDenseAttentionOverItsKeptTokens) {
  ModelConfig one_layer = model_->config;
  one_layer.num_layers = 1;
  auto weights = ModelWeights::Load(DefaultEnv(), model_->dir.path(), one_layer);
  ASSERT_TRUE(weights.ok()) << weights.status().ToString();
  auto backend = MakeBackend(**weights, 16, kBs);
  ASSERT_NE(backend, nullptr);
  const int restored = 40, kept = 23, m = 6;
  std::vector<int32_t> tokens = RandomTokens(rng_, restored), message = RandomTokens(rng_, m);
  std::vector<int32_t> positions(restored);
  std::iota(positions.begin(), positions.end(), 0);
  std::shuffle(positions.begin(), positions.end(), rng_);
  positions.resize(kept);
  std::sort(positions.begin(), positions.end());
  const int next = 100;  // the history's length
  // Entries [0, kept): the kept tokens at their positions; [kept, restored): other tokens.
  std::vector<int32_t> blocks = Iota(4);
  ForwardBatch fill;
  for (int i = 0; i < restored; ++i) {
    fill.token_ids.push_back(tokens[i]);
    fill.positions.push_back(i < kept ? positions[i] : 500 + i);
    fill.slot_mapping.push_back(blocks[i / kBs] * kBs + i % kBs);
  }
  fill.q_start = {0, restored};
  fill.kv_len = {restored};
  fill.block_tables = blocks;
  fill.max_blocks_per_seq = 4;
  // Causality by index makes entry i see entries < i only; a kept entry's K/V depend on
  // its token and position alone (one layer), so the fill is exact for [0, kept).
  RunBatch(backend.get(), fill);
  EpisodeCache cache;
  cache.blocks = blocks;
  cache.num_kept = restored;
  cache.history_tokens = next;
  cache.layer_kept = {kept};
  EpisodeDecoder decoder(backend.get(), cache);
  std::vector<float> got;
  ASSERT_TRUE(decoder.Append(message, false, &got).ok());

  auto reference = [&](int trim) {  // kept tokens then the message in other blocks
    std::vector<int32_t> ref_blocks = Iota(4, 8);
    const int base = restored - trim;
    ForwardBatch b;
    for (int i = 0; i < base + m; ++i) {
      const bool old = i < base;
      b.token_ids.push_back(old ? tokens[i] : message[i - base]);
      b.positions.push_back(old ? (i < kept ? positions[i] : 500 + i) : next + i - base);
      b.slot_mapping.push_back(ref_blocks[i / kBs] * kBs + i % kBs);
      if (!old) b.logit_rows.push_back(i);
    }
    b.q_start = {0, base + m};
    b.kv_len = {base + m};
    b.block_tables = ref_blocks;
    b.max_blocks_per_seq = 4;
    return RunBatch(backend.get(), b);
  };
  EXPECT_LT(RelDiff(got, reference(restored - kept)), 1e-5);
  // The check can fail: attending to all restored entries gives other logits.
  EXPECT_GT(RelDiff(got, reference(0)), 1e-3);
  // Bad trims are refused: a wrong shape, or more than the restored entries.
  std::vector<float> logits;
  fill.layer_kv_trim = {0, 0};
  EXPECT_EQ(backend->Forward(fill, &logits).code(), StatusCode::kInvalidArgument);
  fill.layer_kv_trim = {1};  // the fill restores nothing: every entry is new
  EXPECT_EQ(backend->Forward(fill, &logits).code(), StatusCode::kInvalidArgument);
}

// Several layers: per-layer budgets keep exactly each layer's top M_l (one block, so every
// layer's scores come from the full KV), the peak is max M_l + B + |P_e|, and entries past
// a layer's own count are never read (overwriting them changes nothing).
TEST_F(LayerBudgetModelTest, PerLayerBuildKeepsEachLayersTopAndNeverReadsPastIt) {
  const ModelConfig& c = model_->config;
  const int n = 120, q = 9;
  std::vector<int32_t> history = RandomTokens(rng_, n), prompt = RandomTokens(rng_, q);
  std::vector<int32_t> message = RandomTokens(rng_, 7);
  CompressOptions o{.budget_tokens = 40, .block_tokens = n};
  for (int l = 0; l < c.num_layers; ++l) o.layer_budget_tokens.push_back(20 + 13 * l);
  const int top = o.layer_budget_tokens.back();
  const int32_t needed = CompressBlocksNeeded(o, q, kBs);
  EXPECT_EQ(needed, (top + n + q + kBs - 1) / kBs);
  auto backend = MakeBackend(*model_->weights, 2 * needed, kBs);
  ASSERT_NE(backend, nullptr);
  EpisodeCompressor compressor(backend.get());
  auto cache = compressor.Build(history, prompt, o, Iota(needed));
  ASSERT_TRUE(cache.ok()) << cache.status().ToString();
  EXPECT_EQ(cache->num_kept, top);
  EXPECT_EQ(cache->layer_kept, o.layer_budget_tokens);
  EXPECT_LE(cache->peak_entries, top + n + q);
  EXPECT_EQ(cache->peak_entries, n + q);  // one block: nothing kept before it

  std::vector<int32_t> all = history;
  all.insert(all.end(), prompt.begin(), prompt.end());
  std::vector<int32_t> blocks = Iota(needed, needed);
  RunBatch(backend.get(), MakeBatch({{&all, &blocks, 0, n}}, kBs, false));
  std::vector<float> logits, scores;
  ASSERT_TRUE(
      backend
          ->ForwardScored(MakeBatch({{&all, &blocks, n, n + q}}, kBs, false), n, &logits, &scores)
          .ok());
  for (int l = 0; l < c.num_layers; ++l) {
    for (int h = 0; h < c.num_kv_heads; ++h) {
      const float* s = scores.data() + (int64_t{l} * c.num_kv_heads + h) * n;
      std::vector<int32_t> order(n);
      std::iota(order.begin(), order.end(), 0);
      std::stable_sort(order.begin(), order.end(), [s](int a, int b) { return s[a] > s[b]; });
      std::vector<int32_t> want(order.begin(), order.begin() + o.layer_budget_tokens[l]);
      std::sort(want.begin(), want.end());
      std::span<const int32_t> got = cache->PositionsOf(l, h, c.num_kv_heads);
      ASSERT_EQ(std::vector<int32_t>(got.begin(), got.end()), want) << "layer " << l << " h " << h;
    }
  }

  EpisodeDecoder decoder(backend.get(), *cache);
  std::vector<float> before, after, uniform;
  ASSERT_TRUE(decoder.Append(message, false, &before).ok());
  // Overwrite every layer's entries past its own count with noise.
  const KvPoolShape& s = backend->kv_shape();
  std::uniform_real_distribution<float> noise(-3.0f, 3.0f);
  for (size_t i = 0; i < cache->blocks.size(); ++i) {
    const int32_t b = cache->blocks[i];
    std::vector<float> raw(backend->block_bytes() / sizeof(float));
    ASSERT_TRUE(backend->ReadBlock(b, raw.data()).ok());
    const int first = static_cast<int>(i) * kBs;
    for (int l = 0; l < c.num_layers; ++l) {
      for (int j = std::max(first, cache->KeptIn(l)); j < std::min(first + kBs, top); ++j) {
        for (int kv = 0; kv < 2; ++kv) {
          for (int h = 0; h < c.num_kv_heads; ++h) {
            float* e = raw.data() + l * s.layer_stride() + kv * s.kv_stride() +
                       (int64_t{h} * kBs + j % kBs) * s.head_dim;
            for (int d = 0; d < s.head_dim; ++d) e[d] = noise(rng_);
          }
        }
      }
    }
    ASSERT_TRUE(backend->WriteBlock(b, raw.data()).ok());
  }
  decoder.Reset();
  ASSERT_TRUE(decoder.Append(message, false, &after).ok());
  EXPECT_EQ(after, before);
  // The check can fail: reading every layer to num_kept sees the noise.
  EpisodeCache flat = *cache;
  flat.layer_kept.clear();
  EpisodeDecoder flat_decoder(backend.get(), flat);
  ASSERT_TRUE(flat_decoder.Append(message, false, &uniform).ok());
  EXPECT_GT(RelDiff(uniform, before), 1e-3);
}

// alpha = 0: the per-layer path with the budgets LayerBudgets gives equals the uniform
// build bit for bit, over several blocks and every method.
TEST_F(LayerBudgetModelTest, AlphaZeroEqualsUniformBitForBit) {
  const int n = 180, q = 11;
  std::vector<int32_t> history = RandomTokens(rng_, n), prompt = RandomTokens(rng_, q);
  std::vector<int32_t> message = RandomTokens(rng_, 9);
  std::vector<double> sim(model_->config.num_layers);
  for (size_t l = 0; l < sim.size(); ++l) sim[l] = 1.0 - 0.1 * l;
  for (KeepMethod method : {KeepMethod::kEpisode, KeepMethod::kSnapKv, KeepMethod::kStreaming}) {
    CompressOptions uniform{.budget_tokens = 50, .block_tokens = 64, .method = method};
    CompressOptions layered = uniform;
    auto m = LayerBudgets(sim, 50, 0.0);
    ASSERT_TRUE(m.ok());
    layered.layer_budget_tokens = *m;
    const int32_t needed = CompressBlocksNeeded(uniform, q, kBs);
    ASSERT_EQ(CompressBlocksNeeded(layered, q, kBs), needed);
    auto backend = MakeBackend(*model_->weights, 2 * needed, kBs);
    ASSERT_NE(backend, nullptr);
    EpisodeCompressor compressor(backend.get());
    auto a = compressor.Build(history, prompt, uniform, Iota(needed));
    auto b = compressor.Build(history, prompt, layered, Iota(needed, needed));
    ASSERT_TRUE(a.ok() && b.ok());
    EXPECT_EQ(a->positions, b->positions);
    EXPECT_TRUE(b->layer_kept.empty());
    std::vector<float> la, lb;
    EpisodeDecoder da(backend.get(), *a), db(backend.get(), *b);
    ASSERT_TRUE(da.Append(message, false, &la).ok());
    ASSERT_TRUE(db.Append(message, false, &lb).ok());
    EXPECT_EQ(la, lb);
    // A non-zero alpha changes the kept sets (the check can fail).
    layered.layer_budget_tokens = *LayerBudgets(sim, 50, 1.0);
    const int32_t more = CompressBlocksNeeded(layered, q, kBs);
    auto big = MakeBackend(*model_->weights, more, kBs);
    EpisodeCompressor c2(big.get());
    auto d = c2.Build(history, prompt, layered, Iota(more));
    ASSERT_TRUE(d.ok()) << d.status().ToString();
    EXPECT_NE(d->positions, a->positions);
  }
}

// The engine passes a sequence's per-layer kept counts on as layer_kv_trim
// ([num_layers][num_seqs]); a sequence without them (full KV) gets trim 0 in every layer.
TEST(LayerTrimTest, ForwardBatchCarriesEachLayersTrim) {
  GenerateRequest req;
  req.prompt = {1, 2, 3, 4, 5, 6};
  BlockPool pool(BlockPoolOptions{.num_blocks = 8, .block_size = 4});
  std::vector<BlockCopy> copies;
  Sequence full(req, 4, HashScope{}, {}, nullptr), cached(req, 4, HashScope{}, {}, nullptr);
  cached.kv_view = KvView{4, 1000, {4, 1, 3}};
  for (Sequence* seq : {&full, &cached}) {
    ASSERT_TRUE(pool.PrepareAppend(&seq->table, 6, &copies).ok());
    seq->table.AdvanceTokens(4);
  }
  ScheduledBatch batch;
  batch.seqs.push_back(ScheduledSeq{&full, 2, true});
  batch.seqs.push_back(ScheduledSeq{&cached, 2, true});
  ForwardBatch fb;
  BuildForwardBatch(batch, &fb);
  EXPECT_EQ(fb.layer_kv_trim, (std::vector<int32_t>{0, 0, 0, 3, 0, 1}));
  EXPECT_EQ(fb.positions, (std::vector<int32_t>{4, 5, 1000, 1001}));
  batch.seqs.pop_back();
  BuildForwardBatch(batch, &fb);
  EXPECT_TRUE(fb.layer_kv_trim.empty());
}

}  // namespace
}  // namespace kvkeep::enginetest
