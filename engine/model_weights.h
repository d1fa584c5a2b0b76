// ModelWeights: every tensor of a Llama-family model, located in model.safetensors or in
// sharded model-*.safetensors through model.safetensors.index.json, memory-mapped; or in a
// single .gguf file, whose tensors (quantised or not) are dequantised to fp32 at load under
// their HF names, with the Q/K row permutation of llama.cpp's converter undone; Q8_0 and
// Q4_1 matrices are also kept as blocks (GetQuantized) for the CPU's quantised kernels.
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

#include <deque>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "engine/gguf_types.h"
#include "engine/model_config.h"
#include "engine/safetensors.h"

namespace kvkeep {

class GgufFile;

enum class WeightsFormat { kSafetensors, kGguf };

// One tensor as stored in the model's file(s), for a model-identity hash that is computed
// the same way for both formats. name: the file's own name ("blk.0.attn_q.weight" in GGUF);
// dtype: the stored type ("BF16", "Q4_1"); shape: row-major (GGUF dims reversed).
struct StoredTensorHeader {
  std::string name;
  std::string dtype;
  std::vector<int64_t> shape;
};

// A file the weights were read from: the path as given, and its size.
struct WeightsSourceFile {
  std::string path;
  uint64_t size_bytes = 0;
};

// A GGUF weight matrix also kept in its file's quantised blocks (Q8_0 or Q4_1), with the
// rows in HF order (Q/K rows un-permuted like the fp32 copy). bytes: rows x row_bytes.
struct QuantizedTensor {
  GgmlType type = GgmlType::kQ8_0;
  int64_t rows = 0;
  int64_t cols = 0;
  std::vector<uint8_t> bytes;
};

class ModelWeights {
 public:
  // model_path: an HF directory, or a .gguf file (IsGgufPath).
  static Result<std::unique_ptr<ModelWeights>> Load(Env* env, const std::string& model_path,
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

  // The quantised blocks of a GGUF matrix stored as Q8_0 or Q4_1 (the CPU backend's fast
  // path); nullptr for any other tensor or format. lm_head.weight resolves as Get does.
  const QuantizedTensor* GetQuantized(const std::string& name) const;

  WeightsFormat format() const { return format_; }
  // Every tensor in the loaded files, in file order (safetensors: name order per file).
  const std::vector<StoredTensorHeader>& stored_tensors() const { return stored_tensors_; }
  const std::vector<WeightsSourceFile>& source_files() const { return source_files_; }

 private:
  ModelWeights() = default;
  static Result<std::unique_ptr<ModelWeights>> LoadGguf(Env* env, const std::string& path,
                                                        const ModelConfig& config);
  ModelConfig config_;
  WeightsFormat format_ = WeightsFormat::kSafetensors;
  std::vector<std::unique_ptr<SafetensorsFile>> files_;
  std::map<std::string, const TensorView*, std::less<>> tensors_;
  // GGUF: the dequantised tensors the views point into.
  std::deque<TensorView> owned_views_;
  std::vector<std::vector<float>> owned_data_;
  std::map<std::string, QuantizedTensor, std::less<>> quantized_;
  std::vector<StoredTensorHeader> stored_tensors_;
  std::vector<WeightsSourceFile> source_files_;
};

}  // namespace kvkeep
