// ModelIdentity: the model part of every KV block's name (HashScope::model_id_hash). Blocks
// on the disk tier outlive the process, so two different models must never share a scope
// and one model must keep its scope across restarts, renames and moves. The identity is
// therefore computed from what the model *is*, never from where it lives:
//
//   XXH64(seed 0) over, in order: "kvkeep-model/1", the ModelConfig fields that shape the
//   computation (architecture, sizes, heads, RoPE, norms, flags), and for every tensor in
//   name order: its name, dtype, shape and a content sample (the XXH64 of up to 16 evenly
//   spaced 4 KiB windows of its bytes, all of it when smaller than 64 KiB).
//
// The sample makes two fine-tunes of one architecture differ (a fine-tune changes every
// weight matrix) without reading a whole checkpoint at start-up. Both the daemon and the
// CLI use it, for safetensors and GGUF weights alike (ModelWeights::tensors()).
//
// Thread-safety: pure functions.
#pragma once

#include <cstdint>
#include <string>

#include "engine/model_config.h"

namespace kvkeep {

class ModelWeights;

// The identity as 16 lowercase hex digits (EngineOptions::model_id takes it).
std::string ModelIdentity(const ModelConfig& config, const ModelWeights& weights);

}  // namespace kvkeep
