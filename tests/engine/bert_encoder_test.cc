// BertEncoder against sentence-transformers: tests/fixtures/minilm/golden.json holds
// all-MiniLM-L6-v2 vectors computed by sentence-transformers (gen_minilm_golden.py); ours
// must reach cosine > 0.999 on every sentence, including one cut at 256 tokens. Needs the
// model that scripts/setup installs (skipped with a message when absent). Also: clear
// errors for missing or foreign model directories, and the embedder factory's names.
#include "engine/bert_encoder.h"

#include <gtest/gtest.h>

#include <cmath>
#include <nlohmann/json.hpp>

#include "engine/embedder_factory.h"
#include "tests/testlib/test_util.h"

namespace kvkeep {
namespace {

std::string ModelDir() { return DefaultSentenceModelDir(DefaultEnv()); }

#define REQUIRE_SENTENCE_MODEL()                                                      \
  do {                                                                                \
    if (!DefaultEnv()->FileExists(ModelDir() + "/model.safetensors"))                 \
      GTEST_SKIP() << "no sentence model at " << ModelDir() << ": run scripts/setup"; \
  } while (0)

TEST(BertEncoder, MatchesSentenceTransformers) {
  REQUIRE_SENTENCE_MODEL();
  auto enc = BertEncoder::Load(DefaultEnv(), ModelDir());
  ASSERT_TRUE(enc.ok()) << enc.status().ToString();
  EXPECT_EQ((*enc)->dim(), 384);
  auto text = DefaultEnv()->ReadFile(testing::FixturesDir() + "/minilm/golden.json");
  ASSERT_TRUE(text.ok());
  const auto golden = nlohmann::json::parse(*text);
  EXPECT_EQ((*enc)->config().max_seq_length, golden["max_seq_length"].get<int>());
  std::vector<std::string> texts;
  for (const auto& item : golden["items"]) texts.push_back(item["text"].get<std::string>());
  ASSERT_GE(texts.size(), 20u);
  auto vectors = (*enc)->Embed(texts);
  ASSERT_TRUE(vectors.ok()) << vectors.status().ToString();
  for (size_t i = 0; i < texts.size(); ++i) {
    const auto& ref = golden["items"][i]["vector"];
    ASSERT_EQ(ref.size(), 384u);
    double dot = 0, norm_ref = 0, norm_ours = 0;
    for (size_t d = 0; d < 384; ++d) {
      const double r = ref[d].get<double>();
      const double o = (*vectors)[i * 384 + d];
      dot += r * o;
      norm_ref += r * r;
      norm_ours += o * o;
    }
    EXPECT_NEAR(norm_ours, 1.0, 1e-4);
    EXPECT_GT(dot / std::sqrt(norm_ref * norm_ours), 0.999) << "sentence " << i << ": " << texts[i];
  }
  // The long sentence really was cut.
  auto ids = (*enc)->Tokenize(texts[16]);
  ASSERT_TRUE(ids.ok());
  EXPECT_EQ(ids->size(), 256u);
}

TEST(BertEncoder, EmbeddingIsPerTextNotPerBatch) {
  REQUIRE_SENTENCE_MODEL();
  auto enc = BertEncoder::Load(DefaultEnv(), ModelDir());
  ASSERT_TRUE(enc.ok());
  auto both = (*enc)->Embed({"a short one", "a somewhat longer sentence than the first"});
  auto alone = (*enc)->Embed({"a somewhat longer sentence than the first"});
  ASSERT_TRUE(both.ok() && alone.ok());
  for (size_t d = 0; d < 384; ++d) EXPECT_FLOAT_EQ((*both)[384 + d], (*alone)[d]);
}

TEST(BertEncoder, ClearErrorsForBadDirectories) {
  testing::TempDir dir;
  auto missing = BertEncoder::Load(DefaultEnv(), dir.File("nothing"));
  EXPECT_FALSE(missing.ok());
  ASSERT_TRUE(
      DefaultEnv()
          ->WriteFileAtomic(dir.File("config.json"), R"({"model_type": "llama", "hidden_size": 8})")
          .ok());
  auto foreign = BertEncoder::Load(DefaultEnv(), dir.path());
  EXPECT_EQ(foreign.status().code(), StatusCode::kNotSupported) << foreign.status().ToString();
  ASSERT_TRUE(DefaultEnv()->WriteFileAtomic(dir.File("config.json"), "{not json").ok());
  EXPECT_EQ(BertEncoder::Load(DefaultEnv(), dir.path()).status().code(), StatusCode::kCorruption);
}

TEST(EmbedderFactory, NamesResolve) {
  testing::TempDir dir;
  EmbedderSpec spec;
  spec.model_dir = dir.path();  // no model here
  std::string resolved;
  auto def = MakeEmbedder(DefaultEnv(), spec, &resolved);
  ASSERT_TRUE(def.ok());
  EXPECT_EQ(resolved, "hashed");  // the fallback when the model is not installed
  spec.name = "bert";
  auto bert = MakeEmbedder(DefaultEnv(), spec);
  EXPECT_FALSE(bert.ok());
  EXPECT_NE(bert.status().message().find("scripts/setup"), std::string::npos);
  spec.name = "nonsense";
  EXPECT_TRUE(MakeEmbedder(DefaultEnv(), spec).status().IsInvalidArgument());
}

TEST(EmbedderFactory, HybridIsTheWeightedConcatenation) {
  REQUIRE_SENTENCE_MODEL();
  EmbedderSpec spec;
  spec.name = "hybrid";
  spec.dense_weight = 0.3f;
  auto hybrid = MakeEmbedder(DefaultEnv(), spec);
  ASSERT_TRUE(hybrid.ok()) << hybrid.status().ToString();
  spec.name = "bert";
  auto bert = MakeEmbedder(DefaultEnv(), spec);
  ASSERT_TRUE(bert.ok());
  index::HashedEmbedder hashed;
  const std::vector<std::string> texts = {"we went camping at the lake",
                                          "camping by the lake last summer"};
  auto h = (*hybrid)->Embed(texts);
  auto b = (*bert)->Embed(texts);
  auto l = hashed.Embed(texts);
  ASSERT_TRUE(h.ok() && b.ok() && l.ok());
  const int hd = (*hybrid)->dim(), bd = 384, ld = hashed.dim();
  ASSERT_EQ(hd, bd + ld);
  const double expect = 0.3 * index::Dot(b->data(), b->data() + bd, bd) +
                        0.7 * index::Dot(l->data(), l->data() + ld, ld);
  EXPECT_NEAR(index::Dot(h->data(), h->data() + hd, hd), expect, 1e-5);
}

}  // namespace
}  // namespace kvkeep
