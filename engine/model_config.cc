#include "engine/model_config.h"

#include <algorithm>
#include <cstdint>
#include <optional>

#include <nlohmann/json.hpp>

#include "engine/gguf_file.h"
#include "engine/gguf_model.h"

namespace kvkeep {
namespace {

using json = nlohmann::json;

struct ArchInfo {
  const char* architecture;
  const char* model_type;
  bool default_attention_bias;  // value when config.json has no attention_bias
  bool qk_norm;
  bool window_needs_opt_in;  // sliding_window applies only with use_sliding_window=true
};

constexpr ArchInfo kArchs[] = {
    {"LlamaForCausalLM", "llama", false, false, false},
    {"MistralForCausalLM", "mistral", false, false, false},
    // HF Qwen2Attention always has q/k/v biases; o_proj never does.
    {"Qwen2ForCausalLM", "qwen2", true, false, true},
    {"Qwen3ForCausalLM", "qwen3", false, true, true},
};

// Reads config fields with type checks; every error names the field.
class FieldReader {
 public:
  explicit FieldReader(const json& j) : j_(j) {}

  bool Has(const char* key) const { return j_.contains(key) && !j_.at(key).is_null(); }

  Result<int32_t> Int(const char* key, std::optional<int32_t> fallback = std::nullopt) const {
    if (!Has(key)) {
      if (fallback) return *fallback;
      return Status::InvalidArgument(std::string("config.json: missing required field \"") + key +
                                     "\"");
    }
    const json& v = j_.at(key);
    if (!v.is_number_integer()) return WrongType(key, "an integer");
    int64_t x = v.get<int64_t>();
    if (x < INT32_MIN || x > INT32_MAX) return WrongType(key, "a 32-bit integer");
    return static_cast<int32_t>(x);
  }

  Result<double> Number(const char* key, std::optional<double> fallback = std::nullopt) const {
    if (!Has(key)) {
      if (fallback) return *fallback;
      return Status::InvalidArgument(std::string("config.json: missing required field \"") + key +
                                     "\"");
    }
    const json& v = j_.at(key);
    if (!v.is_number()) return WrongType(key, "a number");
    return v.get<double>();
  }

  Result<bool> Bool(const char* key, bool fallback) const {
    if (!Has(key)) return fallback;
    const json& v = j_.at(key);
    if (!v.is_boolean()) return WrongType(key, "a boolean");
    return v.get<bool>();
  }

  Result<std::string> String(const char* key, std::string fallback) const {
    if (!Has(key)) return fallback;
    const json& v = j_.at(key);
    if (!v.is_string()) return WrongType(key, "a string");
    return v.get<std::string>();
  }

