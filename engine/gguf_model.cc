#include "engine/gguf_model.h"

#include <algorithm>
#include <cstring>

namespace kvkeep {
namespace {

using json = nlohmann::json;

// tokenizer.ggml.pre -> the pre-tokenizer HF's tokenizer.json of that family declares.
constexpr std::string_view kLlama3Pattern =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";
constexpr std::string_view kQwen2Pattern =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";

json SplitIsolated(std::string_view regex) {
  return {{"type", "Split"},
          {"pattern", {{"Regex", std::string(regex)}}},
          {"behavior", "Isolated"},
          {"invert", false}};
}

json ByteLevel(bool use_regex) {
  return {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"use_regex", use_regex}};
}

// {normalizer, pre_tokenizer} for a tokenizer.ggml.pre value.
Result<std::pair<json, json>> PreTokenizerFor(const std::string& pre, const std::string& path) {
  if (pre == "gpt2" || pre == "default") return std::pair{json(), ByteLevel(true)};
  if (pre == "smollm") {
    // HF: Sequence[Digits(individual_digits), ByteLevel]; Digits isolates each \p{N}.
    return std::pair{json(), json{{"type", "Sequence"},
                                  {"pretokenizers", {SplitIsolated(R"(\p{N})"), ByteLevel(true)}}}};
  }
  if (pre == "llama-bpe" || pre == "llama3") {
    return std::pair{json(),
                     json{{"type", "Sequence"},
                          {"pretokenizers", {SplitIsolated(kLlama3Pattern), ByteLevel(false)}}}};
  }
  if (pre == "qwen2") {
    return std::pair{json{{"type", "NFC"}},
                     json{{"type", "Sequence"},
                          {"pretokenizers", {SplitIsolated(kQwen2Pattern), ByteLevel(false)}}}};
  }
  return Status::NotSupported(path + ": GGUF tokenizer.ggml.pre '" + pre +
                              "' (supported: smollm, llama-bpe, qwen2, gpt2)");
}

// GGUF token types (llama.cpp llama_token_type).
constexpr int64_t kTokenControl = 3;
constexpr int64_t kTokenUserDefined = 4;

Result<std::vector<int64_t>> IntArray(const GgufFile& file, std::string_view key) {
  const GgufValue* v = file.Find(key);
  if (v == nullptr)
    return Status::NotFound(file.path() + ": GGUF metadata has no " + std::string(key));
  if (v->type != GgufValueType::kArray) {
    return Status::InvalidArgument(file.path() + ": GGUF " + std::string(key) + " is not an array");
  }
  std::vector<int64_t> out;
  out.reserve(v->array.size());
  for (const GgufValue& e : v->array) {
    if (!e.IsInteger()) {
      return Status::InvalidArgument(file.path() + ": GGUF " + std::string(key) +
                                     " is not an array of integers");
    }
    out.push_back(e.integer);
  }
  return out;
}

// An optional integer/bool key: fallback when absent.
Result<int64_t> OptionalInt(const GgufFile& file, std::string_view key, int64_t fallback) {
  const GgufValue* v = file.Find(key);
  if (v == nullptr) return fallback;
  if (v->type == GgufValueType::kBool) return v->boolean ? 1 : 0;
  return file.GetInt(key);
}

}  // namespace

