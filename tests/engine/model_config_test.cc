// ModelConfig parsing against configs modelled on the real Hugging Face config.json files
// of Llama-3-8B, Llama-3.1-8B, Mistral-7B-v0.1, Qwen2.5-0.5B and Qwen3-0.6B. Expected
// parameter counts are the published totals of those checkpoints.
#include "engine/model_config.h"

#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "tests/testlib/test_util.h"

namespace kvkeep {
namespace {

using json = nlohmann::json;

json Llama3_8B() {
  return json::parse(R"({
    "architectures": ["LlamaForCausalLM"], "attention_bias": false, "attention_dropout": 0.0,
    "bos_token_id": 128000, "eos_token_id": 128001, "hidden_act": "silu",
    "hidden_size": 4096, "initializer_range": 0.02, "intermediate_size": 14336,
    "max_position_embeddings": 8192, "model_type": "llama", "num_attention_heads": 32,
    "num_hidden_layers": 32, "num_key_value_heads": 8, "pretraining_tp": 1,
    "rms_norm_eps": 1e-05, "rope_scaling": null, "rope_theta": 500000.0,
    "tie_word_embeddings": false, "torch_dtype": "bfloat16",
    "transformers_version": "4.40.0.dev0", "use_cache": true, "vocab_size": 128256})");
}

json Mistral7B() {
  return json::parse(R"({
    "architectures": ["MistralForCausalLM"], "bos_token_id": 1, "eos_token_id": 2,
    "hidden_act": "silu", "hidden_size": 4096, "initializer_range": 0.02,
    "intermediate_size": 14336, "max_position_embeddings": 32768, "model_type": "mistral",
    "num_attention_heads": 32, "num_hidden_layers": 32, "num_key_value_heads": 8,
    "rms_norm_eps": 1e-05, "rope_theta": 10000.0, "sliding_window": 4096,
    "tie_word_embeddings": false, "torch_dtype": "bfloat16",
    "transformers_version": "4.34.0.dev0", "use_cache": true, "vocab_size": 32000})");
}

json Qwen25_05B() {
  return json::parse(R"({
    "architectures": ["Qwen2ForCausalLM"], "attention_dropout": 0.0,
    "bos_token_id": 151643, "eos_token_id": 151643, "hidden_act": "silu",
    "hidden_size": 896, "initializer_range": 0.02, "intermediate_size": 4864,
    "max_position_embeddings": 32768, "max_window_layers": 24, "model_type": "qwen2",
    "num_attention_heads": 14, "num_hidden_layers": 24, "num_key_value_heads": 2,
    "rms_norm_eps": 1e-06, "rope_theta": 1000000.0, "sliding_window": 32768,
    "tie_word_embeddings": true, "torch_dtype": "bfloat16",
    "transformers_version": "4.40.1", "use_cache": true, "use_mrope": false,
    "use_sliding_window": false, "vocab_size": 151936})");
}

json Qwen3_06B() {
  return json::parse(R"({
    "architectures": ["Qwen3ForCausalLM"], "attention_bias": false, "attention_dropout": 0.0,
    "bos_token_id": 151643, "eos_token_id": 151645, "head_dim": 128, "hidden_act": "silu",
    "hidden_size": 1024, "initializer_range": 0.02, "intermediate_size": 3072,
    "max_position_embeddings": 40960, "max_window_layers": 28, "model_type": "qwen3",
    "num_attention_heads": 16, "num_hidden_layers": 28, "num_key_value_heads": 8,
    "rms_norm_eps": 1e-06, "rope_scaling": null, "rope_theta": 1000000,
    "sliding_window": null, "tie_word_embeddings": true, "torch_dtype": "bfloat16",
    "transformers_version": "4.51.0", "use_cache": true, "use_sliding_window": false,
    "vocab_size": 151936})");
}

Result<ModelConfig> Parse(const json& config, const std::string& generation = "") {
  return ParseModelConfig(config.dump(), generation);
}

