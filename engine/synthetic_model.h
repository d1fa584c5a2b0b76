// Synthetic models: a complete Hugging Face-style Llama model directory with seeded random
// weights, as vLLM's dummy weights do. It is kvkeep's embedded default and its test model;
// it loads through exactly the code path real checkpoints use. docs/models.md describes the
// presets, the tokenizer and the chat template.
//
// Files written: config.json (LlamaForCausalLM), generation_config.json, model.safetensors,
// tokenizer.json (byte-level BPE: ids 0..255 are the bytes, then 4 special tokens),
// tokenizer_config.json (the "plain" ChatML-shaped chat template).
//
// Weights are a pure function of (preset, seed, dtype): element i of a tensor is derived
// from hash(seed, tensor name, i), so the output is identical whatever the thread count.
// Memory stays bounded: tensors are generated and written in chunks of at most
// kSyntheticChunkElements, so the 16 GB llama3-8b-shape preset streams to disk.
//
// Thread-safety: the functions are reentrant; MakeSyntheticModel uses OpenMP internally.
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "base/file.h"
#include "base/status.h"
#include "engine/model_config.h"
#include "engine/safetensors.h"

namespace kvkeep {

// The synthetic tokenizer: ids 0..255 are the raw bytes (GPT-2 byte-to-unicode symbols).
inline constexpr int32_t kSyntheticBeginOfTextId = 256;  // <|begin_of_text|>, BOS
inline constexpr int32_t kSyntheticEndOfTextId = 257;    // <|end_of_text|>, EOS
inline constexpr int32_t kSyntheticImStartId = 258;      // <|im_start|>
inline constexpr int32_t kSyntheticImEndId = 259;        // <|im_end|>, EOS
inline constexpr int32_t kSyntheticTokenizerSize = 260;  // model vocab rows beyond are padding

inline constexpr int64_t kSyntheticChunkElements = int64_t{1} << 24;

// "tiny", "small", "llama3-8b-shape".
std::vector<std::string> SyntheticPresetNames();
// The architecture a preset writes (torch_dtype set to the preset's default dtype).
// InvalidArgument for an unknown preset name.
Result<ModelConfig> SyntheticPresetConfig(std::string_view preset);

struct SyntheticModelOptions {
  std::string preset = "tiny";
  uint64_t seed = 0;
  // kF32 or kBF16; nullopt: the preset's default (tiny: F32, the others: BF16).
  std::optional<DType> dtype;
  // Write into a directory that is not empty (our files are replaced; others stay).
  bool force = false;
  // Called from the calling thread as weight bytes reach the file; may be empty.
  std::function<void(uint64_t done_bytes, uint64_t total_bytes)> progress;
};

// Writes the model into dir, creating it. AlreadyExists when dir is not empty and
// !options.force.
Status MakeSyntheticModel(Env* env, const std::string& dir, const SyntheticModelOptions& options);
// Shorthand with the default Env and the preset's default dtype.
Status MakeSyntheticModel(const std::string& preset, uint64_t seed, const std::string& dir);

// The file contents, exposed for tests and tools.
std::string SyntheticConfigJson(const ModelConfig& config, std::string_view preset, uint64_t seed);
std::string SyntheticGenerationConfigJson();
std::string SyntheticTokenizerJson();
std::string SyntheticTokenizerConfigJson(const ModelConfig& config);
// The "plain" chat template (Jinja): ChatML-shaped, see docs/models.md.
std::string_view SyntheticChatTemplate();

// How a tensor is initialised: values mean + std * z, z a normal-ish variate (the sum of
// four uniforms: mean 0, variance 1, bounded by +-3.465). Norm weights: mean 1, std 0.02.
// Projections and lm_head: mean 0, std 1/sqrt(fan_in), so activations keep unit scale.
// Embedding: mean 0, std 1/sqrt(hidden_size).
struct SyntheticInit {
  float mean = 0.0f;
  float std = 0.0f;
};
SyntheticInit SyntheticInitFor(const ModelConfig& config, std::string_view tensor_name,
                               const std::vector<int64_t>& shape);
// Element i of tensor `name` for a seed, in fp32 before rounding to the file's dtype.
// Exposed so tests can check a written file element by element.
float SyntheticWeightValue(uint64_t seed, std::string_view name, int64_t i, SyntheticInit init);

}  // namespace kvkeep
