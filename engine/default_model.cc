#include "engine/default_model.h"

namespace kvkeep {

std::vector<std::string> DefaultModelCandidates(Env* env) {
  std::vector<std::string> out;
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

}  // namespace kvkeep
