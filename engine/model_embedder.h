// ModelKeyEmbedder: the served LLM's own keys as a text embedding (SentenceKV,
// arXiv 2504.00970). Each text is tokenized with the model's tokenizer (no special
// tokens), prefilled on a private CPU backend at positions 0.., and its post-RoPE keys are
// read back from the KV pool, averaged over the text's tokens per layer and KV head, and
// concatenated over the layers used, then L2-normalised. dim() = layers_used *
// num_kv_heads * head_dim. The forward is Backend::Forward (no second transformer).
//
// Layers used: [first_layer, num_layers); by default the last half, whose keys carry the
// most semantic and least positional/lexical signal (SentenceKV pools deep layers too).
//
// Centring: Observe(texts) adds the texts' pooled keys to a running mean (the history's
// mean key, like the hashed IDF it learns per conversation); once anything is observed,
// Embed subtracts that mean before normalising, removing the direction every text shares.
// Pooled vectors of observed texts are kept so a later Embed of the same text is free.
//
// Thread-safety: none (one backend, reused across calls). Owns its weights, tokenizer
// and backend.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

#include "base/file.h"
#include "engine/backend.h"
#include "engine/model_weights.h"
#include "engine/tokenizer.h"
#include "index/embedder.h"

namespace kvkeep {

struct ModelKeyEmbedderOptions {
  int32_t first_layer = -1;   // -1: num_layers / 2 (the last half)
  int32_t max_tokens = 1024;  // longer texts are cut to their first max_tokens tokens
  int32_t num_threads = 0;    // CPU backend threads; 0 = all cores
  // Weights as loaded (GGUF quantised matrices stay quantised), like the served CPU path.
  bool cpu_quantized_weights = true;
};

class ModelKeyEmbedder final : public index::Embedder {
 public:
  // Loads the model at model_path (a GGUF file or a model directory).
  static Result<std::unique_ptr<ModelKeyEmbedder>> Load(
      Env* env, const std::string& model_path, const ModelKeyEmbedderOptions& options = {});

  std::string name() const override { return "model"; }
  int32_t dim() const override { return dim_; }
  int32_t first_layer() const { return first_layer_; }
  Result<std::vector<float>> Embed(const std::vector<std::string>& texts) override;
  void Observe(const std::vector<std::string>& texts) override;

 private:
  // The un-normalised mean of text's keys (zeros when it has no token), cached.
  Result<const std::vector<float>*> Pooled(const std::string& text);
  ModelKeyEmbedder() = default;
  // Mean-pools the keys of tokens (already cut to max_tokens) into out[0, dim).
  Status EmbedTokens(const std::vector<int32_t>& tokens, float* out);

  ModelKeyEmbedderOptions options_;
  std::unique_ptr<ModelWeights> weights_;
  std::unique_ptr<Tokenizer> tokenizer_;
  std::unique_ptr<Backend> backend_;
  std::vector<int32_t> blocks_;  // the scratch blocks, 0..num_blocks-1
  std::vector<uint8_t> raw_;     // one block's bytes
  std::unordered_map<std::string, std::vector<float>> pooled_;  // observed texts
  std::vector<double> observed_sum_;                            // [dim]
  int64_t num_observed_ = 0;
  int32_t first_layer_ = 0;
  int32_t dim_ = 0;
};

}  // namespace kvkeep
