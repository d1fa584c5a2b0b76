// Where the default model is looked for, and the fallback to the synthetic tiny model.
#include "engine/default_model.h"

#include <gtest/gtest.h>

#include <map>
#include <set>

#include "engine/model_config.h"
#include "tests/testlib/test_util.h"

namespace kvkeep {
namespace {

// The real filesystem, except that environment variables come from a map and the
// system-wide model directory is hidden (this machine may have a model installed there).
class TestEnv final : public Env {
 public:
  using Vars = std::map<std::string, std::string>;
  explicit TestEnv(Vars vars) : vars_(std::move(vars)) {}
  Result<std::string> ReadFile(const std::string& p) override { return base_->ReadFile(p); }
  Status WriteFileAtomic(const std::string& p, std::string_view c) override {
    return base_->WriteFileAtomic(p, c);
  }
  Result<std::unique_ptr<MappedFile>> MapFile(const std::string& p) override {
    return base_->MapFile(p);
  }
  bool FileExists(const std::string& p) override {
    return !p.starts_with("/var/lib/kvkeep/") && base_->FileExists(p);
  }
  Status CreateDirs(const std::string& p, int mode) override { return base_->CreateDirs(p, mode); }
  Result<std::vector<std::string>> ListDir(const std::string& p) override {
    return base_->ListDir(p);
  }
  Status RemoveFile(const std::string& p) override { return base_->RemoveFile(p); }
  std::string GetEnvVar(const char* name) override {
    auto it = vars_.find(name);
    return it == vars_.end() ? "" : it->second;
  }

 private:
  Env* base_ = DefaultEnv();
  std::map<std::string, std::string> vars_;
};

TEST(DefaultModel, CandidatesFollowXdgThenVarLib) {
  TestEnv xdg(TestEnv::Vars{{"HOME", "/home/u"}, {"XDG_DATA_HOME", "/data"}});
  EXPECT_EQ(DefaultModelCandidates(&xdg),
            (std::vector<std::string>{"/data/kvkeep/models/SmolLM2-135M-Instruct.Q4_1.gguf",
                                      "/var/lib/kvkeep/models/SmolLM2-135M-Instruct.Q4_1.gguf"}));
  TestEnv home(TestEnv::Vars{{"HOME", "/home/u"}});
  EXPECT_EQ(DefaultModelCandidates(&home)[0],
            "/home/u/.local/share/kvkeep/models/SmolLM2-135M-Instruct.Q4_1.gguf");
  EXPECT_EQ(DefaultSyntheticModelDir(&home), "/home/u/.local/share/kvkeep/models/tiny");
  TestEnv none(TestEnv::Vars{});
  EXPECT_EQ(DefaultModelCandidates(&none).size(), 1u);
  TestEnv override(TestEnv::Vars{{"HOME", "/home/u"}, {"KVKEEP_MODELS_DIR", "/m"}});
  EXPECT_EQ(DefaultModelCandidates(&override),
            std::vector<std::string>{"/m/SmolLM2-135M-Instruct.Q4_1.gguf"});
}

TEST(DefaultModel, RequestedPathWins) {
  TestEnv env(TestEnv::Vars{{"HOME", "/nonexistent"}});
  EXPECT_EQ(*ResolveModelPath(&env, "/models/x.gguf", "/unused"), "/models/x.gguf");
}

TEST(DefaultModel, InstalledModelIsUsed) {
  testing::TempDir dir;
  TestEnv env(TestEnv::Vars{{"XDG_DATA_HOME", dir.path()}});
  const std::string path = DefaultModelCandidates(&env)[0];
  ASSERT_TRUE(env.CreateDirs(dir.path() + "/kvkeep/models", 0755).ok());
  ASSERT_TRUE(env.WriteFileAtomic(path, "GGUF").ok());
  EXPECT_EQ(DefaultModelPath(&env), path);
  EXPECT_EQ(*ResolveModelPath(&env, "", dir.File("tiny")), path);
  EXPECT_FALSE(env.FileExists(dir.File("tiny")));  // no fallback made
}

TEST(DefaultModel, FallsBackToTheSyntheticTinyModel) {
  testing::TempDir dir;
  TestEnv env(TestEnv::Vars{{"XDG_DATA_HOME", dir.path()}});
  auto resolved = ResolveModelPath(&env, "", dir.File("tiny"));
  ASSERT_TRUE(resolved.ok()) << resolved.status().ToString();
  EXPECT_EQ(*resolved, dir.File("tiny"));
  auto config = LoadModelConfig(&env, *resolved);
  ASSERT_TRUE(config.ok()) << config.status().ToString();
  EXPECT_EQ(config->num_layers, 4);  // the tiny preset
  // A second call reuses it.
  EXPECT_EQ(*ResolveModelPath(&env, "", dir.File("tiny")), dir.File("tiny"));
}

}  // namespace
}  // namespace kvkeep
