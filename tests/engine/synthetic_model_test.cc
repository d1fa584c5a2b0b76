// The synthetic model maker: the tiny preset loads back through LoadModelConfig and
// ModelWeights::Load, is deterministic per seed (whatever the thread count), differs
// across seeds, and ships a standard byte-level BPE tokenizer.json.
#include "engine/synthetic_model.h"

#include <gtest/gtest.h>
#include <omp.h>

#include <cmath>
#include <cstring>
#include <set>

#include <nlohmann/json.hpp>

#include "base/bf16.h"
#include "engine/model_weights.h"
#include "engine/tokenizer.h"
#include "tests/testlib/test_util.h"

namespace kvkeep {
namespace {

using json = nlohmann::json;

std::string ReadOrDie(const std::string& path) {
  Result<std::string> s = DefaultEnv()->ReadFile(path);
  EXPECT_TRUE(s.ok()) << s.status().ToString();
  return s.ok() ? *s : std::string();
}

// GPT-2's bytes_to_unicode, written as in the reference Python.
std::vector<uint32_t> ReferenceBytesToUnicode() {
  std::vector<int> bs;
  for (int b = '!'; b <= '~'; ++b) bs.push_back(b);
  for (int b = 0xa1; b <= 0xac; ++b) bs.push_back(b);
  for (int b = 0xae; b <= 0xff; ++b) bs.push_back(b);
  std::vector<uint32_t> cs(bs.begin(), bs.end());
  int n = 0;
  for (int b = 0; b < 256; ++b) {
    if (std::find(bs.begin(), bs.end(), b) == bs.end()) {
      bs.push_back(b);
      cs.push_back(256 + n++);
    }
  }
  std::vector<uint32_t> map(256);
  for (size_t i = 0; i < bs.size(); ++i) map[bs[i]] = cs[i];
  return map;
}

uint32_t DecodeSingleCodePoint(const std::string& s) {
  auto u = [&](size_t i) { return static_cast<uint32_t>(static_cast<uint8_t>(s[i])); };
  if (s.size() == 1) return u(0);
  if (s.size() == 2) return ((u(0) & 0x1f) << 6) | (u(1) & 0x3f);
  return 0xffffffff;
}

TEST(SyntheticModelTest, TinyLoadsBack) {
  testing::TempDir dir;
  ASSERT_TRUE(MakeSyntheticModel("tiny", 1, dir.path()).ok());
  Result<ModelConfig> c = LoadModelConfig(DefaultEnv(), dir.path());
  ASSERT_TRUE(c.ok()) << c.status().ToString();
  EXPECT_EQ(c->architecture, "LlamaForCausalLM");
  EXPECT_EQ(c->num_q_heads, 4);
  EXPECT_EQ(c->num_kv_heads, 2);  // GQA
  EXPECT_EQ(c->head_dim, 32);
  EXPECT_EQ(c->vocab_size, 320);
  EXPECT_GE(c->vocab_size, kSyntheticTokenizerSize);
  EXPECT_EQ(c->torch_dtype, "float32");
  EXPECT_EQ(c->eos_token_ids, (std::vector<int32_t>{kSyntheticEndOfTextId, kSyntheticImEndId}));
  EXPECT_EQ(c->bos_token_id, kSyntheticBeginOfTextId);
  Result<ModelConfig> preset = SyntheticPresetConfig("tiny");
  ASSERT_TRUE(preset.ok());
  EXPECT_EQ(c->NumParameters(), preset->NumParameters());
  // embed 320*128 + 4 layers * (q 128*128 + k,v 2*64*128 + o 128*128 + mlp 3*128*256
  // + norms 2*128) + final norm 128 + lm_head 320*128.
  EXPECT_EQ(c->NumParameters(), 40960 + 4 * (16384 + 16384 + 16384 + 98304 + 256) + 128 + 40960);

  Result<std::unique_ptr<ModelWeights>> w = ModelWeights::Load(DefaultEnv(), dir.path(), *c);
  ASSERT_TRUE(w.ok()) << w.status().ToString();
  EXPECT_EQ((*w)->NumFileParameters(), c->NumParameters());
  EXPECT_EQ((*w)->Get("model.embed_tokens.weight")->dtype, DType::kF32);
}

TEST(SyntheticModelTest, WeightsFollowTheInitRule) {
  testing::TempDir dir;
  const uint64_t seed = testing::TestSeed();
  SyntheticModelOptions options;
  options.seed = seed;
  ASSERT_TRUE(MakeSyntheticModel(DefaultEnv(), dir.path(), options).ok());
  Result<ModelConfig> c = LoadModelConfig(DefaultEnv(), dir.path());
  ASSERT_TRUE(c.ok());
  auto w = ModelWeights::Load(DefaultEnv(), dir.path(), *c);
  ASSERT_TRUE(w.ok()) << w.status().ToString();
  for (const char* name : {"model.embed_tokens.weight", "model.layers.2.self_attn.k_proj.weight",
                           "model.layers.3.mlp.down_proj.weight", "model.norm.weight"}) {
    const TensorView* t = (*w)->Get(name);
    ASSERT_NE(t, nullptr);
    SyntheticInit init = SyntheticInitFor(*c, name, t->shape);
    std::vector<float> v = ModelWeights::ToFloat(*t);
    double sum = 0, sq = 0;
    for (size_t i = 0; i < v.size(); ++i) {
      ASSERT_EQ(v[i], SyntheticWeightValue(seed, name, static_cast<int64_t>(i), init)) << name;
      sum += v[i];
      sq += (v[i] - init.mean) * (v[i] - init.mean);
    }
    const double mean = sum / v.size();
    const double std = std::sqrt(sq / v.size());
    // Allow 5 standard errors for each statistic: std / sqrt(n) for the mean, and
    // std / sqrt(2 (n - 1)) for the sample std (normal theory; the generator's Irwin-Hall
    // noise has lighter tails, so this errs wide). A fixed 10% on the std failed ~5% of
    // seeds on the 128-element norm weight, whose standard error is 6%.
    const double n = static_cast<double>(v.size());
    EXPECT_NEAR(mean, init.mean, 5 * init.std / std::sqrt(n)) << name;
    EXPECT_NEAR(std, init.std, 5 * init.std / std::sqrt(2 * (n - 1))) << name;
  }
  // The rule itself: fan-in scaling and unit-mean norms.
  EXPECT_FLOAT_EQ(SyntheticInitFor(*c, "model.layers.0.mlp.down_proj.weight", {128, 256}).std,
                  1.0f / 16.0f);
  EXPECT_FLOAT_EQ(SyntheticInitFor(*c, "model.norm.weight", {128}).mean, 1.0f);
}

TEST(SyntheticModelTest, DeterministicPerSeedAndThreadCount) {
  testing::TempDir a, b, c;
  SyntheticModelOptions options;
  options.seed = 42;
  options.dtype = DType::kBF16;
  const int threads = omp_get_max_threads();
  omp_set_num_threads(1);
  ASSERT_TRUE(MakeSyntheticModel(DefaultEnv(), a.path(), options).ok());
  omp_set_num_threads(std::max(threads, 3));
  ASSERT_TRUE(MakeSyntheticModel(DefaultEnv(), b.path(), options).ok());
  omp_set_num_threads(threads);
  options.seed = 43;
  ASSERT_TRUE(MakeSyntheticModel(DefaultEnv(), c.path(), options).ok());
  for (const char* f : {"model.safetensors", "config.json", "tokenizer.json",
                        "tokenizer_config.json", "generation_config.json"}) {
    EXPECT_EQ(ReadOrDie(a.File(f)), ReadOrDie(b.File(f))) << f;
  }
  const std::string wa = ReadOrDie(a.File("model.safetensors"));
  const std::string wc = ReadOrDie(c.File("model.safetensors"));
  ASSERT_EQ(wa.size(), wc.size());
  // Different seeds: almost every weight differs (bf16 collisions are rare).
  int64_t same = 0;
  for (size_t i = wa.size() / 2; i + 1 < wa.size(); i += 2)
    same += wa[i] == wc[i] && wa[i + 1] == wc[i + 1];
  EXPECT_LT(same, static_cast<int64_t>(wa.size() / 2 / 2 / 20));
  Result<ModelConfig> cfg = LoadModelConfig(DefaultEnv(), a.path());
  ASSERT_TRUE(cfg.ok());
  EXPECT_EQ(cfg->torch_dtype, "bfloat16");
  auto w = ModelWeights::Load(DefaultEnv(), a.path(), *cfg);
  ASSERT_TRUE(w.ok()) << w.status().ToString();
  EXPECT_EQ((*w)->Get("lm_head.weight")->dtype, DType::kBF16);
}

TEST(SyntheticModelTest, RefusesNonEmptyDirectoryUnlessForced) {
  testing::TempDir dir;
  ASSERT_TRUE(DefaultEnv()->WriteFileAtomic(dir.File("model.safetensors.index.json"), "{}").ok());
  ASSERT_TRUE(DefaultEnv()->WriteFileAtomic(dir.File("notes.txt"), "mine").ok());
  Status st = MakeSyntheticModel("tiny", 0, dir.path());
  EXPECT_EQ(st.code(), StatusCode::kAlreadyExists) << st.ToString();
  SyntheticModelOptions options;
  options.force = true;
  ASSERT_TRUE(MakeSyntheticModel(DefaultEnv(), dir.path(), options).ok());
  EXPECT_EQ(ReadOrDie(dir.File("notes.txt")), "mine");
  // The stale index would have redirected the loader to shards that do not exist.
  EXPECT_FALSE(DefaultEnv()->FileExists(dir.File("model.safetensors.index.json")));
  Result<ModelConfig> c = LoadModelConfig(DefaultEnv(), dir.path());
  ASSERT_TRUE(c.ok());
  EXPECT_TRUE(ModelWeights::Load(DefaultEnv(), dir.path(), *c).ok());
}

TEST(SyntheticModelTest, UnknownPresetAndDType) {
  testing::TempDir dir;
  EXPECT_TRUE(MakeSyntheticModel("huge", 0, dir.path()).IsInvalidArgument());
  SyntheticModelOptions options;
  options.dtype = DType::kI32;
  EXPECT_TRUE(MakeSyntheticModel(DefaultEnv(), dir.path(), options).IsInvalidArgument());
  EXPECT_TRUE(SyntheticPresetConfig("huge").status().IsInvalidArgument());
}

TEST(SyntheticModelTest, TokenizerJsonIsStandardByteLevelBpe) {
  json j = json::parse(SyntheticTokenizerJson());
  EXPECT_EQ(j["model"]["type"], "BPE");
  EXPECT_TRUE(j["model"]["merges"].empty());
  EXPECT_EQ(j["pre_tokenizer"]["type"], "ByteLevel");
  EXPECT_EQ(j["decoder"]["type"], "ByteLevel");
  const json& vocab = j["model"]["vocab"];
  ASSERT_EQ(vocab.size(), 256u);
  std::vector<uint32_t> ref = ReferenceBytesToUnicode();
  std::set<int> ids;
  for (const auto& [symbol, id] : vocab.items()) {
    ASSERT_TRUE(id.is_number_integer());
    int b = id.get<int>();
    ASSERT_GE(b, 0);
    ASSERT_LT(b, 256);
    ids.insert(b);
    EXPECT_EQ(DecodeSingleCodePoint(symbol), ref[b]) << "byte " << b;
  }
  EXPECT_EQ(ids.size(), 256u);
  const json& added = j["added_tokens"];
  ASSERT_EQ(added.size(), 4u);
  EXPECT_EQ(added[0]["content"], "<|begin_of_text|>");
  EXPECT_EQ(added[1]["content"], "<|end_of_text|>");
  EXPECT_EQ(added[2]["content"], "<|im_start|>");
  EXPECT_EQ(added[3]["content"], "<|im_end|>");
  for (int i = 0; i < 4; ++i) {
    EXPECT_EQ(added[i]["id"], 256 + i);
    EXPECT_EQ(added[i]["special"], true);
  }
}

TEST(SyntheticModelTest, TokenizerConfigCarriesThePlainTemplate) {
  Result<ModelConfig> c = SyntheticPresetConfig("tiny");
  ASSERT_TRUE(c.ok());
  json j = json::parse(SyntheticTokenizerConfigJson(*c));
  EXPECT_EQ(j["kvkeep_template"], "plain");
  EXPECT_EQ(j["bos_token"], "<|begin_of_text|>");
  EXPECT_EQ(j["eos_token"], "<|im_end|>");
  const std::string tpl = j["chat_template"];
  EXPECT_EQ(tpl, SyntheticChatTemplate());
  for (const char* piece : {"<|im_start|>", "<|im_end|>", "add_generation_prompt",
                            "message['role']", "message['content']", "assistant\\n"}) {
    EXPECT_NE(tpl.find(piece), std::string::npos) << piece;
  }
}

TEST(SyntheticModelTest, TokenizerLoadsThroughTheEngineTokenizer) {
  testing::TempDir dir;
  ASSERT_TRUE(MakeSyntheticModel("tiny", 0, dir.path()).ok());
  Result<std::unique_ptr<Tokenizer>> tok = LoadTokenizer(DefaultEnv(), dir.path());
  ASSERT_TRUE(tok.ok()) << tok.status().ToString();
  EXPECT_EQ((*tok)->vocab_size(), kSyntheticTokenizerSize);
  Result<std::vector<int32_t>> ids = (*tok)->Encode("<|im_start|>hi é<|im_end|>");
  ASSERT_TRUE(ids.ok()) << ids.status().ToString();
  // Bytes are their own ids; specials are single ids.
  EXPECT_EQ(*ids, (std::vector<int32_t>{kSyntheticImStartId, 'h', 'i', ' ', 0xc3, 0xa9,
                                        kSyntheticImEndId}));
  EXPECT_EQ((*tok)->Decode(*ids, /*skip_special=*/true), "hi é");
}

TEST(SyntheticModelTest, PresetShapes) {
  Result<ModelConfig> small = SyntheticPresetConfig("small");
  ASSERT_TRUE(small.ok());
  // embed 32000*768 (tied) + 12 * (q,o 2*768*768 + k,v 2*256*768 + mlp 3*768*2048
  // + norms 2*768) + final norm 768.
  EXPECT_EQ(small->NumParameters(),
            32000 * 768 + 12 * (2 * 768 * 768 + 2 * 256 * 768 + 3 * 768 * 2048 + 2 * 768) + 768);
  EXPECT_EQ(small->NumParameters(), 100092672);
  EXPECT_TRUE(small->tie_word_embeddings);

  Result<ModelConfig> big = SyntheticPresetConfig("llama3-8b-shape");
  ASSERT_TRUE(big.ok());
  EXPECT_EQ(big->NumParameters(), 8030261248);  // Meta's published Llama-3-8B count
  // Its config.json must read back with the llama3 rope scaling intact.
  Result<ModelConfig> parsed = ParseModelConfig(SyntheticConfigJson(*big, "llama3-8b-shape", 0),
                                                SyntheticGenerationConfigJson());
  ASSERT_TRUE(parsed.ok()) << parsed.status().ToString();
  EXPECT_EQ(parsed->vocab_size, 128256);
  EXPECT_EQ(parsed->max_position_embeddings, 131072);
  EXPECT_FLOAT_EQ(parsed->rope.theta, 500000.0f);
  EXPECT_FLOAT_EQ(parsed->rope.factor, 8.0f);
  EXPECT_FLOAT_EQ(parsed->rope.low_freq_factor, 1.0f);
  EXPECT_FLOAT_EQ(parsed->rope.high_freq_factor, 4.0f);
  EXPECT_EQ(parsed->rope.original_max_position, 8192);
  EXPECT_EQ(parsed->NumParameters(), big->NumParameters());
}

TEST(SyntheticModelTest, SmallPresetCrossesChunkBoundaries) {
  // The embedding (24.6M elements) spans two generation chunks; values on both sides of
  // the boundary must follow the per-element rule.
  testing::TempDir dir;
  SyntheticModelOptions options;
  options.preset = "small";
  options.seed = 5;
  uint64_t last_done = 0, last_total = 0;
  options.progress = [&](uint64_t done, uint64_t total) {
    EXPECT_GT(done, last_done);
    last_done = done;
    last_total = total;
  };
  ASSERT_TRUE(MakeSyntheticModel(DefaultEnv(), dir.path(), options).ok());
  EXPECT_EQ(last_done, last_total);
  EXPECT_EQ(last_total, uint64_t{100092672} * 2);
  Result<ModelConfig> c = LoadModelConfig(DefaultEnv(), dir.path());
  ASSERT_TRUE(c.ok());
  auto w = ModelWeights::Load(DefaultEnv(), dir.path(), *c);
  ASSERT_TRUE(w.ok()) << w.status().ToString();
  const TensorView* embed = (*w)->Get("model.embed_tokens.weight");
  SyntheticInit init = SyntheticInitFor(*c, "model.embed_tokens.weight", embed->shape);
  for (int64_t i : {int64_t{0}, kSyntheticChunkElements - 1, kSyntheticChunkElements,
                    embed->NumElements() - 1}) {
    bf16 got;
    std::memcpy(&got.bits, embed->data + 2 * i, 2);
    EXPECT_EQ(got.bits,
              FloatToBf16(SyntheticWeightValue(5, "model.embed_tokens.weight", i, init)).bits)
        << i;
  }
}

}  // namespace
}  // namespace kvkeep