Result<json> GgufConfigJson(const GgufFile& file) {
  ASSIGN_OR_RETURN(std::string arch, file.GetString("general.architecture"));
  if (arch != "llama") {
    return Status::NotSupported(file.path() + ": GGUF general.architecture '" + arch +
                                "' (supported: llama)");
  }
  const std::string a = arch + ".";
  json c;
  c["architectures"] = {"LlamaForCausalLM"};
  c["model_type"] = "llama";
  ASSIGN_OR_RETURN(c["num_hidden_layers"], file.GetInt(a + "block_count"));
  ASSIGN_OR_RETURN(c["hidden_size"], file.GetInt(a + "embedding_length"));
  ASSIGN_OR_RETURN(c["intermediate_size"], file.GetInt(a + "feed_forward_length"));
  ASSIGN_OR_RETURN(int64_t heads, file.GetInt(a + "attention.head_count"));
  c["num_attention_heads"] = heads;
  ASSIGN_OR_RETURN(c["num_key_value_heads"],
                   OptionalInt(file, a + "attention.head_count_kv", heads));
  ASSIGN_OR_RETURN(c["max_position_embeddings"], file.GetInt(a + "context_length"));
  ASSIGN_OR_RETURN(c["rms_norm_eps"], file.GetFloat(a + "attention.layer_norm_rms_epsilon"));
  if (file.Find(a + "rope.freq_base") != nullptr) {
    ASSIGN_OR_RETURN(c["rope_theta"], file.GetFloat(a + "rope.freq_base"));
  }
  if (file.Find(a + "attention.key_length") != nullptr) {
    ASSIGN_OR_RETURN(c["head_dim"], file.GetInt(a + "attention.key_length"));
  }
  if (file.Find(a + "rope.scaling.type") != nullptr || file.FindTensor("rope_freqs.weight")) {
    return Status::NotSupported(file.path() +
                                ": GGUF RoPE scaling (rope.scaling.* or a "
                                "rope_freqs tensor) is not supported");
  }
  if (file.Find(a + "rope.dimension_count") != nullptr) {
    ASSIGN_OR_RETURN(int64_t rot, file.GetInt(a + "rope.dimension_count"));
    const int64_t hidden = c["hidden_size"].get<int64_t>();
    const int64_t head_dim =
        c.contains("head_dim") ? c["head_dim"].get<int64_t>() : (heads > 0 ? hidden / heads : 0);
    if (rot != head_dim) {
      return Status::NotSupported(file.path() + ": GGUF " + a + "rope.dimension_count " +
                                  std::to_string(rot) + " differs from head_dim " +
                                  std::to_string(head_dim) + " (partial RoPE)");
    }
  }
  int64_t vocab = 0;
  if (file.Find(a + "vocab_size") != nullptr) {
    ASSIGN_OR_RETURN(vocab, file.GetInt(a + "vocab_size"));
  } else if (const GgufTensorInfo* emb = file.FindTensor("token_embd.weight")) {
    vocab = emb->dims.size() == 2 ? emb->dims[1] : 0;
  }
  c["vocab_size"] = vocab;
  c["tie_word_embeddings"] = file.FindTensor("output.weight") == nullptr;
  c["torch_dtype"] = "float32";  // weights are dequantised to fp32 at load
  ASSIGN_OR_RETURN(int64_t bos, OptionalInt(file, "tokenizer.ggml.bos_token_id", -1));
  if (bos >= 0) c["bos_token_id"] = bos;
  ASSIGN_OR_RETURN(int64_t eos, OptionalInt(file, "tokenizer.ggml.eos_token_id", -1));
  ASSIGN_OR_RETURN(int64_t eot, OptionalInt(file, "tokenizer.ggml.eot_token_id", -1));
  json eos_ids = json::array();
  if (eos >= 0) eos_ids.push_back(eos);
  if (eot >= 0 && eot != eos) eos_ids.push_back(eot);
  if (!eos_ids.empty()) c["eos_token_id"] = eos_ids;
  return c;
}

Result<json> GgufTokenizerJson(const GgufFile& file) {
  ASSIGN_OR_RETURN(std::string model, file.GetString("tokenizer.ggml.model"));
  if (model != "gpt2") {
    return Status::NotSupported(file.path() + ": GGUF tokenizer.ggml.model '" + model +
                                "' (supported: gpt2, byte-level BPE)");
  }
  std::string pre = "gpt2";
  if (file.Find("tokenizer.ggml.pre") != nullptr) {
    ASSIGN_OR_RETURN(pre, file.GetString("tokenizer.ggml.pre"));
  }
  ASSIGN_OR_RETURN(auto norm_pre, PreTokenizerFor(pre, file.path()));
  ASSIGN_OR_RETURN(const GgufValue* tokens,
                   file.GetArray("tokenizer.ggml.tokens", GgufValueType::kString));
  ASSIGN_OR_RETURN(const GgufValue* merges,
                   file.GetArray("tokenizer.ggml.merges", GgufValueType::kString));
  std::vector<int64_t> types;
  if (file.Find("tokenizer.ggml.token_type") != nullptr) {
    ASSIGN_OR_RETURN(types, IntArray(file, "tokenizer.ggml.token_type"));
    if (types.size() != tokens->array.size()) {
      return Status::Corruption(file.path() + ": GGUF tokenizer.ggml.token_type has " +
                                std::to_string(types.size()) + " entries for " +
                                std::to_string(tokens->array.size()) + " tokens");
    }
  }

  json vocab = json::object();
  json added = json::array();
  for (size_t id = 0; id < tokens->array.size(); ++id) {
    const std::string text(tokens->array[id].string);
    if (text.empty()) {
      return Status::Corruption(file.path() + ": GGUF tokenizer.ggml.tokens[" + std::to_string(id) +
                                "] is empty");
    }
    vocab[text] = id;
    const int64_t type = types.empty() ? 1 : types[id];
    if (type == kTokenControl || type == kTokenUserDefined) {
      added.push_back({{"id", id},
                       {"content", text},
                       {"special", type == kTokenControl},
                       {"lstrip", false},
                       {"rstrip", false},
                       {"single_word", false},
                       {"normalized", false}});
    }
  }
  json merge_list = json::array();
  for (const GgufValue& m : merges->array) merge_list.push_back(std::string(m.string));

  json root;
  root["normalizer"] = norm_pre.first;
  root["pre_tokenizer"] = norm_pre.second;
  root["model"] = {{"type", "BPE"},
                   {"vocab", std::move(vocab)},
                   {"merges", std::move(merge_list)},
                   {"ignore_merges", pre == "llama-bpe" || pre == "llama3"}};
  root["decoder"] = {{"type", "ByteLevel"}};
  root["added_tokens"] = std::move(added);
  ASSIGN_OR_RETURN(int64_t add_bos, OptionalInt(file, "tokenizer.ggml.add_bos_token", 0));
  ASSIGN_OR_RETURN(int64_t bos, OptionalInt(file, "tokenizer.ggml.bos_token_id", -1));
  if (add_bos != 0 && bos >= 0 && static_cast<size_t>(bos) < tokens->array.size()) {
    const std::string bos_text(tokens->array[bos].string);
    root["post_processor"] = {
        {"type", "TemplateProcessing"},
        {"single",
         {{{"SpecialToken", {{"id", bos_text}, {"type_id", 0}}}},
          {{"Sequence", {{"id", "A"}, {"type_id", 0}}}}}},
        {"special_tokens",
         {{bos_text, {{"id", bos_text}, {"ids", {bos}}, {"tokens", {bos_text}}}}}}};
  } else {
    root["post_processor"] = nullptr;
  }
  return root;
}

