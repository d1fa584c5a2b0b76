// ModelConfig: the architecture of a Llama-family model, read from a Hugging Face
// config.json (plus generation_config.json for EOS ids when present).
// Supported: LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM, Qwen3ForCausalLM.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "base/file.h"
#include "base/status.h"
#include "kernels/cpu/ops.h"

namespace kvkeep {

struct ModelConfig {
  std::string architecture;  // e.g. "LlamaForCausalLM"
  std::string model_type;    // e.g. "llama"
  int32_t vocab_size = 0;
  int32_t hidden_size = 0;
  int32_t intermediate_size = 0;
  int32_t num_layers = 0;
  int32_t num_q_heads = 0;
  int32_t num_kv_heads = 0;
  int32_t head_dim = 0;  // config "head_dim", else hidden_size / num_q_heads
  int32_t max_position_embeddings = 0;
  float rms_norm_eps = 1e-6f;
  cpu::RopeParams rope;  // theta and llama3 scaling
  bool tie_word_embeddings = false;
  bool attention_bias = false;  // Qwen2: q/k/v projections carry a bias
  bool qk_norm = false;         // Qwen3: RMSNorm on q and k per head before RoPE
  int32_t sliding_window = 0;   // 0: none. Mistral's window; refused if shorter than context.
  std::string torch_dtype;      // "bfloat16", "float16", "float32"
  std::vector<int32_t> eos_token_ids;
  int32_t bos_token_id = -1;

  // Parameters in the weights (embedding counted once when tied).
  int64_t NumParameters() const;
  // Bytes of K and V per token across all layers for a KV element of `elem_bytes`.
  int64_t KvBytesPerToken(int elem_bytes) const {
    return int64_t{2} * num_layers * num_kv_heads * head_dim * elem_bytes;
  }
};

// Parses dir/config.json (and dir/generation_config.json if present), or, when model_dir is
// a .gguf file, the equivalent of config.json built from its metadata (GgufConfigJson). Unknown
// architectures are NotSupported, naming the architecture.
Result<ModelConfig> LoadModelConfig(Env* env, const std::string& model_dir);
Result<ModelConfig> ParseModelConfig(const std::string& config_json,
                                     const std::string& generation_config_json);

}  // namespace kvkeep
