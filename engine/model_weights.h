// ModelWeights: every tensor of a Llama-family model, located in model.safetensors or in
// sharded model-*.safetensors through model.safetensors.index.json, memory-mapped.
// Load validates that every tensor the architecture needs is present with the right
// shape (and a supported dtype: F32, BF16, F16) before anything runs; a missing or
// misshapen tensor is InvalidArgument naming it. Tied embeddings: when
// config.tie_word_embeddings, lm_head is the embedding table.
//
// HF tensor names: model.embed_tokens.weight, model.norm.weight, lm_head.weight,
// model.layers.{i}.{input_layernorm,post_attention_layernorm}.weight,
// model.layers.{i}.self_attn.{q,k,v,o}_proj.weight (+ q/k/v .bias when attention_bias),
// model.layers.{i}.self_attn.{q,k}_norm.weight (qk_norm),
// model.layers.{i}.mlp.{gate,up,down}_proj.weight.
#pragma once

#include <map>
#include <memory>
#include <string>
#include <vector>

#include "engine/model_config.h"
#include "engine/safetensors.h"

namespace kvkeep {

class ModelWeights {
 public:
  static Result<std::unique_ptr<ModelWeights>> Load(Env* env, const std::string& model_dir,
                                                    const ModelConfig& config);

  const ModelConfig& config() const { return config_; }
  // REQUIRES: the name is one Load validated (or lm_head.weight, which resolves to the
  // embedding when tied). Returns nullptr otherwise.
  const TensorView* Get(const std::string& name) const;
  // Elements summed over every tensor in the loaded files, including tensors the model does
  // not use; a cross-check against config().NumParameters().
  int64_t NumFileParameters() const;
  // Every loaded tensor by name (engine/model_identity.h hashes them).
  const std::map<std::string, const TensorView*, std::less<>>& tensors() const { return tensors_; }
  // Converts a tensor to fp32 into out (NumElements floats).
  static void ToFloat(const TensorView& t, float* out);
  static std::vector<float> ToFloat(const TensorView& t);

 private:
  ModelWeights() = default;
  ModelConfig config_;
  std::vector<std::unique_ptr<SafetensorsFile>> files_;
  std::map<std::string, const TensorView*, std::less<>> tensors_;
};

}  // namespace kvkeep