Result<json> GgufTokenizerConfigJson(const GgufFile& file) {
  if (file.Find("tokenizer.chat_template") == nullptr) {
    return Status::NotFound(file.path() + ": GGUF file has no tokenizer.chat_template");
  }
  ASSIGN_OR_RETURN(std::string tmpl, file.GetString("tokenizer.chat_template"));
  return json{{"chat_template", tmpl}};
}

std::vector<GgufTensorMapping> GgufTensorMappings(const GgufFile& file, int32_t num_layers,
                                                  int32_t num_q_heads, int32_t num_kv_heads) {
  std::vector<GgufTensorMapping> out = {
      {"model.embed_tokens.weight", "token_embd.weight"},
      {"model.norm.weight", "output_norm.weight"},
  };
  if (file.FindTensor("output.weight") != nullptr)
    out.push_back({"lm_head.weight", "output.weight"});
  for (int32_t i = 0; i < num_layers; ++i) {
    const std::string hf = "model.layers." + std::to_string(i) + ".";
    const std::string gg = "blk." + std::to_string(i) + ".";
    out.push_back({hf + "input_layernorm.weight", gg + "attn_norm.weight"});
    out.push_back({hf + "post_attention_layernorm.weight", gg + "ffn_norm.weight"});
    out.push_back({hf + "self_attn.q_proj.weight", gg + "attn_q.weight", true, num_q_heads});
    out.push_back({hf + "self_attn.k_proj.weight", gg + "attn_k.weight", true, num_kv_heads});
    out.push_back({hf + "self_attn.v_proj.weight", gg + "attn_v.weight"});
    out.push_back({hf + "self_attn.o_proj.weight", gg + "attn_output.weight"});
    out.push_back({hf + "mlp.gate_proj.weight", gg + "ffn_gate.weight"});
    out.push_back({hf + "mlp.up_proj.weight", gg + "ffn_up.weight"});
    out.push_back({hf + "mlp.down_proj.weight", gg + "ffn_down.weight"});
  }
  return out;
}

void UnpermuteRopeRows(float* w, int64_t num_heads, int64_t head_dim, int64_t cols) {
  UnpermuteRopeRowBytes(reinterpret_cast<uint8_t*>(w), num_heads, head_dim,
                        cols * static_cast<int64_t>(sizeof(float)));
}

void UnpermuteRopeRowBytes(uint8_t* w, int64_t num_heads, int64_t head_dim, int64_t row_bytes) {
  const int64_t half = head_dim / 2;
  std::vector<uint8_t> head(static_cast<size_t>(head_dim * row_bytes));
  for (int64_t h = 0; h < num_heads; ++h) {
    uint8_t* base = w + h * head_dim * row_bytes;
    std::memcpy(head.data(), base, head.size());
    for (int64_t j = 0; j < half; ++j) {
      for (int64_t s = 0; s < 2; ++s) {
        std::memcpy(base + (s * half + j) * row_bytes, head.data() + (2 * j + s) * row_bytes,
                    static_cast<size_t>(row_bytes));
      }
    }
  }
}

}  // namespace kvkeep
