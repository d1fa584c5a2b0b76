#include "engine/synthetic_model.h"

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <future>

#include <spdlog/spdlog.h>
#include <nlohmann/json.hpp>

#include "base/bf16.h"
#include "base/hash64.h"

namespace kvkeep {
namespace {

using ojson = nlohmann::ordered_json;

struct Preset {
  const char* name;
  int32_t vocab_size;
  int32_t hidden_size;
  int32_t intermediate_size;
  int32_t num_layers;
  int32_t num_q_heads;
  int32_t num_kv_heads;
  int32_t max_position_embeddings;
  float rope_theta;
  bool llama3_rope;
  bool tie_word_embeddings;
  DType default_dtype;
};

constexpr Preset kPresets[] = {
    // 260 tokenizer ids rounded up to a multiple of 64.
    {"tiny", 320, 128, 256, 4, 4, 2, 4096, 10000.0f, false, false, DType::kF32},
    {"small", 32000, 768, 2048, 12, 12, 4, 8192, 10000.0f, false, true, DType::kBF16},
    {"llama3-8b-shape", 128256, 4096, 14336, 32, 32, 8, 131072, 500000.0f, true, false,
     DType::kBF16},
};

const char* TorchDtype(DType d) { return d == DType::kBF16 ? "bfloat16" : "float32"; }

// A float as the shortest decimal that round-trips it, so 1e-5f prints as 1e-05.
double Tidy(float f) {
  char buf[32];
  std::snprintf(buf, sizeof(buf), "%.7g", f);
  return std::strtod(buf, nullptr);
}

uint64_t TensorSeed(uint64_t seed, std::string_view name) {
  return Mix64(Fnv1a64(name) + SplitMix64(seed));
}

// Sum of the four 16-bit lanes of a hash, standardised: mean 0, variance 1.
inline float Sample(uint64_t tensor_seed, int64_t i, SyntheticInit init) {
  uint64_t r = Mix64(tensor_seed + static_cast<uint64_t>(i) * kGoldenGamma);
  uint32_t sum =
      static_cast<uint32_t>((r & 0xffff) + ((r >> 16) & 0xffff) + ((r >> 32) & 0xffff) + (r >> 48));
  constexpr float kInvStd = 1.7320508075688772f / 65536.0f;  // sqrt(3) / 2^16
  float z = (static_cast<float>(sum) - 131070.0f) * kInvStd;
  return init.mean + init.std * z;
}

void Fill(uint64_t tensor_seed, int64_t begin, int64_t n, SyntheticInit init, DType dtype,
          uint8_t* out) {
  if (dtype == DType::kBF16) {
#pragma omp parallel for schedule(static) if (n >= 65536)
    for (int64_t j = 0; j < n; ++j) {
      bf16 v = FloatToBf16(Sample(tensor_seed, begin + j, init));
      std::memcpy(out + 2 * j, &v.bits, 2);
    }
  } else {
#pragma omp parallel for schedule(static) if (n >= 65536)
    for (int64_t j = 0; j < n; ++j) {
      float v = Sample(tensor_seed, begin + j, init);
      std::memcpy(out + 4 * j, &v, 4);
    }
  }
}

// The tensors in file order (embedding, layers, final norm, lm_head).
std::vector<SafetensorsWriter::TensorSpec> TensorSpecs(const ModelConfig& c, DType dtype) {
  const int64_t h = c.hidden_size;
  const int64_t q = int64_t{c.num_q_heads} * c.head_dim;
  const int64_t kv = int64_t{c.num_kv_heads} * c.head_dim;
  std::vector<SafetensorsWriter::TensorSpec> out = {
      {"model.embed_tokens.weight", dtype, {c.vocab_size, h}}};
  for (int32_t i = 0; i < c.num_layers; ++i) {
    const std::string p = "model.layers." + std::to_string(i) + ".";
    out.push_back({p + "input_layernorm.weight", dtype, {h}});
    out.push_back({p + "self_attn.q_proj.weight", dtype, {q, h}});
    out.push_back({p + "self_attn.k_proj.weight", dtype, {kv, h}});
    out.push_back({p + "self_attn.v_proj.weight", dtype, {kv, h}});
    out.push_back({p + "self_attn.o_proj.weight", dtype, {h, q}});
    out.push_back({p + "post_attention_layernorm.weight", dtype, {h}});
    out.push_back({p + "mlp.gate_proj.weight", dtype, {c.intermediate_size, h}});
    out.push_back({p + "mlp.up_proj.weight", dtype, {c.intermediate_size, h}});
    out.push_back({p + "mlp.down_proj.weight", dtype, {h, c.intermediate_size}});
  }
  out.push_back({"model.norm.weight", dtype, {h}});
  if (!c.tie_word_embeddings) out.push_back({"lm_head.weight", dtype, {c.vocab_size, h}});
  return out;
}

// GPT-2's bytes_to_unicode: byte b is shown as this code point in the vocabulary.
uint32_t ByteToUnicode(int b) {
  bool printable = (b >= '!' && b <= '~') || (b >= 0xa1 && b <= 0xac) || (b >= 0xae && b <= 0xff);
  if (printable) return static_cast<uint32_t>(b);
  int n = 0;  // index of b among the non-printable bytes
  for (int x = 0; x < b; ++x) {
    bool p = (x >= '!' && x <= '~') || (x >= 0xa1 && x <= 0xac) || (x >= 0xae && x <= 0xff);
    if (!p) ++n;
  }
  return 256u + static_cast<uint32_t>(n);
}

std::string Utf8(uint32_t cp) {  // code points < 0x800 suffice here
  std::string s;
  if (cp < 0x80) {
    s.push_back(static_cast<char>(cp));
  } else {
    s.push_back(static_cast<char>(0xc0 | (cp >> 6)));
    s.push_back(static_cast<char>(0x80 | (cp & 0x3f)));
  }
  return s;
}

struct SpecialToken {
  int32_t id;
  const char* content;
};
constexpr SpecialToken kSpecialTokens[] = {
    {kSyntheticBeginOfTextId, "<|begin_of_text|>"},
    {kSyntheticEndOfTextId, "<|end_of_text|>"},
    {kSyntheticImStartId, "<|im_start|>"},
    {kSyntheticImEndId, "<|im_end|>"},
};

ojson AddedToken(const SpecialToken& t) {
  return ojson{{"id", t.id},      {"content", t.content}, {"single_word", false}, {"lstrip", false},
               {"rstrip", false}, {"normalized", false},  {"special", true}};
}

Result<const Preset*> FindPreset(std::string_view name) {
  for (const Preset& p : kPresets) {
    if (name == p.name) return &p;
  }
  return Status::InvalidArgument("unknown preset \"" + std::string(name) +
                                 "\" (tiny, small, llama3-8b-shape)");
}

Status PrepareDir(Env* env, const std::string& dir, bool force) {
  RETURN_IF_ERROR(env->CreateDirs(dir));
  ASSIGN_OR_RETURN(std::vector<std::string> entries, env->ListDir(dir));
  if (!entries.empty() && !force) {
    return Status::AlreadyExists(dir + " is not empty (use --force to write into it)");
  }
  // A stale index would make loaders look for shards instead of our model.safetensors.
  std::string index = JoinPath(dir, "model.safetensors.index.json");
  if (env->FileExists(index)) RETURN_IF_ERROR(env->RemoveFile(index));
  return Status::OK();
}

Status WriteWeights(const ModelConfig& config, const SyntheticModelOptions& options, DType dtype,
                    const std::string& path) {
  std::vector<SafetensorsWriter::TensorSpec> specs = TensorSpecs(config, dtype);
  ASSIGN_OR_RETURN(auto writer,
                   SafetensorsWriter::Create(path, specs,
                                             {{"format", "pt"},
                                              {"kvkeep_preset", options.preset},
                                              {"kvkeep_seed", std::to_string(options.seed)}}));
  const int elem_bytes = DTypeBytes(dtype);
  const uint64_t total = writer->total_data_bytes();
  uint64_t done = 0;
  // Double buffering: chunk k is written on another thread while chunk k+1 is generated.
  std::vector<uint8_t> buffers[2];
  std::future<Status> pending;  // declared after the buffers: joined before they die
  int flip = 0;
  for (const auto& spec : specs) {
    const SyntheticInit init = SyntheticInitFor(config, spec.name, spec.shape);
    const uint64_t tensor_seed = TensorSeed(options.seed, spec.name);
    int64_t n = 1;
    for (int64_t d : spec.shape) n *= d;
    for (int64_t begin = 0; begin < n; begin += kSyntheticChunkElements) {
      const int64_t count = std::min(kSyntheticChunkElements, n - begin);
      std::vector<uint8_t>& buf = buffers[flip];
      flip ^= 1;
      buf.resize(static_cast<size_t>(count) * elem_bytes);
      Fill(tensor_seed, begin, count, init, dtype, buf.data());
      if (pending.valid()) RETURN_IF_ERROR(pending.get());
      pending = std::async(std::launch::async,
                           [&writer, &buf] { return writer->Append(buf.data(), buf.size()); });
      done += buf.size();
      if (options.progress) options.progress(done, total);
    }
  }
  if (pending.valid()) RETURN_IF_ERROR(pending.get());
  return writer->Finish();
}

}  // namespace

std::vector<std::string> SyntheticPresetNames() {
  std::vector<std::string> names;
  for (const Preset& p : kPresets) names.push_back(p.name);
  return names;
}

Result<ModelConfig> SyntheticPresetConfig(std::string_view preset) {
  ASSIGN_OR_RETURN(const Preset* p, FindPreset(preset));
  ModelConfig c;
  c.architecture = "LlamaForCausalLM";
  c.model_type = "llama";
  c.vocab_size = p->vocab_size;
  c.hidden_size = p->hidden_size;
  c.intermediate_size = p->intermediate_size;
  c.num_layers = p->num_layers;
  c.num_q_heads = p->num_q_heads;
  c.num_kv_heads = p->num_kv_heads;
  c.head_dim = p->hidden_size / p->num_q_heads;
  c.max_position_embeddings = p->max_position_embeddings;
  c.rms_norm_eps = 1e-5f;
  c.rope.head_dim = c.head_dim;
  c.rope.theta = p->rope_theta;
  if (p->llama3_rope) {
    c.rope.factor = 8.0f;
    c.rope.low_freq_factor = 1.0f;
    c.rope.high_freq_factor = 4.0f;
    c.rope.original_max_position = 8192;
  }
  c.tie_word_embeddings = p->tie_word_embeddings;
  c.torch_dtype = TorchDtype(p->default_dtype);
  c.eos_token_ids = {kSyntheticEndOfTextId, kSyntheticImEndId};
  c.bos_token_id = kSyntheticBeginOfTextId;
  return c;
}

SyntheticInit SyntheticInitFor(const ModelConfig& config, std::string_view tensor_name,
                               const std::vector<int64_t>& shape) {
  if (shape.size() == 1) return {1.0f, 0.02f};  // RMSNorm weights
  if (tensor_name == "model.embed_tokens.weight") {
    return {0.0f, 1.0f / std::sqrt(static_cast<float>(config.hidden_size))};
  }
  return {0.0f, 1.0f / std::sqrt(static_cast<float>(shape.back()))};  // [out, in]: fan_in
}

float SyntheticWeightValue(uint64_t seed, std::string_view name, int64_t i, SyntheticInit init) {
  return Sample(TensorSeed(seed, name), i, init);
}

std::string SyntheticConfigJson(const ModelConfig& c, std::string_view preset, uint64_t seed) {
  ojson j = {
      {"architectures", {c.architecture}},
      {"model_type", c.model_type},
      {"attention_bias", false},
      {"attention_dropout", 0.0},
      {"bos_token_id", c.bos_token_id},
      {"eos_token_id", c.eos_token_ids},
      {"head_dim", c.head_dim},
      {"hidden_act", "silu"},
      {"hidden_size", c.hidden_size},
      {"initializer_range", 0.02},
      {"intermediate_size", c.intermediate_size},
      {"max_position_embeddings", c.max_position_embeddings},
      {"mlp_bias", false},
      {"num_attention_heads", c.num_q_heads},
      {"num_hidden_layers", c.num_layers},
      {"num_key_value_heads", c.num_kv_heads},
      {"pretraining_tp", 1},
      {"rms_norm_eps", Tidy(c.rms_norm_eps)},
      {"rope_scaling", nullptr},
      {"rope_theta", Tidy(c.rope.theta)},
      {"tie_word_embeddings", c.tie_word_embeddings},
      {"torch_dtype", c.torch_dtype},
      {"use_cache", true},
      {"vocab_size", c.vocab_size},
      {"kvkeep_synthetic", {{"preset", preset}, {"seed", seed}}},
  };
  if (c.rope.factor > 0) {
    j["rope_scaling"] = {{"factor", Tidy(c.rope.factor)},
                         {"low_freq_factor", Tidy(c.rope.low_freq_factor)},
                         {"high_freq_factor", Tidy(c.rope.high_freq_factor)},
                         {"original_max_position_embeddings", c.rope.original_max_position},
                         {"rope_type", "llama3"}};
  }
  return j.dump(2) + "\n";
}

std::string SyntheticGenerationConfigJson() {
  ojson j = {{"bos_token_id", kSyntheticBeginOfTextId},
             {"eos_token_id", {kSyntheticEndOfTextId, kSyntheticImEndId}},
             {"do_sample", true},
             {"temperature", 1.0},
             {"top_p", 1.0}};
  return j.dump(2) + "\n";
}

std::string SyntheticTokenizerJson() {
  ojson vocab = ojson::object();
  for (int b = 0; b < 256; ++b) vocab[Utf8(ByteToUnicode(b))] = b;
  ojson added = ojson::array();
  for (const SpecialToken& t : kSpecialTokens) added.push_back(AddedToken(t));
  ojson byte_level = {{"type", "ByteLevel"},
                      {"add_prefix_space", false},
                      {"trim_offsets", true},
                      {"use_regex", false}};
  ojson j = {
      {"version", "1.0"},
      {"truncation", nullptr},
      {"padding", nullptr},
      {"added_tokens", added},
      {"normalizer", nullptr},
      {"pre_tokenizer", byte_level},
      {"post_processor", nullptr},
      {"decoder", byte_level},
      {"model",
       {{"type", "BPE"},
        {"dropout", nullptr},
        {"unk_token", nullptr},
        {"continuing_subword_prefix", nullptr},
        {"end_of_word_suffix", nullptr},
        {"fuse_unk", false},
        {"byte_fallback", false},
        {"ignore_merges", false},
        {"vocab", vocab},
        {"merges", ojson::array()}}},
  };
  return j.dump(2) + "\n";
}

std::string_view SyntheticChatTemplate() {
  return "{% for message in messages %}"
         "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + "
         "'\\n' }}"
         "{% endfor %}"
         "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";
}

std::string SyntheticTokenizerConfigJson(const ModelConfig& config) {
  ojson decoder = ojson::object();
  for (const SpecialToken& t : kSpecialTokens) {
    ojson entry = AddedToken(t);
    entry.erase("id");
    decoder[std::to_string(t.id)] = entry;
  }
  ojson j = {
      {"add_bos_token", false},
      {"add_eos_token", false},
      {"added_tokens_decoder", decoder},
      {"bos_token", "<|begin_of_text|>"},
      {"eos_token", "<|im_end|>"},
      {"pad_token", "<|end_of_text|>"},
      {"chat_template", SyntheticChatTemplate()},
      {"kvkeep_template", "plain"},
      {"clean_up_tokenization_spaces", false},
      {"model_max_length", config.max_position_embeddings},
      {"tokenizer_class", "PreTrainedTokenizerFast"},
  };
  return j.dump(2) + "\n";
}

Status MakeSyntheticModel(Env* env, const std::string& dir, const SyntheticModelOptions& options) {
  ASSIGN_OR_RETURN(const Preset* preset, FindPreset(options.preset));
  const DType dtype = options.dtype.value_or(preset->default_dtype);
  if (dtype != DType::kF32 && dtype != DType::kBF16) {
    return Status::InvalidArgument("synthetic models are written in f32 or bf16");
  }
  ASSIGN_OR_RETURN(ModelConfig config, SyntheticPresetConfig(options.preset));
  config.torch_dtype = TorchDtype(dtype);
  RETURN_IF_ERROR(PrepareDir(env, dir, options.force));
  spdlog::info("writing synthetic model {} (seed {}, {}, {} parameters) to {}", options.preset,
               options.seed, DTypeName(dtype), config.NumParameters(), dir);
  RETURN_IF_ERROR(WriteWeights(config, options, dtype, JoinPath(dir, "model.safetensors")));
  RETURN_IF_ERROR(env->WriteFileAtomic(JoinPath(dir, "config.json"),
                                       SyntheticConfigJson(config, options.preset, options.seed)));
  RETURN_IF_ERROR(env->WriteFileAtomic(JoinPath(dir, "generation_config.json"),
                                       SyntheticGenerationConfigJson()));
  RETURN_IF_ERROR(env->WriteFileAtomic(JoinPath(dir, "tokenizer.json"), SyntheticTokenizerJson()));
  return env->WriteFileAtomic(JoinPath(dir, "tokenizer_config.json"),
                              SyntheticTokenizerConfigJson(config));
}

Status MakeSyntheticModel(const std::string& preset, uint64_t seed, const std::string& dir) {
  SyntheticModelOptions options;
  options.preset = preset;
  options.seed = seed;
  return MakeSyntheticModel(DefaultEnv(), dir, options);
}

}  // namespace kvkeep