TEST(ModelConfigTest, Llama3_8B) {
  Result<ModelConfig> c = Parse(Llama3_8B());
  ASSERT_TRUE(c.ok()) << c.status().ToString();
  EXPECT_EQ(c->architecture, "LlamaForCausalLM");
  EXPECT_EQ(c->model_type, "llama");
  EXPECT_EQ(c->vocab_size, 128256);
  EXPECT_EQ(c->hidden_size, 4096);
  EXPECT_EQ(c->intermediate_size, 14336);
  EXPECT_EQ(c->num_layers, 32);
  EXPECT_EQ(c->num_q_heads, 32);
  EXPECT_EQ(c->num_kv_heads, 8);
  EXPECT_EQ(c->head_dim, 128);
  EXPECT_EQ(c->max_position_embeddings, 8192);
  EXPECT_FLOAT_EQ(c->rms_norm_eps, 1e-5f);
  EXPECT_FLOAT_EQ(c->rope.theta, 500000.0f);
  EXPECT_EQ(c->rope.head_dim, 128);
  EXPECT_LE(c->rope.factor, 0.0f);
  EXPECT_FALSE(c->tie_word_embeddings);
  EXPECT_FALSE(c->attention_bias);
  EXPECT_FALSE(c->qk_norm);
  EXPECT_EQ(c->sliding_window, 0);
  EXPECT_EQ(c->torch_dtype, "bfloat16");
  EXPECT_EQ(c->eos_token_ids, std::vector<int32_t>{128001});
  EXPECT_EQ(c->bos_token_id, 128000);
  EXPECT_EQ(c->NumParameters(), 8030261248);     // Meta's published count
  EXPECT_EQ(c->KvBytesPerToken(2), 128 * 1024);  // the well-known 128 KiB/token in bf16
}

TEST(ModelConfigTest, Llama31RopeScalingAndGenerationConfigEos) {
  json j = Llama3_8B();
  j["max_position_embeddings"] = 131072;
  j["eos_token_id"] = 128009;
  j["rope_scaling"] = {{"factor", 8.0},
                       {"low_freq_factor", 1.0},
                       {"high_freq_factor", 4.0},
                       {"original_max_position_embeddings", 8192},
                       {"rope_type", "llama3"}};
  Result<ModelConfig> c = Parse(j, R"({"bos_token_id": 128000, "eos_token_id": [128001, 128008,
                                       128009], "do_sample": true})");
  ASSERT_TRUE(c.ok()) << c.status().ToString();
  EXPECT_FLOAT_EQ(c->rope.factor, 8.0f);
  EXPECT_FLOAT_EQ(c->rope.low_freq_factor, 1.0f);
  EXPECT_FLOAT_EQ(c->rope.high_freq_factor, 4.0f);
  EXPECT_EQ(c->rope.original_max_position, 8192);
  EXPECT_FLOAT_EQ(c->rope.theta, 500000.0f);
  // generation_config's ids first, config.json's merged in without duplicates.
  EXPECT_EQ(c->eos_token_ids, (std::vector<int32_t>{128001, 128008, 128009}));
}

TEST(ModelConfigTest, RopeScalingLegacyTypeKeyAndNull) {
  json j = Llama3_8B();
  j["rope_scaling"] = {{"factor", 32.0}, {"type", "llama3"}};
  Result<ModelConfig> c = Parse(j);
  ASSERT_TRUE(c.ok()) << c.status().ToString();
  EXPECT_FLOAT_EQ(c->rope.factor, 32.0f);
  EXPECT_EQ(c->rope.original_max_position, 8192);  // HF default
}

TEST(ModelConfigTest, OtherRopeScalingTypesAreNotSupportedByName) {
  for (const char* type : {"linear", "dynamic", "yarn", "longrope"}) {
    json j = Llama3_8B();
    j["rope_scaling"] = {{"factor", 4.0}, {"rope_type", type}};
    Result<ModelConfig> c = Parse(j);
    ASSERT_FALSE(c.ok()) << type;
    EXPECT_EQ(c.status().code(), StatusCode::kNotSupported) << type;
    EXPECT_NE(c.status().message().find(type), std::string::npos) << c.status().ToString();
  }
}

