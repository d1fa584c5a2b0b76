// Parity with Hugging Face: fixtures written by tests/fixtures/gen_parity.py (HF
// transformers + tokenizers, random-weight models, trained tokenizers). See
// docs/tokenizers.md for how they are made and what the tolerances mean.
//
// Logits tolerance: for every row (one position's logits over the vocabulary),
//   rel_err = max_v |ours[v] - hf[v]| / max_v |hf[v]|  <=  1e-4.
// Greedy tokens must be identical, except where HF's own top-2 gap is below
// 1e-4 * max|logit| (a tie at fp32 noise level): then either of HF's top two is accepted.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <filesystem>

#include <nlohmann/json.hpp>

#include "engine/backend.h"
#include "engine/model_config.h"
#include "engine/model_weights.h"
#include "engine/safetensors.h"
#include "engine/tokenizer.h"
#include "tests/testlib/test_util.h"

namespace kvkeep {
namespace {

using nlohmann::json;
namespace fs = std::filesystem;

constexpr double kRelTol = 1e-4;

std::string ParityDir() { return testing::FixturesDir() + "/parity"; }

#define SKIP_IF_MISSING(path)                                                                 \
  do {                                                                                        \
    if (!fs::exists(path))                                                                    \
      GTEST_SKIP() << "parity fixture " << (path)                                             \
                   << " is missing: run `python3 tests/fixtures/gen_parity.py` on a machine " \
                      "with torch, transformers and tokenizers";                              \
  } while (0)

json ReadJson(const std::string& path) {
  auto text = DefaultEnv()->ReadFile(path);
  EXPECT_TRUE(text.ok()) << text.status().ToString();
  return text.ok() ? json::parse(*text) : json();
}

// ---- tokenizers -------------------------------------------------------------------------

class TokenizerParity : public ::testing::TestWithParam<std::string> {};

// Compares a tokenizer directory's encodings.json (HF's output) with ours. Returns the
// number of cases checked; cases our NFC normalizer refuses are counted in *num_refused.
int CheckEncodings(const std::string& dir, bool byte_level, int* num_refused) {
  auto tok = LoadTokenizer(DefaultEnv(), dir);
  EXPECT_TRUE(tok.ok()) << tok.status().ToString();
  if (!tok.ok()) return 0;
  const Tokenizer& t = **tok;
  json fixture = ReadJson(dir + "/encodings.json");
  int num_cases = 0;
  for (const json& c : fixture.at("cases")) {
    const std::string text = c.at("text");
    SCOPED_TRACE("text: " + json(text).dump());
    auto ids = t.Encode(text);
    if (!ids.ok() && ids.status().code() == StatusCode::kNotSupported && num_refused) {
      ++*num_refused;
      continue;
    }
    EXPECT_TRUE(ids.ok()) << ids.status().ToString();
    if (!ids.ok()) continue;
    EXPECT_EQ(*ids, c.at("ids").get<std::vector<int32_t>>());
    auto with_special = t.EncodeWithOptions(text, {.add_special_tokens = true});
    EXPECT_TRUE(with_special.ok());
    if (with_special.ok()) {
      EXPECT_EQ(*with_special, c.at("ids_special").get<std::vector<int32_t>>());
    }
    if (c.contains("ids_no_parse")) {
      EXPECT_EQ(*t.Encode(text, /*parse_special=*/false),
                c.at("ids_no_parse").get<std::vector<int32_t>>());
    }
    const auto hf_ids = c.at("ids").get<std::vector<int32_t>>();
    EXPECT_EQ(t.Decode(hf_ids), c.at("decoded").get<std::string>());
    EXPECT_EQ(t.Decode(hf_ids, /*skip_special=*/true), c.at("decoded_skip").get<std::string>());
    if (byte_level) {
      EXPECT_EQ(t.Decode(*ids), text);  // byte-level BPE is lossless
    }
    ++num_cases;
  }
  return num_cases;
}

TEST_P(TokenizerParity, EncodingsMatchHuggingFace) {
  const std::string dir = ParityDir() + "/tokenizers/" + GetParam();
  SKIP_IF_MISSING(dir + "/encodings.json");
  EXPECT_GT(CheckEncodings(dir, GetParam().rfind("bpe", 0) == 0, nullptr), 100);
}

// Real checkpoints' tokenizers are not shipped (size, licences). Point
// KVKEEP_REAL_TOKENIZERS_DIR at a directory of <name>/tokenizer.json and run
// `gen_parity.py --encode-real DIR` first; every <name> is then checked like the fixtures.
TEST(RealTokenizerParity, EncodingsMatchHuggingFace) {
  const char* dir = std::getenv("KVKEEP_REAL_TOKENIZERS_DIR");
  if (dir == nullptr) GTEST_SKIP() << "KVKEEP_REAL_TOKENIZERS_DIR is not set";
  int num_dirs = 0;
  for (const auto& entry : fs::directory_iterator(dir)) {
    if (!fs::exists(entry.path() / "encodings.json")) continue;
    SCOPED_TRACE(entry.path().string());
    int num_refused = 0;
    int num_cases = CheckEncodings(entry.path().string(), true, &num_refused);
    EXPECT_GT(num_cases, 100);
    EXPECT_LE(num_refused, 2) << "cases refused by the NFC check";
    ++num_dirs;
  }
  EXPECT_GT(num_dirs, 0);
}

INSTANTIATE_TEST_SUITE_P(Trained, TokenizerParity,
                         ::testing::Values("bpe_llama3", "bpe_qwen2", "bpe_gpt2",
                                           "wordpiece_uncased", "wordpiece_cased"));

// ---- models -----------------------------------------------------------------------------

std::vector<float> ReadTensor(const SafetensorsFile& file, const std::string& name,
                              std::vector<int64_t>* shape) {
  const TensorView* t = file.Find(name);
  EXPECT_NE(t, nullptr) << name;
  if (t == nullptr) return {};
  EXPECT_EQ(t->dtype, DType::kF32);
  *shape = t->shape;
  std::vector<float> out(t->NumElements());
  std::memcpy(out.data(), t->data, out.size() * sizeof(float));
  return out;
}

double RowRelErr(const float* ours, const float* hf, int64_t n) {
  double max_diff = 0, max_ref = 0;
  for (int64_t i = 0; i < n; ++i) {
    max_diff = std::max(max_diff, std::fabs(double{ours[i]} - hf[i]));
    max_ref = std::max(max_ref, std::fabs(double{hf[i]}));
  }
  return max_ref > 0 ? max_diff / max_ref : max_diff;
}

int32_t ArgMax(const float* row, int64_t n) {
  return static_cast<int32_t>(std::max_element(row, row + n) - row);
}

// Two highest ids of a row.
std::pair<int32_t, int32_t> Top2(const float* row, int64_t n) {
  int32_t first = ArgMax(row, n);
  int32_t second = first == 0 ? 1 : 0;
  for (int64_t i = 0; i < n; ++i) {
    if (i != first && row[i] > row[second]) second = static_cast<int32_t>(i);
  }
  return {first, second};
}

class ModelParity : public ::testing::TestWithParam<std::string> {};

// One sequence in blocks 0..max_blocks-1: token p lives in slot p.
ForwardBatch MakeBatch(const std::vector<int32_t>& tokens, int32_t first_pos, bool all_logits,
                       int32_t max_blocks) {
  ForwardBatch b;
  b.token_ids = tokens;
  const int32_t n = static_cast<int32_t>(tokens.size());
  for (int32_t i = 0; i < n; ++i) {
    b.positions.push_back(first_pos + i);
    b.slot_mapping.push_back(first_pos + i);  // block p / bs at offset p % bs, identity table
    if (all_logits || i == n - 1) b.logit_rows.push_back(i);
  }
  b.q_start = {0, n};
  b.kv_len = {first_pos + n};
  b.max_blocks_per_seq = max_blocks;
  for (int32_t i = 0; i < max_blocks; ++i) b.block_tables.push_back(i);
  return b;
}

TEST_P(ModelParity, PrefillAndDecodeLogitsMatchHuggingFace) {
  const std::string dir = ParityDir() + "/" + GetParam();
  SKIP_IF_MISSING(dir + "/parity.json");
  Env* env = DefaultEnv();
  json meta = ReadJson(dir + "/parity.json");
  auto config = LoadModelConfig(env, dir);
  ASSERT_TRUE(config.ok()) << config.status().ToString();
  EXPECT_EQ(config->architecture, meta.at("arch").get<std::string>());
  EXPECT_EQ(config->tie_word_embeddings, meta.at("tie_word_embeddings").get<bool>());
  auto weights = ModelWeights::Load(env, dir, *config);
  ASSERT_TRUE(weights.ok()) << weights.status().ToString();
  BackendOptions options;
  options.block_size = 16;
  options.num_kv_blocks = 8;
  options.kv_dtype = KvDType::kF32;
  auto backend = CreateCpuBackend(**weights, options);
  ASSERT_TRUE(backend.ok()) << backend.status().ToString();
  auto logits_file = SafetensorsFile::Open(env, dir + "/logits.safetensors");
  ASSERT_TRUE(logits_file.ok()) << logits_file.status().ToString();
  auto tok = LoadTokenizer(env, dir);
  ASSERT_TRUE(tok.ok()) << tok.status().ToString();
  const int64_t vocab = config->vocab_size;
  const int32_t max_blocks = options.num_kv_blocks;

  const json& prompts = meta.at("prompts");
  ASSERT_FALSE(prompts.empty());
  for (size_t p = 0; p < prompts.size(); ++p) {
    SCOPED_TRACE("prompt " + std::to_string(p));
    const auto ids = prompts[p].at("ids").get<std::vector<int32_t>>();
    const auto greedy = prompts[p].at("greedy").get<std::vector<int32_t>>();
    const auto gaps = prompts[p].at("top2_gaps").get<std::vector<double>>();
    ASSERT_EQ(greedy.size(), 9u);
    const int32_t n = static_cast<int32_t>(ids.size());
    ASSERT_LE(n + 8, max_blocks * options.block_size);
    // Our tokenizer gives HF's prompt ids (the fixture truncates to 48 tokens).
    auto ours_ids = (*tok)->Encode(prompts[p].at("text").get<std::string>());
    ASSERT_TRUE(ours_ids.ok());
    ASSERT_GE(ours_ids->size(), ids.size());
    EXPECT_TRUE(std::equal(ids.begin(), ids.end(), ours_ids->begin()));

    std::vector<int64_t> shape;
    const std::vector<float> hf_prefill =
        ReadTensor(**logits_file, "prompt" + std::to_string(p) + ".prefill", &shape);
    ASSERT_EQ(shape, (std::vector<int64_t>{n, vocab}));
    const std::vector<float> hf_decode =
        ReadTensor(**logits_file, "prompt" + std::to_string(p) + ".decode", &shape);
    ASSERT_EQ(shape, (std::vector<int64_t>{8, vocab}));

    std::vector<float> logits;
    ASSERT_TRUE((*backend)->Forward(MakeBatch(ids, 0, true, max_blocks), &logits).ok());
    ASSERT_EQ(logits.size(), static_cast<size_t>(n * vocab));
    double worst = 0;
    for (int32_t r = 0; r < n; ++r) {
      double err = RowRelErr(&logits[r * vocab], &hf_prefill[r * vocab], vocab);
      worst = std::max(worst, err);
      EXPECT_LE(err, kRelTol) << "prefill row " << r;
    }
    auto check_greedy = [&](const float* ours, const float* hf, int step) {
      auto [hf1, hf2] = Top2(hf, vocab);
      EXPECT_EQ(hf1, greedy[step]);
      int32_t mine = ArgMax(ours, vocab);
      double scale = 0;
      for (int64_t v = 0; v < vocab; ++v) scale = std::max(scale, std::fabs(double{hf[v]}));
      if (gaps[step] < kRelTol * scale) {
        EXPECT_TRUE(mine == hf1 || mine == hf2) << "step " << step;
      } else {
        EXPECT_EQ(mine, greedy[step]) << "greedy step " << step;
      }
    };
    check_greedy(&logits[(n - 1) * vocab], &hf_prefill[(n - 1) * vocab], 0);

    // Eight decode steps, teacher-forced with HF's greedy tokens.
    for (int32_t s = 0; s < 8; ++s) {
      ASSERT_TRUE(
          (*backend)->Forward(MakeBatch({greedy[s]}, n + s, false, max_blocks), &logits).ok());
      ASSERT_EQ(logits.size(), static_cast<size_t>(vocab));
      double err = RowRelErr(logits.data(), &hf_decode[s * vocab], vocab);
      worst = std::max(worst, err);
      EXPECT_LE(err, kRelTol) << "decode step " << s;
      check_greedy(logits.data(), &hf_decode[s * vocab], s + 1);
    }
    RecordProperty("worst_rel_err_prompt" + std::to_string(p), std::to_string(worst));
  }
}

INSTANTIATE_TEST_SUITE_P(RandomWeights, ModelParity, ::testing::Values("llama", "qwen2", "qwen3"));

}  // namespace
}  // namespace kvkeep
