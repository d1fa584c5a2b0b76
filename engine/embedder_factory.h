// The embedders by name, and where the bert model lives.
//
//   "hashed": index::HashedEmbedder (no weights; the fallback).
//   "bert":   BertEncoder from the model directory.
//   "hybrid": index::CombinedEmbedder of bert (weight options.dense_weight) and hashed
//             (1 - dense_weight): one inner product mixes dense and lexical similarity.
//   "model":  ModelKeyEmbedder over the LLM at llm_path (engine/model_embedder.h): the
//             served model's mean-pooled post-RoPE keys (SentenceKV).
//   "default": what the daemon uses: hybrid when the model directory is installed,
//             hashed otherwise (never a download).
//
// Thread-safety: the functions are; the embedders they return are not (see each).
#pragma once

#include <memory>
#include <string>

#include "base/file.h"
#include "index/embedder.h"
#include "index/hashed_embedder.h"

namespace kvkeep {

inline constexpr const char* kDefaultSentenceModel = "all-MiniLM-L6-v2";

struct EmbedderSpec {
  std::string name = "default";  // hashed | bert | hybrid | model | default
  std::string model_dir;         // empty: DefaultSentenceModelDir(env)
  std::string llm_path;          // "model" only; empty: DefaultModelPath(env)
  float dense_weight = 0.3f;     // hybrid only (chosen on LoCoMo: docs/episodes.md)
  index::HashedEmbedderOptions hashed;
};

// $XDG_DATA_HOME/kvkeep/models/all-MiniLM-L6-v2 ($HOME/.local/share when XDG_DATA_HOME
// is unset), or /var/lib/kvkeep/models/all-MiniLM-L6-v2 when running as root: where
// scripts/setup installs it.
std::string DefaultSentenceModelDir(Env* env);

// The embedder `spec` names. "default" resolves as described above; `resolved_name`
// (optional) receives what it resolved to.
Result<std::unique_ptr<index::Embedder>> MakeEmbedder(Env* env, const EmbedderSpec& spec,
                                                      std::string* resolved_name = nullptr);

}  // namespace kvkeep