TEST(ModelConfigTest, Mistral7B) {
  Result<ModelConfig> c = Parse(Mistral7B());
  ASSERT_TRUE(c.ok()) << c.status().ToString();
  EXPECT_EQ(c->architecture, "MistralForCausalLM");
  EXPECT_EQ(c->sliding_window, 4096);
  EXPECT_EQ(c->head_dim, 128);
  EXPECT_FLOAT_EQ(c->rope.theta, 10000.0f);
  EXPECT_EQ(c->eos_token_ids, std::vector<int32_t>{2});
  EXPECT_EQ(c->NumParameters(), 7241732096);  // Mistral AI's published count
}

TEST(ModelConfigTest, Qwen25HasQkvBiasByDefaultAndNoWindow) {
  Result<ModelConfig> c = Parse(Qwen25_05B());
  ASSERT_TRUE(c.ok()) << c.status().ToString();
  EXPECT_EQ(c->architecture, "Qwen2ForCausalLM");
  EXPECT_TRUE(c->attention_bias);
  EXPECT_FALSE(c->qk_norm);
  EXPECT_TRUE(c->tie_word_embeddings);
  EXPECT_EQ(c->sliding_window, 0);  // use_sliding_window is false
  EXPECT_EQ(c->head_dim, 64);
  EXPECT_FLOAT_EQ(c->rms_norm_eps, 1e-6f);
  EXPECT_EQ(c->NumParameters(), 494032768);  // Qwen's published 0.49B

  json j = Qwen25_05B();
  j["use_sliding_window"] = true;
  c = Parse(j);
  ASSERT_TRUE(c.ok()) << c.status().ToString();
  EXPECT_EQ(c->sliding_window, 32768);
}

TEST(ModelConfigTest, Qwen3ExplicitHeadDimAndQkNorm) {
  Result<ModelConfig> c = Parse(Qwen3_06B());
  ASSERT_TRUE(c.ok()) << c.status().ToString();
  EXPECT_EQ(c->architecture, "Qwen3ForCausalLM");
  EXPECT_EQ(c->head_dim, 128);  // not hidden / heads = 64
  EXPECT_EQ(c->rope.head_dim, 128);
  EXPECT_TRUE(c->qk_norm);
  EXPECT_FALSE(c->attention_bias);
  EXPECT_EQ(c->sliding_window, 0);
  EXPECT_EQ(c->eos_token_ids, std::vector<int32_t>{151645});
  // 0.44B non-embedding (published) + 151936 x 1024 tied embedding.
  EXPECT_EQ(c->NumParameters(), 596049920);
  EXPECT_EQ(c->KvBytesPerToken(2), 2 * 28 * 8 * 128 * 2);
}

TEST(ModelConfigTest, DefaultsAndAlternativeKeys) {
  json j = Llama3_8B();
  j.erase("num_key_value_heads");
  j.erase("rope_theta");
  j.erase("rms_norm_eps");
  j.erase("torch_dtype");
  j["dtype"] = "float16";  // transformers v5 spelling
  j["eos_token_id"] = {5, 7};
  Result<ModelConfig> c = Parse(j);
  ASSERT_TRUE(c.ok()) << c.status().ToString();
  EXPECT_EQ(c->num_kv_heads, 32);
  EXPECT_FLOAT_EQ(c->rope.theta, 10000.0f);
  EXPECT_EQ(c->torch_dtype, "float16");
  EXPECT_EQ(c->eos_token_ids, (std::vector<int32_t>{5, 7}));
}

TEST(ModelConfigTest, UnknownArchitectureIsNotSupportedByName) {
  json j = Llama3_8B();
  j["architectures"] = {"GPTNeoXForCausalLM"};
  Result<ModelConfig> c = Parse(j);
  ASSERT_FALSE(c.ok());
  EXPECT_EQ(c.status().code(), StatusCode::kNotSupported);
  EXPECT_NE(c.status().message().find("GPTNeoXForCausalLM"), std::string::npos);
}

