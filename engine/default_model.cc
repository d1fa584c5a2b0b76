#include "engine/default_model.h"

#include <spdlog/spdlog.h>

#include "engine/synthetic_model.h"

namespace kvkeep {

std::vector<std::string> DefaultModelCandidates(Env* env) {
  std::vector<std::string> out;
  const std::string models_dir = env->GetEnvVar("KVKEEP_MODELS_DIR");
  if (!models_dir.empty()) return {JoinPath(models_dir, kDefaultModelFile)};
  std::string data_home = env->GetEnvVar("XDG_DATA_HOME");
  if (data_home.empty()) {
    std::string home = env->GetEnvVar("HOME");
    if (!home.empty()) data_home = JoinPath(home, ".local/share");
  }
  if (!data_home.empty()) out.push_back(JoinPath(data_home, "kvkeep/models/") + kDefaultModelFile);
  out.push_back(std::string("/var/lib/kvkeep/models/") + kDefaultModelFile);
  return out;
}

std::string DefaultModelPath(Env* env) {
  std::vector<std::string> candidates = DefaultModelCandidates(env);
  for (const std::string& path : candidates) {
    if (env->FileExists(path)) return path;
  }
  return candidates.front();
}

std::string DefaultSyntheticModelDir(Env* env) {
  std::string first = DefaultModelCandidates(env).front();
  return first.substr(0, first.find_last_of('/') + 1) + "tiny";
}

Result<std::string> ResolveModelPath(Env* env, const std::string& requested,
                                     const std::string& synthetic_dir) {
  if (!requested.empty()) return requested;
  const std::string path = DefaultModelPath(env);
  if (env->FileExists(path)) return path;
  spdlog::info(
      "the default model {} is not installed (scripts/setup installs it): using the "
      "synthetic tiny model (random weights) in {}",
      path, synthetic_dir);
  if (!env->FileExists(JoinPath(synthetic_dir, "config.json"))) {
    SyntheticModelOptions options;
    options.preset = "tiny";
    options.force = true;
    RETURN_IF_ERROR(
        MakeSyntheticModel(env, synthetic_dir, options).WithContext("making the tiny model"));
  }
  return synthetic_dir;
}

}  // namespace kvkeep
