// A fresh synthetic model in a temp dir (seeded by TestSeed(), logged), a CPU backend over
// it, and the fixture the model-level tests share (decode, episode caches, episode turns):
// the "tiny" model and a generator seeded like it. Header-only: the tests that use it link
// the engine; kvkeep_testlib itself does not.
#pragma once

#include <gtest/gtest.h>

#include <memory>
#include <random>
#include <string>

#include "base/file.h"
#include "engine/backend.h"
#include "engine/model_config.h"
#include "engine/model_weights.h"
#include "engine/synthetic_model.h"
#include "engine/tokenizer.h"
#include "tests/testlib/test_util.h"

namespace kvkeep::testing {

struct TestModel {
  TempDir dir;
  uint64_t seed = 0;
  ModelConfig config;
  std::unique_ptr<ModelWeights> weights;
  std::unique_ptr<Tokenizer> tokenizer;
};

// Writes preset into a new temp dir with the test seed and loads it. Fails the test on error.
inline std::unique_ptr<TestModel> MakeTestModel(const std::string& preset = "tiny") {
  auto m = std::make_unique<TestModel>();
  m->seed = TestSeed();
  SCOPED_TRACE("model seed " + std::to_string(m->seed));
  Status st = MakeSyntheticModel(preset, m->seed, m->dir.path());
  EXPECT_TRUE(st.ok()) << st.ToString();
  if (!st.ok()) return nullptr;
  auto config = LoadModelConfig(DefaultEnv(), m->dir.path());
  EXPECT_TRUE(config.ok()) << config.status().ToString();
  if (!config.ok()) return nullptr;
  m->config = *config;
  auto weights = ModelWeights::Load(DefaultEnv(), m->dir.path(), m->config);
  EXPECT_TRUE(weights.ok()) << weights.status().ToString();
  if (!weights.ok()) return nullptr;
  m->weights = std::move(weights).value();
  auto tok = LoadTokenizer(DefaultEnv(), m->dir.path());
  EXPECT_TRUE(tok.ok()) << tok.status().ToString();
  if (!tok.ok()) return nullptr;
  m->tokenizer = std::move(tok).value();
  return m;
}

inline std::unique_ptr<Backend> MakeBackend(const ModelWeights& weights, int32_t num_blocks,
                                            int32_t block_size = 16,
                                            KvDType dtype = KvDType::kF32) {
  BackendOptions o;
  o.num_kv_blocks = num_blocks;
  o.block_size = block_size;
  o.kv_dtype = dtype;
  auto b = CreateCpuBackend(weights, o);
  EXPECT_TRUE(b.ok()) << b.status().ToString();
  return b.ok() ? std::move(b).value() : nullptr;
}

// The tiny model (model_) and a generator seeded like it (rng_), for each test. Base is
// ::testing::Test or a ::testing::TestWithParam<T> (TinyModelTest is the plain one).
template <typename Base>
class TinyModelFixture : public Base {
 protected:
  void SetUp() override {
    model_ = MakeTestModel("tiny");
    ASSERT_NE(model_, nullptr);
    rng_.seed(model_->seed);
  }
  std::unique_ptr<TestModel> model_;
  std::mt19937_64 rng_;
};
using TinyModelTest = TinyModelFixture<::testing::Test>;

}  // namespace kvkeep::testing
