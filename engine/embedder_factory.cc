#include "engine/embedder_factory.h"

#include <unistd.h>

#include <vector>

#include "engine/bert_encoder.h"
#include "engine/default_model.h"
#include "engine/model_embedder.h"

namespace kvkeep {

std::string DefaultSentenceModelDir(Env* env) {
  std::string base;
  if (::geteuid() == 0) {
    base = "/var/lib/kvkeep/models";
  } else if (std::string xdg = env->GetEnvVar("XDG_DATA_HOME"); !xdg.empty()) {
    base = JoinPath(xdg, "kvkeep/models");
  } else {
    base = JoinPath(env->GetEnvVar("HOME"), ".local/share/kvkeep/models");
  }
  return JoinPath(base, kDefaultSentenceModel);
}

Result<std::unique_ptr<index::Embedder>> MakeEmbedder(Env* env, const EmbedderSpec& spec,
                                                      std::string* resolved_name) {
  const std::string model_dir =
      spec.model_dir.empty() ? DefaultSentenceModelDir(env) : spec.model_dir;
  std::string name = spec.name;
  if (name == "default") {
    name = env->FileExists(JoinPath(model_dir, "model.safetensors")) ? "hybrid" : "hashed";
  }
  if (resolved_name) *resolved_name = name;
  if (name == "hashed") {
    return std::unique_ptr<index::Embedder>(std::make_unique<index::HashedEmbedder>(spec.hashed));
  }
  if (name == "bert" || name == "hybrid") {
    auto bert = BertEncoder::Load(env, model_dir);
    if (!bert.ok()) {
      return bert.status().WithContext("sentence model " + model_dir +
                                       " (install it with scripts/setup)");
    }
    if (name == "bert") return std::unique_ptr<index::Embedder>(std::move(*bert));
    if (!(spec.dense_weight > 0.0f && spec.dense_weight < 1.0f)) {
      return Status::InvalidArgument("hybrid: dense weight must be in (0, 1)");
    }
    std::vector<index::CombinedEmbedder::Part> parts;
    parts.push_back({std::move(*bert), spec.dense_weight});
    parts.push_back(
        {std::make_unique<index::HashedEmbedder>(spec.hashed), 1.0f - spec.dense_weight});
    return std::unique_ptr<index::Embedder>(
        std::make_unique<index::CombinedEmbedder>(std::move(parts), "hybrid"));
  }
  if (name == "model") {
    const std::string llm = spec.llm_path.empty() ? DefaultModelPath(env) : spec.llm_path;
    auto model = ModelKeyEmbedder::Load(env, llm);
    if (!model.ok()) {
      return model.status().WithContext("model embedder: LLM " + llm +
                                        " (install the default with scripts/setup)");
    }
    return std::unique_ptr<index::Embedder>(std::move(*model));
  }
  return Status::InvalidArgument("unknown embedder '" + spec.name +
                                 "' (hashed, bert, hybrid, model, default)");
}

}  // namespace kvkeep
