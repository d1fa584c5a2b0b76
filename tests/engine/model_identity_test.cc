#include "engine/model_identity.h"

#include <gtest/gtest.h>

#include "base/file.h"
#include "engine/model_weights.h"
#include "engine/synthetic_model.h"
#include "tests/testlib/test_util.h"

namespace kvkeep {
namespace {

std::string IdentityOf(const std::string& dir) {
  auto config = LoadModelConfig(DefaultEnv(), dir);
  EXPECT_TRUE(config.ok()) << config.status().ToString();
  auto weights = ModelWeights::Load(DefaultEnv(), dir, *config);
  EXPECT_TRUE(weights.ok()) << weights.status().ToString();
  return ModelIdentity(*config, **weights);
}

// Same model in folders of different names: one identity. Same folder name, other
// weights: another identity. Same config, other seed (a "fine-tune"): another identity.
TEST(ModelIdentity, FollowsContentNotFolderName) {
  testing::TempDir root;
  const std::string a = JoinPath(root.path(), "one/model");
  const std::string b = JoinPath(root.path(), "renamed-copy");
  const std::string c = JoinPath(root.path(), "two/model");
  ASSERT_TRUE(MakeSyntheticModel("tiny", 7, a).ok());
  ASSERT_TRUE(MakeSyntheticModel("tiny", 7, b).ok());
  ASSERT_TRUE(MakeSyntheticModel("tiny", 8, c).ok());
  const std::string id_a = IdentityOf(a);
  EXPECT_EQ(id_a.size(), 16u);
  EXPECT_EQ(id_a, IdentityOf(a));  // stable
  EXPECT_EQ(id_a, IdentityOf(b));
  EXPECT_NE(id_a, IdentityOf(c));
}

TEST(ModelIdentity, ConfigChangesIdentity) {
  testing::TempDir root;
  ASSERT_TRUE(MakeSyntheticModel("tiny", 7, root.path()).ok());
  auto config = LoadModelConfig(DefaultEnv(), root.path());
  ASSERT_TRUE(config.ok());
  auto weights = ModelWeights::Load(DefaultEnv(), root.path(), *config);
  ASSERT_TRUE(weights.ok());
  const std::string base = ModelIdentity(*config, **weights);
  ModelConfig other = *config;
  other.rope.theta *= 2;
  EXPECT_NE(ModelIdentity(other, **weights), base);
  other = *config;
  other.rms_norm_eps *= 2;
  EXPECT_NE(ModelIdentity(other, **weights), base);
}

}  // namespace
}  // namespace kvkeep
