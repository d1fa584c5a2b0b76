// What a GGUF file says about its model, translated into kvkeep's Hugging Face-shaped
// descriptions so that one code path serves both formats:
//   - the architecture (llama.* keys) as the equivalent config.json, parsed by
//     ParseModelConfig (so every check it makes applies to GGUF too);
//   - the tokenizer (tokenizer.ggml.*) as the equivalent tokenizer.json, loaded by the
//     byte-level BPE tokenizer;
//   - the chat template (tokenizer.chat_template) as tokenizer_config.json;
//   - the GGUF tensor names mapped to HF names, with the Q/K row order llama.cpp's
//     converter applies undone.
//
// Supported: general.architecture "llama" (Llama, SmolLM, Mistral-style dense models);
// tokenizer.ggml.model "gpt2" with tokenizer.ggml.pre smollm, llama-bpe, qwen2, gpt2 (or
// absent: gpt2). Anything else is NotSupported naming the value.
//
// Thread-safety: pure functions of an immutable GgufFile.
#pragma once

#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "base/status.h"
#include "engine/gguf_file.h"

namespace kvkeep {

// config.json equivalent of the file's architecture metadata.
Result<nlohmann::json> GgufConfigJson(const GgufFile& file);
// tokenizer.json equivalent of the file's tokenizer metadata.
Result<nlohmann::json> GgufTokenizerJson(const GgufFile& file);
// tokenizer_config.json equivalent: {"chat_template": ...}; NotFound when the file has none.
Result<nlohmann::json> GgufTokenizerConfigJson(const GgufFile& file);

// One HF tensor and the GGUF tensor it comes from.
struct GgufTensorMapping {
  std::string hf_name;    // "model.layers.0.self_attn.q_proj.weight"
  std::string gguf_name;  // "blk.0.attn_q.weight"
  // Rows are in llama.cpp's interleaved RoPE order: undo with UnpermuteRopeRows.
  bool rope_permuted = false;
  int32_t num_heads = 0;  // heads in the rows (for rope_permuted)
};
// Every GGUF tensor the model uses, by HF name; output.weight only when the file has it.
std::vector<GgufTensorMapping> GgufTensorMappings(const GgufFile& file, int32_t num_layers,
                                                  int32_t num_q_heads, int32_t num_kv_heads);

// Undoes llama.cpp's convert_hf_to_gguf permute() of Q and K projection rows:
// GGUF row h*head_dim + 2*j + s holds HF row h*head_dim + s*head_dim/2 + j.
// w is [num_heads * head_dim][cols] row-major, rewritten in place.
void UnpermuteRopeRows(float* w, int64_t num_heads, int64_t head_dim, int64_t cols);
// The same row permutation on rows of `row_bytes` bytes (quantised rows move as a whole).
void UnpermuteRopeRowBytes(uint8_t* w, int64_t num_heads, int64_t head_dim, int64_t row_bytes);

}  // namespace kvkeep