 private:
  static Status WrongType(const char* key, const char* want) {
    return Status::InvalidArgument(std::string("config.json: field \"") + key + "\" must be " +
                                   want);
  }
  const json& j_;
};

// eos_token_id: an int, a list of ints, or null.
Status ReadTokenIds(const json& j, const char* key, const char* file, std::vector<int32_t>* out) {
  if (!j.contains(key) || j.at(key).is_null()) return Status::OK();
  const json& v = j.at(key);
  auto bad = [&] {
    return Status::InvalidArgument(std::string(file) + ": field \"" + key +
                                   "\" must be an integer or a list of integers");
  };
  auto add = [&](const json& x) {
    if (!x.is_number_integer()) return false;
    int64_t wide = x.get<int64_t>();
    if (wide < 0 || wide > INT32_MAX) return false;
    int32_t id = static_cast<int32_t>(wide);
    if (std::find(out->begin(), out->end(), id) == out->end()) out->push_back(id);
    return true;
  };
  if (v.is_array()) {
    for (const json& x : v) {
      if (!add(x)) return bad();
    }
    return Status::OK();
  }
  return add(v) ? Status::OK() : bad();
}

// rope_scaling (or transformers v5 "rope_parameters"): only llama3 scaling is supported.
Status ReadRope(const json& j, cpu::RopeParams* rope) {
  const char* key = j.contains("rope_parameters") ? "rope_parameters" : "rope_scaling";
  if (!j.contains(key) || j.at(key).is_null()) return Status::OK();
  const json& rs = j.at(key);
  if (!rs.is_object()) {
    return Status::InvalidArgument(std::string("config.json: field \"") + key +
                                   "\" must be an object or null");
  }
  FieldReader r(rs);
  ASSIGN_OR_RETURN(std::string type, r.String("rope_type", ""));
  if (type.empty()) {
    ASSIGN_OR_RETURN(type, r.String("type", "default"));
  }
  if (rs.contains("rope_theta")) {
    ASSIGN_OR_RETURN(double theta, r.Number("rope_theta"));
    rope->theta = static_cast<float>(theta);
  }
  if (type == "default") return Status::OK();
  if (type != "llama3") {
    return Status::NotSupported("config.json: rope scaling type \"" + type +
                                "\" is not supported (only llama3)");
  }
  ASSIGN_OR_RETURN(double factor, r.Number("factor"));
  ASSIGN_OR_RETURN(double low, r.Number("low_freq_factor", 1.0));
  ASSIGN_OR_RETURN(double high, r.Number("high_freq_factor", 4.0));
  ASSIGN_OR_RETURN(int32_t orig, r.Int("original_max_position_embeddings", 8192));
  if (factor <= 0 || low <= 0 || high <= low || orig <= 0) {
    return Status::InvalidArgument(
        "config.json: rope_scaling needs factor > 0, 0 < low_freq_factor < high_freq_factor "
        "and original_max_position_embeddings > 0");
  }
  rope->factor = static_cast<float>(factor);
  rope->low_freq_factor = static_cast<float>(low);
  rope->high_freq_factor = static_cast<float>(high);
  rope->original_max_position = orig;
  return Status::OK();
}

Status ReadShape(const json& j, const ArchInfo& arch, ModelConfig* c) {
  FieldReader r(j);
  ASSIGN_OR_RETURN(c->vocab_size, r.Int("vocab_size"));
  ASSIGN_OR_RETURN(c->hidden_size, r.Int("hidden_size"));
  ASSIGN_OR_RETURN(c->intermediate_size, r.Int("intermediate_size"));
  ASSIGN_OR_RETURN(c->num_layers, r.Int("num_hidden_layers"));
  ASSIGN_OR_RETURN(c->num_q_heads, r.Int("num_attention_heads"));
  ASSIGN_OR_RETURN(c->num_kv_heads, r.Int("num_key_value_heads", c->num_q_heads));
  ASSIGN_OR_RETURN(c->max_position_embeddings, r.Int("max_position_embeddings"));
  struct Positive {
    const char* name;
    int32_t value;
  };
  for (const Positive& p :
       {Positive{"vocab_size", c->vocab_size}, Positive{"hidden_size", c->hidden_size},
        Positive{"intermediate_size", c->intermediate_size},
        Positive{"num_hidden_layers", c->num_layers},
        Positive{"num_attention_heads", c->num_q_heads},
        Positive{"num_key_value_heads", c->num_kv_heads},
        Positive{"max_position_embeddings", c->max_position_embeddings}}) {
    if (p.value <= 0) {
      return Status::InvalidArgument(std::string("config.json: field \"") + p.name +
                                     "\" must be positive");
    }
  }
  if (r.Has("head_dim")) {
    ASSIGN_OR_RETURN(c->head_dim, r.Int("head_dim"));
  } else {
    if (c->hidden_size % c->num_q_heads != 0) {
      return Status::InvalidArgument(
          "config.json: hidden_size is not a multiple of num_attention_heads and no head_dim");
    }
    c->head_dim = c->hidden_size / c->num_q_heads;
  }
  if (c->head_dim <= 0 || c->head_dim % 2 != 0) {
    return Status::InvalidArgument("config.json: field \"head_dim\" must be positive and even");
  }
  if (c->num_q_heads % c->num_kv_heads != 0) {
    return Status::InvalidArgument(
        "config.json: num_attention_heads must be a multiple of num_key_value_heads");
  }
  ASSIGN_OR_RETURN(double eps, r.Number("rms_norm_eps", 1e-6));
  c->rms_norm_eps = static_cast<float>(eps);
  ASSIGN_OR_RETURN(double theta, r.Number("rope_theta", 10000.0));
  c->rope.theta = static_cast<float>(theta);
  c->rope.head_dim = c->head_dim;
  RETURN_IF_ERROR(ReadRope(j, &c->rope));
  if (c->rope.theta <= 0) return Status::InvalidArgument("config.json: rope_theta must be > 0");

  ASSIGN_OR_RETURN(c->tie_word_embeddings, r.Bool("tie_word_embeddings", false));
  ASSIGN_OR_RETURN(c->attention_bias, r.Bool("attention_bias", arch.default_attention_bias));
  if (c->attention_bias && !arch.default_attention_bias) {
    // Llama, Mistral and Qwen3 put a bias on o_proj too when attention_bias is set; the
    // backends implement only Qwen2's q/k/v biases.
    return Status::NotSupported(std::string("config.json: attention_bias=true is not supported "
                                            "for ") +
                                arch.architecture);
  }
  c->qk_norm = arch.qk_norm;
  return Status::OK();
}

Status ReadSlidingWindow(const json& j, const ArchInfo& arch, ModelConfig* c) {
  FieldReader r(j);
  // Qwen2/Qwen3 carry a sliding_window value but only use it with use_sliding_window=true.
  ASSIGN_OR_RETURN(bool use_window, r.Bool("use_sliding_window", !arch.window_needs_opt_in));
  if (!use_window) {
    c->sliding_window = 0;
    return Status::OK();
  }
  ASSIGN_OR_RETURN(c->sliding_window, r.Int("sliding_window", 0));
  if (c->sliding_window < 0) {
    return Status::InvalidArgument("config.json: field \"sliding_window\" must be >= 0");
  }
  return Status::OK();
}

Result<ModelConfig> ParseModelConfigImpl(const std::string& config_json,
                                         const std::string& generation_config_json) {
  json j = json::parse(config_json, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) return Status::InvalidArgument("config.json: not valid JSON");
  if (!j.is_object()) return Status::InvalidArgument("config.json: not a JSON object");

  ModelConfig c;
  if (!j.contains("architectures") || !j["architectures"].is_array() ||
      j["architectures"].empty() || !j["architectures"][0].is_string()) {
    return Status::InvalidArgument(
        "config.json: field \"architectures\" must be a non-empty list of strings");
  }
  c.architecture = j["architectures"][0].get<std::string>();
  const ArchInfo* arch = nullptr;
  for (const ArchInfo& a : kArchs) {
    if (c.architecture == a.architecture) arch = &a;
  }
  if (arch == nullptr) {
    return Status::NotSupported("config.json: architecture \"" + c.architecture +
                                "\" is not supported (supported: LlamaForCausalLM, "
                                "MistralForCausalLM, Qwen2ForCausalLM, Qwen3ForCausalLM)");
  }
  FieldReader r(j);
  ASSIGN_OR_RETURN(c.model_type, r.String("model_type", arch->model_type));
  RETURN_IF_ERROR(ReadShape(j, *arch, &c));
  RETURN_IF_ERROR(ReadSlidingWindow(j, *arch, &c));
  ASSIGN_OR_RETURN(c.torch_dtype, r.String("torch_dtype", ""));
  if (c.torch_dtype.empty()) {
    ASSIGN_OR_RETURN(c.torch_dtype, r.String("dtype", ""));
  }
  ASSIGN_OR_RETURN(c.bos_token_id, r.Int("bos_token_id", -1));

  // generation_config.json's EOS ids come first; config.json's are merged in after.
  if (!generation_config_json.empty()) {
    json g = json::parse(generation_config_json, nullptr, /*allow_exceptions=*/false);
    if (g.is_discarded() || !g.is_object()) {
      return Status::InvalidArgument("generation_config.json: not a valid JSON object");
    }
    RETURN_IF_ERROR(ReadTokenIds(g, "eos_token_id", "generation_config.json", &c.eos_token_ids));
    if (c.bos_token_id < 0) {
      ASSIGN_OR_RETURN(c.bos_token_id, FieldReader(g).Int("bos_token_id", -1));
    }
  }
  RETURN_IF_ERROR(ReadTokenIds(j, "eos_token_id", "config.json", &c.eos_token_ids));
  for (int32_t id : c.eos_token_ids) {
    if (id >= c.vocab_size) {
      return Status::InvalidArgument("config: eos_token_id " + std::to_string(id) +
                                     " is outside the vocabulary");
    }
  }
  return c;
}

}  // namespace

int64_t ModelConfig::NumParameters() const {
  const int64_t hidden = hidden_size;
  const int64_t q_dim = int64_t{num_q_heads} * head_dim;
  const int64_t kv_dim = int64_t{num_kv_heads} * head_dim;
  int64_t per_layer = hidden * q_dim + 2 * hidden * kv_dim + q_dim * hidden;  // q, k, v, o
  if (attention_bias) per_layer += q_dim + 2 * kv_dim;
  if (qk_norm) per_layer += 2 * int64_t{head_dim};
  per_layer += 3 * hidden * intermediate_size;  // gate, up, down
  per_layer += 2 * hidden;                      // input and post-attention norms
  int64_t embed = int64_t{vocab_size} * hidden;
  int64_t total = embed + per_layer * num_layers + hidden;  // + final norm
  if (!tie_word_embeddings) total += embed;                 // lm_head
  return total;
}

Result<ModelConfig> ParseModelConfig(const std::string& config_json,
                                     const std::string& generation_config_json) {
  try {
    return ParseModelConfigImpl(config_json, generation_config_json);
  } catch (const std::exception& e) {  // nlohmann type errors we did not anticipate
    return Status::InvalidArgument(std::string("config.json: ") + e.what());
  }
}

Result<ModelConfig> LoadModelConfig(Env* env, const std::string& model_dir) {
  if (IsGgufPath(model_dir)) {
    ASSIGN_OR_RETURN(std::unique_ptr<GgufFile> file, GgufFile::Open(env, model_dir));
    ASSIGN_OR_RETURN(nlohmann::json config_json, GgufConfigJson(*file));
    Result<ModelConfig> config = ParseModelConfig(config_json.dump(), "");
    if (!config.ok()) return config.status().WithContext(model_dir + " (GGUF metadata)");
    return config;
  }
  std::string path = JoinPath(model_dir, "config.json");
  ASSIGN_OR_RETURN(std::string config_json, env->ReadFile(path));
  std::string generation_json;
  std::string gen_path = JoinPath(model_dir, "generation_config.json");
  if (env->FileExists(gen_path)) {
    ASSIGN_OR_RETURN(generation_json, env->ReadFile(gen_path));
  }
  Result<ModelConfig> config = ParseModelConfig(config_json, generation_json);
  if (!config.ok()) return config.status().WithContext(model_dir);
  return config;
}

}  // namespace kvkeep