TEST(ModelConfigTest, MissingRequiredFieldIsNamed) {
  for (const char* field : {"vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                            "num_attention_heads", "max_position_embeddings", "architectures"}) {
    json j = Llama3_8B();
    j.erase(field);
    Result<ModelConfig> c = Parse(j);
    ASSERT_FALSE(c.ok()) << field;
    EXPECT_TRUE(c.status().IsInvalidArgument()) << c.status().ToString();
    EXPECT_NE(c.status().message().find(field), std::string::npos) << c.status().ToString();
  }
}

TEST(ModelConfigTest, WrongTypedFieldIsNamed) {
  struct Case {
    const char* field;
    json value;
  };
  for (const Case& k :
       {Case{"hidden_size", "4096"}, Case{"num_hidden_layers", 32.5}, Case{"rms_norm_eps", "small"},
        Case{"rope_theta", true}, Case{"tie_word_embeddings", "no"},
        Case{"head_dim", json::array()}, Case{"eos_token_id", "</s>"}, Case{"torch_dtype", 16},
        Case{"rope_scaling", 8}, Case{"vocab_size", -1}}) {
    json j = Llama3_8B();
    j[k.field] = k.value;
    Result<ModelConfig> c = Parse(j);
    ASSERT_FALSE(c.ok()) << k.field;
    EXPECT_TRUE(c.status().IsInvalidArgument()) << c.status().ToString();
    EXPECT_NE(c.status().message().find(k.field), std::string::npos) << c.status().ToString();
  }
}

TEST(ModelConfigTest, InconsistentShapesAreRejected) {
  json j = Llama3_8B();
  j["num_key_value_heads"] = 5;  // 32 % 5 != 0
  EXPECT_TRUE(Parse(j).status().IsInvalidArgument());
  j = Llama3_8B();
  j["num_attention_heads"] = 30;  // 4096 % 30 != 0 and no head_dim
  EXPECT_TRUE(Parse(j).status().IsInvalidArgument());
  j = Llama3_8B();
  j["eos_token_id"] = 200000;  // beyond the vocabulary
  EXPECT_TRUE(Parse(j).status().IsInvalidArgument());
}

TEST(ModelConfigTest, OprojBiasArchitecturesRefuseAttentionBias) {
  json j = Llama3_8B();
  j["attention_bias"] = true;
  Result<ModelConfig> c = Parse(j);
  ASSERT_FALSE(c.ok());
  EXPECT_EQ(c.status().code(), StatusCode::kNotSupported);
  EXPECT_NE(c.status().message().find("attention_bias"), std::string::npos);
}

TEST(ModelConfigTest, BadJson) {
  EXPECT_TRUE(ParseModelConfig("{not json", "").status().IsInvalidArgument());
  EXPECT_TRUE(ParseModelConfig("[1, 2]", "").status().IsInvalidArgument());
  EXPECT_TRUE(ParseModelConfig(Llama3_8B().dump(), "{oops").status().IsInvalidArgument());
}

TEST(ModelConfigTest, LoadFromDirectoryReadsGenerationConfig) {
  testing::TempDir dir;
  Env* env = DefaultEnv();
  ASSERT_TRUE(env->WriteFileAtomic(dir.File("config.json"), Qwen3_06B().dump()).ok());
  Result<ModelConfig> c = LoadModelConfig(env, dir.path());
  ASSERT_TRUE(c.ok()) << c.status().ToString();
  EXPECT_EQ(c->eos_token_ids, std::vector<int32_t>{151645});

  ASSERT_TRUE(env->WriteFileAtomic(dir.File("generation_config.json"),
                                   R"({"eos_token_id": [151645, 151643]})")
                  .ok());
  c = LoadModelConfig(env, dir.path());
  ASSERT_TRUE(c.ok()) << c.status().ToString();
  EXPECT_EQ(c->eos_token_ids, (std::vector<int32_t>{151645, 151643}));

  EXPECT_TRUE(LoadModelConfig(env, dir.File("absent")).status().IsNotFound());
}

}  // namespace
}  // namespace kvkeep
