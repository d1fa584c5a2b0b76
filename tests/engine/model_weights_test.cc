// ModelWeights::Load on small hand-built checkpoints: single file, sharded through an
// index, tied embeddings, Qwen2 biases and Qwen3 q/k norms; every failure names the tensor.
#include "engine/model_weights.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <random>

#include <nlohmann/json.hpp>

#include "base/bf16.h"
#include "tests/testlib/test_util.h"

namespace kvkeep {
namespace {

// vocab 16, hidden 8, 2 q heads / 1 kv head of dim 4, mlp 12, 2 layers.
ModelConfig SmallConfig() {
  ModelConfig c;
  c.architecture = "LlamaForCausalLM";
  c.vocab_size = 16;
  c.hidden_size = 8;
  c.intermediate_size = 12;
  c.num_layers = 2;
  c.num_q_heads = 2;
  c.num_kv_heads = 1;
  c.head_dim = 4;
  c.max_position_embeddings = 64;
  return c;
}

// Every tensor the config needs, spelled out independently of the loader, in F32 with
// values tensor_index + 0.25 * i.
std::vector<TensorToWrite> Checkpoint(const ModelConfig& c) {
  std::vector<std::pair<std::string, std::vector<int64_t>>> shapes = {
      {"model.embed_tokens.weight", {16, 8}}, {"model.norm.weight", {8}}};
  if (!c.tie_word_embeddings) shapes.push_back({"lm_head.weight", {16, 8}});
  for (int i = 0; i < c.num_layers; ++i) {
    std::string p = "model.layers." + std::to_string(i) + ".";
    shapes.push_back({p + "input_layernorm.weight", {8}});
    shapes.push_back({p + "post_attention_layernorm.weight", {8}});
    shapes.push_back({p + "self_attn.q_proj.weight", {8, 8}});
    shapes.push_back({p + "self_attn.k_proj.weight", {4, 8}});
    shapes.push_back({p + "self_attn.v_proj.weight", {4, 8}});
    shapes.push_back({p + "self_attn.o_proj.weight", {8, 8}});
    shapes.push_back({p + "mlp.gate_proj.weight", {12, 8}});
    shapes.push_back({p + "mlp.up_proj.weight", {12, 8}});
    shapes.push_back({p + "mlp.down_proj.weight", {8, 12}});
    if (c.attention_bias) {
      shapes.push_back({p + "self_attn.q_proj.bias", {8}});
      shapes.push_back({p + "self_attn.k_proj.bias", {4}});
      shapes.push_back({p + "self_attn.v_proj.bias", {4}});
    }
    if (c.qk_norm) {
      shapes.push_back({p + "self_attn.q_norm.weight", {4}});
      shapes.push_back({p + "self_attn.k_norm.weight", {4}});
    }
  }
  std::vector<TensorToWrite> out;
  for (size_t t = 0; t < shapes.size(); ++t) {
    TensorToWrite w{shapes[t].first, DType::kF32, shapes[t].second, ""};
    int64_t n = 1;
    for (int64_t d : w.shape) n *= d;
    for (int64_t i = 0; i < n; ++i) {
      float v = static_cast<float>(t) + 0.25f * static_cast<float>(i);
      w.data.append(reinterpret_cast<const char*>(&v), 4);
    }
    out.push_back(std::move(w));
  }
  return out;
}

void Erase(std::vector<TensorToWrite>* ts, const std::string& name) {
  std::erase_if(*ts, [&](const TensorToWrite& t) { return t.name == name; });
}

class ModelWeightsTest : public ::testing::Test {
 protected:
  void Write(const std::vector<TensorToWrite>& ts, const std::string& file = "model.safetensors") {
    ASSERT_TRUE(WriteSafetensors(env_, dir_.File(file), ts).ok());
  }
  Result<std::unique_ptr<ModelWeights>> Load(const ModelConfig& c) {
    return ModelWeights::Load(env_, dir_.path(), c);
  }
  void ExpectInvalidNaming(const ModelConfig& c, const std::string& name) {
    Result<std::unique_ptr<ModelWeights>> w = Load(c);
    ASSERT_FALSE(w.ok());
    EXPECT_TRUE(w.status().IsInvalidArgument()) << w.status().ToString();
    EXPECT_NE(w.status().message().find(name), std::string::npos) << w.status().ToString();
  }
  Env* env_ = DefaultEnv();
  testing::TempDir dir_;
};

TEST_F(ModelWeightsTest, LoadsSingleFile) {
  ModelConfig c = SmallConfig();
  std::vector<TensorToWrite> ts = Checkpoint(c);
  ts.push_back({"model.rotary_emb.inv_freq", DType::kF32, {2}, std::string(8, '\0')});  // extra
  Write(ts);
  Result<std::unique_ptr<ModelWeights>> w = Load(c);
  ASSERT_TRUE(w.ok()) << w.status().ToString();
  for (const TensorToWrite& t : ts) {
    if (t.name == "model.rotary_emb.inv_freq") continue;
    const TensorView* v = (*w)->Get(t.name);
    ASSERT_NE(v, nullptr) << t.name;
    EXPECT_EQ(v->shape, t.shape);
    std::vector<float> f = ModelWeights::ToFloat(*v);
    ASSERT_EQ(f.size() * 4, t.data.size());
    EXPECT_EQ(std::memcmp(f.data(), t.data.data(), t.data.size()), 0) << t.name;
  }
  EXPECT_EQ((*w)->Get("model.rotary_emb.inv_freq"), nullptr);  // not validated, not served
  EXPECT_NE((*w)->Get("lm_head.weight"), (*w)->Get("model.embed_tokens.weight"));
  EXPECT_EQ((*w)->NumFileParameters(), c.NumParameters() + 2);
}

TEST_F(ModelWeightsTest, MissingTensorIsNamed) {
  ModelConfig c = SmallConfig();
  std::vector<TensorToWrite> ts = Checkpoint(c);
  Erase(&ts, "model.layers.1.mlp.down_proj.weight");
  Write(ts);
  ExpectInvalidNaming(c, "model.layers.1.mlp.down_proj.weight");
}

TEST_F(ModelWeightsTest, ShapeMismatchIsNamedWithBothShapes) {
  ModelConfig c = SmallConfig();
  std::vector<TensorToWrite> ts = Checkpoint(c);
  for (TensorToWrite& t : ts) {
    if (t.name == "model.layers.0.self_attn.k_proj.weight") t.shape = {8, 4};  // transposed
  }
  Write(ts);
  ExpectInvalidNaming(c, "model.layers.0.self_attn.k_proj.weight");
  Result<std::unique_ptr<ModelWeights>> w = Load(c);
  EXPECT_NE(w.status().message().find("[8, 4]"), std::string::npos);
  EXPECT_NE(w.status().message().find("[4, 8]"), std::string::npos);
}

TEST_F(ModelWeightsTest, IntegerDTypeIsRejected) {
  ModelConfig c = SmallConfig();
  std::vector<TensorToWrite> ts = Checkpoint(c);
  for (TensorToWrite& t : ts) {
    if (t.name == "model.norm.weight") t.dtype = DType::kI32;
  }
  Write(ts);
  ExpectInvalidNaming(c, "model.norm.weight");
}

TEST_F(ModelWeightsTest, UntiedModelNeedsLmHead) {
  ModelConfig c = SmallConfig();
  std::vector<TensorToWrite> ts = Checkpoint(c);
  Erase(&ts, "lm_head.weight");
  Write(ts);
  ExpectInvalidNaming(c, "lm_head.weight");
}

TEST_F(ModelWeightsTest, TiedEmbeddingsResolveLmHead) {
  ModelConfig c = SmallConfig();
  c.tie_word_embeddings = true;
  Write(Checkpoint(c));
  Result<std::unique_ptr<ModelWeights>> w = Load(c);
  ASSERT_TRUE(w.ok()) << w.status().ToString();
  ASSERT_NE((*w)->Get("lm_head.weight"), nullptr);
  EXPECT_EQ((*w)->Get("lm_head.weight"), (*w)->Get("model.embed_tokens.weight"));
  EXPECT_EQ((*w)->NumFileParameters(), c.NumParameters());
}

TEST_F(ModelWeightsTest, Qwen2NeedsQkvBiases) {
  ModelConfig c = SmallConfig();
  c.architecture = "Qwen2ForCausalLM";
  c.attention_bias = true;
  std::vector<TensorToWrite> ts = Checkpoint(c);
  Write(ts);
  ASSERT_TRUE(Load(c).ok());
  Erase(&ts, "model.layers.1.self_attn.k_proj.bias");
  Write(ts);
  ExpectInvalidNaming(c, "model.layers.1.self_attn.k_proj.bias");
}

TEST_F(ModelWeightsTest, Qwen3NeedsQkNorms) {
  ModelConfig c = SmallConfig();
  c.architecture = "Qwen3ForCausalLM";
  c.qk_norm = true;
  std::vector<TensorToWrite> ts = Checkpoint(c);
  Write(ts);
  Result<std::unique_ptr<ModelWeights>> w = Load(c);
  ASSERT_TRUE(w.ok()) << w.status().ToString();
  EXPECT_EQ((*w)->Get("model.layers.0.self_attn.q_norm.weight")->shape, std::vector<int64_t>{4});
  Erase(&ts, "model.layers.0.self_attn.q_norm.weight");
  Write(ts);
  ExpectInvalidNaming(c, "model.layers.0.self_attn.q_norm.weight");
}

TEST_F(ModelWeightsTest, ShardedThroughIndex) {
  ModelConfig c = SmallConfig();
  std::vector<TensorToWrite> ts = Checkpoint(c);
  std::vector<TensorToWrite> shard[2];
  nlohmann::json index = {{"metadata", {{"total_size", 0}}},
                          {"weight_map", nlohmann::json::object()}};
  for (size_t i = 0; i < ts.size(); ++i) {
    const char* file =
        i % 2 ? "model-00002-of-00002.safetensors" : "model-00001-of-00002.safetensors";
    index["weight_map"][ts[i].name] = file;
    shard[i % 2].push_back(ts[i]);
  }
  Write(shard[0], "model-00001-of-00002.safetensors");
  Write(shard[1], "model-00002-of-00002.safetensors");
  ASSERT_TRUE(env_->WriteFileAtomic(dir_.File("model.safetensors.index.json"), index.dump()).ok());
  Result<std::unique_ptr<ModelWeights>> w = Load(c);
  ASSERT_TRUE(w.ok()) << w.status().ToString();
  for (const TensorToWrite& t : ts) {
    const TensorView* v = (*w)->Get(t.name);
    ASSERT_NE(v, nullptr) << t.name;
    EXPECT_EQ(std::memcmp(v->data, t.data.data(), t.data.size()), 0) << t.name;
  }
  EXPECT_EQ((*w)->NumFileParameters(), c.NumParameters());

  // The index names a tensor's shard, but the shard lacks it.
  const std::string norm_shard = index["weight_map"]["model.norm.weight"];
  index["weight_map"]["model.norm.weight"] = norm_shard == "model-00001-of-00002.safetensors"
                                                 ? "model-00002-of-00002.safetensors"
                                                 : "model-00001-of-00002.safetensors";
  ASSERT_TRUE(env_->WriteFileAtomic(dir_.File("model.safetensors.index.json"), index.dump()).ok());
  w = Load(c);
  ASSERT_FALSE(w.ok());
  EXPECT_NE(w.status().message().find("model.norm.weight"), std::string::npos);

  // A shard that does not exist.
  index["weight_map"]["model.norm.weight"] = "model-00003-of-00003.safetensors";
  ASSERT_TRUE(env_->WriteFileAtomic(dir_.File("model.safetensors.index.json"), index.dump()).ok());
  EXPECT_TRUE(Load(c).status().IsNotFound());

  // A tensor the index does not list.
  index["weight_map"].erase("model.norm.weight");
  ASSERT_TRUE(env_->WriteFileAtomic(dir_.File("model.safetensors.index.json"), index.dump()).ok());
  ExpectInvalidNaming(c, "model.norm.weight");
}

TEST_F(ModelWeightsTest, MissingFileIsNotFound) {
  EXPECT_TRUE(Load(SmallConfig()).status().IsNotFound());
}

TEST_F(ModelWeightsTest, ToFloatConvertsBf16AndFp16) {
  // Reference bit patterns from the IEEE / bfloat16 definitions.
  const uint16_t f16_bits[] = {0x3c00, 0xc000, 0x3555, 0x0001, 0x7c00, 0x0000, 0x8000};
  const float f16_want[] = {1.0f, -2.0f, 0.333251953125f, 5.9604644775390625e-8f, INFINITY,
                            0.0f, -0.0f};
  const uint16_t bf16_bits[] = {0x3f80, 0xc000, 0x3eab, 0x7f80};
  const float bf16_want[] = {1.0f, -2.0f, 0.333984375f, INFINITY};
  TensorView f16{DType::kF16, {7}, reinterpret_cast<const uint8_t*>(f16_bits), sizeof(f16_bits)};
  TensorView b16{DType::kBF16, {4}, reinterpret_cast<const uint8_t*>(bf16_bits), sizeof(bf16_bits)};
  std::vector<float> got = ModelWeights::ToFloat(f16);
  for (int i = 0; i < 7; ++i) EXPECT_EQ(got[i], f16_want[i]) << i;
  EXPECT_TRUE(std::signbit(got[6]));
  got = ModelWeights::ToFloat(b16);
  for (int i = 0; i < 4; ++i) EXPECT_EQ(got[i], bf16_want[i]) << i;
}

TEST_F(ModelWeightsTest, ToFloatLargeBf16MatchesScalarConversion) {
  // Above the parallel threshold: every element must match the scalar conversion.
  std::mt19937_64 rng(testing::TestSeed());
  const int64_t n = (int64_t{1} << 21) + 3;
  std::vector<uint16_t> bits(n);
  for (auto& b : bits) b = static_cast<uint16_t>(rng()) & 0xbfff;  // finite values
  TensorView v{
      DType::kBF16, {n}, reinterpret_cast<const uint8_t*>(bits.data()), static_cast<size_t>(n) * 2};
  std::vector<float> got = ModelWeights::ToFloat(v);
  for (int64_t i = 0; i < n; ++i) {
    uint32_t u = uint32_t{bits[i]} << 16;
    float want;
    std::memcpy(&want, &u, 4);
    ASSERT_EQ(std::memcmp(&got[i], &want, 4), 0) << i;
  }
}

}  // namespace
}  // namespace kvkeep
