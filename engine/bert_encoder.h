// BertEncoder: a BERT-family sentence encoder on the CPU (the `bert` embedder), loaded
// from a sentence-transformers model directory:
//   config.json (model_type "bert", hidden_act "gelu"), tokenizer.json (WordPiece),
//   model.safetensors (F32), and optionally sentence_bert_config.json (max_seq_length)
//   and 1_Pooling/config.json (must say mean pooling when present).
// A text is tokenised with [CLS]/[SEP], cut to max_seq_length tokens (the text is cut,
// [SEP] kept, as Hugging Face truncates), run through the encoder (post-LayerNorm BERT,
// exact erf GELU), mean-pooled over its tokens and L2-normalised: what
// sentence-transformers computes for all-MiniLM-L6-v2.
//
// The matrix products go through the engine's kernels (cpu::Matmul, OpenBLAS).
// Thread-safety: Embed is not re-entrant (it reuses scratch buffers); one encoder per
// thread, or serialise.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "base/file.h"
#include "engine/tokenizer.h"
#include "index/embedder.h"

namespace kvkeep {

struct BertConfig {
  int32_t vocab_size = 0;
  int32_t hidden_size = 0;
  int32_t num_layers = 0;
  int32_t num_heads = 0;
  int32_t intermediate_size = 0;
  int32_t max_position_embeddings = 0;
  int32_t type_vocab_size = 0;
  float layer_norm_eps = 1e-12f;
  int32_t max_seq_length = 256;  // sentence_bert_config.json, capped by the positions
};

class BertEncoder final : public index::Embedder {
 public:
  // NotFound when the directory lacks a file; NotSupported for other architectures or
  // dtypes; Corruption for malformed files.
  static Result<std::unique_ptr<BertEncoder>> Load(Env* env, const std::string& model_dir);
  ~BertEncoder() override;

  std::string name() const override { return "bert"; }
  int32_t dim() const override { return config_.hidden_size; }
  Result<std::vector<float>> Embed(const std::vector<std::string>& texts) override;

  const BertConfig& config() const { return config_; }
  // Token ids of one text as the encoder sees it (specials added, truncated).
  Result<std::vector<int32_t>> Tokenize(const std::string& text) const;

 private:
  struct Layer;
  struct Weights;
  BertEncoder();
  // Mean-pooled, unnormalised hidden states of one token sequence into out[hidden].
  void Encode(const std::vector<int32_t>& ids, float* out);

  BertConfig config_;
  std::unique_ptr<Tokenizer> tokenizer_;
  std::unique_ptr<Weights> weights_;
  std::vector<float> x_, q_, k_, v_, ctx_, tmp_, ffn_, probs_;  // scratch
};

}  // namespace kvkeep
