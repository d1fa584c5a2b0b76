// ModelKeyEmbedder on the tiny synthetic model, against keys pooled independently: the
// test prefills the same tokens on its own backend (another block size, blocks out of
// order), reads the post-RoPE keys back from its pool and averages them itself.
#include "engine/model_embedder.h"

#include <gtest/gtest.h>

#include <cmath>

#include "engine/embedder_factory.h"
#include "tests/testlib/tiny_model.h"

namespace kvkeep {
namespace {

using testing::TinyModelTest;

// The reference: mean over tokens of K[l][h][:] for layers >= first_layer, L2-normalised.
std::vector<float> ReferenceVector(const ModelWeights& weights, const std::vector<int32_t>& tokens,
                                   int32_t first_layer, bool normalize = true) {
  constexpr int32_t kBlockSize = 4;
  const int32_t n = static_cast<int32_t>(tokens.size());
  const int32_t num_blocks = (n + kBlockSize - 1) / kBlockSize;
  auto backend = testing::MakeBackend(weights, 2 * num_blocks + 1, kBlockSize);
  if (!backend) return {};
  const KvPoolShape& s = backend->kv_shape();
  std::vector<int32_t> table;  // every other block, last first
  for (int32_t i = 0; i < num_blocks; ++i) table.push_back(2 * (num_blocks - i));
  ForwardBatch b;
  b.token_ids = tokens;
  for (int32_t i = 0; i < n; ++i) {
    b.positions.push_back(i);
    b.slot_mapping.push_back(table[i / kBlockSize] * kBlockSize + i % kBlockSize);
  }
  b.q_start = {0, n};
  b.kv_len = {n};
  b.block_tables = table;
  b.max_blocks_per_seq = num_blocks;
  b.logit_rows = {n - 1};
  std::vector<float> logits;
  EXPECT_TRUE(backend->Forward(b, &logits).ok());
  const int32_t layers = s.num_layers - first_layer;
  std::vector<double> sum(static_cast<size_t>(layers) * s.num_kv_heads * s.head_dim, 0.0);
  std::vector<float> raw(backend->block_bytes() / sizeof(float));
  for (int32_t i = 0; i < n; ++i) {
    EXPECT_TRUE(backend->ReadBlock(table[i / kBlockSize], raw.data()).ok());
    for (int32_t l = first_layer; l < s.num_layers; ++l) {
      const float* k = LayerView(raw.data(), s, l).k;
      for (int32_t h = 0; h < s.num_kv_heads; ++h) {
        for (int32_t d = 0; d < s.head_dim; ++d) {
          sum[((l - first_layer) * s.num_kv_heads + h) * s.head_dim + d] +=
              k[(h * kBlockSize + i % kBlockSize) * s.head_dim + d];
        }
      }
    }
  }
  double norm = 0.0;
  for (double x : sum) norm += x * x;
  norm = normalize ? std::sqrt(norm) : n;
  std::vector<float> out(sum.size());
  for (size_t i = 0; i < sum.size(); ++i) out[i] = static_cast<float>(sum[i] / norm);
  return out;
}

class ModelEmbedderTest : public TinyModelTest {};

TEST_F(ModelEmbedderTest, MeanOfPostRopeKeysOfTheLastHalf) {
  auto e = ModelKeyEmbedder::Load(DefaultEnv(), model_->dir.path());
  ASSERT_TRUE(e.ok()) << e.status().ToString();
  const ModelConfig& c = model_->config;
  const int32_t first = c.num_layers / 2;
  EXPECT_EQ((*e)->first_layer(), first);
  EXPECT_EQ((*e)->dim(), (c.num_layers - first) * c.num_kv_heads * c.head_dim);
  EXPECT_EQ((*e)->name(), "model");

  const std::vector<std::string> texts = {
      "we went hiking in the mountains last summer and saw a bear",
      "my sister adopted a cat named Pepper", "",
      "we went hiking in the mountains last summer and saw a bear"};
  auto rows = (*e)->Embed(texts);
  ASSERT_TRUE(rows.ok()) << rows.status().ToString();
  const int32_t dim = (*e)->dim();
  ASSERT_EQ(rows->size(), texts.size() * dim);
  for (size_t t = 0; t < texts.size(); ++t) {
    const float* r = rows->data() + t * dim;
    const double norm = std::sqrt(index::Dot(r, r, dim));
    EXPECT_NEAR(norm, t == 2 ? 0.0 : 1.0, 1e-5) << "text " << t;
  }
  for (int32_t d = 0; d < dim; ++d) ASSERT_EQ((*rows)[d], (*rows)[3 * dim + d]) << d;
  EXPECT_LT(index::Dot(rows->data(), rows->data() + dim, dim), 0.9999f);

  for (size_t t : {size_t{0}, size_t{1}}) {
    auto tokens = model_->tokenizer->Encode(texts[t], false);
    ASSERT_TRUE(tokens.ok());
    ASSERT_GT(tokens->size(), 4u);  // spans several reference blocks
    const std::vector<float> want = ReferenceVector(*model_->weights, *tokens, first);
    ASSERT_EQ(want.size(), static_cast<size_t>(dim));
    for (int32_t d = 0; d < dim; ++d) {
      ASSERT_NEAR((*rows)[t * dim + d], want[d], 1e-4) << "text " << t << " dim " << d;
    }
  }
}

TEST_F(ModelEmbedderTest, ChosenLayersAndTruncation) {
  ModelKeyEmbedderOptions o;
  o.first_layer = 0;
  o.max_tokens = 5;
  auto e = ModelKeyEmbedder::Load(DefaultEnv(), model_->dir.path(), o);
  ASSERT_TRUE(e.ok()) << e.status().ToString();
  const ModelConfig& c = model_->config;
  ASSERT_EQ((*e)->dim(), c.num_layers * c.num_kv_heads * c.head_dim);
  const std::string text = "the quick brown fox jumps over the lazy dog again and again";
  auto rows = (*e)->Embed({text});
  ASSERT_TRUE(rows.ok()) << rows.status().ToString();
  auto tokens = model_->tokenizer->Encode(text, false);
  ASSERT_TRUE(tokens.ok());
  ASSERT_GT(tokens->size(), 5u);
  tokens->resize(5);
  const std::vector<float> want = ReferenceVector(*model_->weights, *tokens, 0);
  ASSERT_EQ(want.size(), rows->size());
  for (size_t d = 0; d < want.size(); ++d) ASSERT_NEAR((*rows)[d], want[d], 1e-4) << d;
}

// After Observe(history), a row is (mean keys of the text - mean over the history's texts
// of their mean keys), normalised.
TEST_F(ModelEmbedderTest, ObserveCentresOnTheHistorysMeanKey) {
  auto e = ModelKeyEmbedder::Load(DefaultEnv(), model_->dir.path());
  ASSERT_TRUE(e.ok()) << e.status().ToString();
  const int32_t first = (*e)->first_layer(), dim = (*e)->dim();
  const std::vector<std::string> history = {"the cat sat on the mat by the door",
                                            "a storm rolled in over the harbour at dusk",
                                            "she practised the violin every single morning"};
  (*e)->Observe(history);
  const std::string text = "we painted the fence blue on a sunny afternoon";
  auto rows = (*e)->Embed({text, history[1]});
  ASSERT_TRUE(rows.ok()) << rows.status().ToString();
  std::vector<double> mean(dim, 0.0);
  for (const std::string& h : history) {
    auto tokens = model_->tokenizer->Encode(h, false);
    ASSERT_TRUE(tokens.ok());
    const std::vector<float> v = ReferenceVector(*model_->weights, *tokens, first, false);
    ASSERT_EQ(v.size(), static_cast<size_t>(dim));
    for (int32_t d = 0; d < dim; ++d) mean[d] += v[d] / history.size();
  }
  for (size_t t = 0; t < 2; ++t) {
    auto tokens = model_->tokenizer->Encode(t == 0 ? text : history[1], false);
    ASSERT_TRUE(tokens.ok());
    std::vector<float> want = ReferenceVector(*model_->weights, *tokens, first, false);
    for (int32_t d = 0; d < dim; ++d) want[d] -= static_cast<float>(mean[d]);
    index::NormalizeRows(want.data(), 1, dim);
    for (int32_t d = 0; d < dim; ++d) {
      ASSERT_NEAR((*rows)[t * dim + d], want[d], 1e-4) << "text " << t << " dim " << d;
    }
  }
}

TEST_F(ModelEmbedderTest, BadOptionsAndPathsAreErrors) {
  ModelKeyEmbedderOptions o;
  o.first_layer = model_->config.num_layers;
  auto e = ModelKeyEmbedder::Load(DefaultEnv(), model_->dir.path(), o);
  EXPECT_EQ(e.status().code(), StatusCode::kInvalidArgument) << e.status().ToString();
  o = {};
  o.max_tokens = 0;
  EXPECT_FALSE(ModelKeyEmbedder::Load(DefaultEnv(), model_->dir.path(), o).ok());
  EXPECT_FALSE(ModelKeyEmbedder::Load(DefaultEnv(), model_->dir.path() + "/nope").ok());
}

TEST_F(ModelEmbedderTest, FactoryMakesItFromTheLlmPath) {
  EmbedderSpec spec;
  spec.name = "model";
  spec.llm_path = model_->dir.path();
  std::string resolved;
  auto e = MakeEmbedder(DefaultEnv(), spec, &resolved);
  ASSERT_TRUE(e.ok()) << e.status().ToString();
  EXPECT_EQ(resolved, "model");
  EXPECT_EQ((*e)->name(), "model");
  spec.llm_path = model_->dir.path() + "/missing.gguf";
  EXPECT_FALSE(MakeEmbedder(DefaultEnv(), spec).ok());
}

}  // namespace
}  // namespace kvkeep
