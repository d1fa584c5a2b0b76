#include "engine/model_weights.h"

#include <cstring>

#include <spdlog/spdlog.h>
#include <nlohmann/json.hpp>

#include "base/bf16.h"
#include "engine/gguf_file.h"
#include "engine/gguf_model.h"

namespace kvkeep {
namespace {

using json = nlohmann::json;

struct Expected {
  std::string name;
  std::vector<int64_t> shape;
};

std::string ShapeString(const std::vector<int64_t>& shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) {
    if (i > 0) s += ", ";
    s += std::to_string(shape[i]);
  }
  return s + "]";
}

// Every tensor the architecture needs, with its HF shape ([out, in] for projections).
std::vector<Expected> ExpectedTensors(const ModelConfig& c) {
  const int64_t hidden = c.hidden_size;
  const int64_t q_dim = int64_t{c.num_q_heads} * c.head_dim;
  const int64_t kv_dim = int64_t{c.num_kv_heads} * c.head_dim;
  std::vector<Expected> out = {
      {"model.embed_tokens.weight", {c.vocab_size, hidden}},
      {"model.norm.weight", {hidden}},
  };
  if (!c.tie_word_embeddings) out.push_back({"lm_head.weight", {c.vocab_size, hidden}});
  for (int32_t i = 0; i < c.num_layers; ++i) {
    const std::string p = "model.layers." + std::to_string(i) + ".";
    out.push_back({p + "input_layernorm.weight", {hidden}});
    out.push_back({p + "post_attention_layernorm.weight", {hidden}});
    out.push_back({p + "self_attn.q_proj.weight", {q_dim, hidden}});
    out.push_back({p + "self_attn.k_proj.weight", {kv_dim, hidden}});
    out.push_back({p + "self_attn.v_proj.weight", {kv_dim, hidden}});
    out.push_back({p + "self_attn.o_proj.weight", {hidden, q_dim}});
    if (c.attention_bias) {
      out.push_back({p + "self_attn.q_proj.bias", {q_dim}});
      out.push_back({p + "self_attn.k_proj.bias", {kv_dim}});
      out.push_back({p + "self_attn.v_proj.bias", {kv_dim}});
    }
    if (c.qk_norm) {
      out.push_back({p + "self_attn.q_norm.weight", {c.head_dim}});
      out.push_back({p + "self_attn.k_norm.weight", {c.head_dim}});
    }
    out.push_back({p + "mlp.gate_proj.weight", {c.intermediate_size, hidden}});
    out.push_back({p + "mlp.up_proj.weight", {c.intermediate_size, hidden}});
    out.push_back({p + "mlp.down_proj.weight", {hidden, c.intermediate_size}});
  }
  return out;
}

// Reads model.safetensors.index.json: tensor name -> shard file name.
Result<std::map<std::string, std::string>> ReadIndex(Env* env, const std::string& path) {
  ASSIGN_OR_RETURN(std::string text, env->ReadFile(path));
  json j = json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded() || !j.is_object() || !j.contains("weight_map") ||
      !j["weight_map"].is_object()) {
    return Status::Corruption(path + ": not a JSON object with a \"weight_map\" object");
  }
  std::map<std::string, std::string> map;
  for (const auto& [name, file] : j["weight_map"].items()) {
    if (!file.is_string())
      return Status::Corruption(path + ": weight_map[" + name + "] not a string");
    std::string shard = file.get<std::string>();
    if (shard.empty() || shard.find('/') != std::string::npos || shard == "..") {
      return Status::Corruption(path + ": weight_map[" + name + "] is not a plain file name");
    }
    map.emplace(name, std::move(shard));
  }
  return map;
}

}  // namespace

Result<std::unique_ptr<ModelWeights>> ModelWeights::Load(Env* env, const std::string& model_dir,
                                                         const ModelConfig& config) {
  if (IsGgufPath(model_dir)) return LoadGguf(env, model_dir, config);
  auto w = std::unique_ptr<ModelWeights>(new ModelWeights());
  w->config_ = config;

  // Which file holds which tensor.
  std::map<std::string, std::string> where;   // tensor -> shard path ("" = the single file)
  std::map<std::string, size_t> shard_index;  // shard path -> index into files_
  const std::string index_path = JoinPath(model_dir, "model.safetensors.index.json");
  const bool sharded = env->FileExists(index_path);
  if (sharded) {
    ASSIGN_OR_RETURN(where, ReadIndex(env, index_path));
  } else {
    std::string path = JoinPath(model_dir, "model.safetensors");
    ASSIGN_OR_RETURN(auto file, SafetensorsFile::Open(env, path));
    w->files_.push_back(std::move(file));
  }

  auto find = [&](const std::string& name) -> Result<const TensorView*> {
    if (!sharded) return w->files_[0]->Find(name);
    auto it = where.find(name);
    if (it == where.end()) return static_cast<const TensorView*>(nullptr);
    std::string path = JoinPath(model_dir, it->second);
    auto [slot, inserted] = shard_index.emplace(path, w->files_.size());
    if (inserted) {
      Result<std::unique_ptr<SafetensorsFile>> file = SafetensorsFile::Open(env, path);
      if (!file.ok()) {
        shard_index.erase(slot);
        return file.status();
      }
      w->files_.push_back(std::move(file).value());
    }
    const TensorView* view = w->files_[slot->second]->Find(name);
    if (view == nullptr) {
      return Status::Corruption(index_path + " maps " + name + " to " + it->second +
                                ", which does not contain it");
    }
    return view;
  };

  for (const Expected& e : ExpectedTensors(config)) {
    ASSIGN_OR_RETURN(const TensorView* view, find(e.name));
    if (view == nullptr) {
      return Status::InvalidArgument(model_dir + ": missing tensor " + e.name + " (expected " +
                                     ShapeString(e.shape) + ")");
    }
    if (view->shape != e.shape) {
      return Status::InvalidArgument(model_dir + ": tensor " + e.name + " has shape " +
                                     ShapeString(view->shape) + ", expected " +
                                     ShapeString(e.shape));
    }
    if (view->dtype != DType::kF32 && view->dtype != DType::kBF16 && view->dtype != DType::kF16) {
      return Status::InvalidArgument(model_dir + ": tensor " + e.name + " has dtype " +
                                     std::string(DTypeName(view->dtype)) +
                                     "; weights must be F32, BF16 or F16");
    }
    w->tensors_.emplace(e.name, view);
  }
  if (config.tie_word_embeddings) {
    w->tensors_["lm_head.weight"] = w->tensors_.at("model.embed_tokens.weight");
  }
  for (const auto& file : w->files_) {
    w->source_files_.push_back({file->path(), file->size_bytes()});
    for (const std::string& name : file->Names()) {
      const TensorView* t = file->Find(name);
      w->stored_tensors_.push_back({name, std::string(DTypeName(t->dtype)), t->shape});
    }
  }
  spdlog::debug("loaded {} tensors from {} file(s) in {}", w->tensors_.size(), w->files_.size(),
                model_dir);
  return w;
}

Result<std::unique_ptr<ModelWeights>> ModelWeights::LoadGguf(Env* env, const std::string& path,
                                                             const ModelConfig& config) {
  ASSIGN_OR_RETURN(std::unique_ptr<GgufFile> file, GgufFile::Open(env, path));
  auto w = std::unique_ptr<ModelWeights>(new ModelWeights());
  w->config_ = config;
  w->format_ = WeightsFormat::kGguf;
  w->source_files_.push_back({path, file->file_size_bytes()});
  for (const GgufTensorInfo& t : file->tensors()) {
    w->stored_tensors_.push_back({t.name, std::string(GgmlTypeName(t.type)), t.RowMajorShape()});
  }
  std::map<std::string, GgufTensorMapping> by_hf_name;
  for (GgufTensorMapping& m :
       GgufTensorMappings(*file, config.num_layers, config.num_q_heads, config.num_kv_heads)) {
    by_hf_name.emplace(m.hf_name, std::move(m));
  }
  for (const Expected& e : ExpectedTensors(config)) {
    auto it = by_hf_name.find(e.name);
    const GgufTensorInfo* t =
        it == by_hf_name.end() ? nullptr : file->FindTensor(it->second.gguf_name);
    if (t == nullptr) {
      return Status::InvalidArgument(path + ": missing tensor " +
                                     (it == by_hf_name.end() ? e.name : it->second.gguf_name) +
                                     " (HF " + e.name + ", expected " + ShapeString(e.shape) + ")");
    }
    if (t->RowMajorShape() != e.shape) {
      return Status::InvalidArgument(path + ": tensor " + t->name + " has shape " +
                                     ShapeString(t->RowMajorShape()) + ", expected " +
                                     ShapeString(e.shape));
    }
    std::vector<float>& data = w->owned_data_.emplace_back(static_cast<size_t>(t->NumElements()));
    DequantizeGgml(t->type, t->data, t->NumElements(), data.data());
    if (it->second.rope_permuted) {
      UnpermuteRopeRows(data.data(), it->second.num_heads, config.head_dim, e.shape[1]);
    }
    if (e.shape.size() == 2 && (t->type == GgmlType::kQ8_0 || t->type == GgmlType::kQ4_1)) {
      QuantizedTensor& q = w->quantized_[e.name];
      q.type = t->type;
      q.rows = e.shape[0];
      q.cols = e.shape[1];
      q.bytes.assign(t->data, t->data + t->num_bytes);
      if (it->second.rope_permuted) {
        UnpermuteRopeRowBytes(q.bytes.data(), it->second.num_heads, config.head_dim,
                              static_cast<int64_t>(t->num_bytes) / q.rows);
      }
    }
    TensorView& view = w->owned_views_.emplace_back();
    view.dtype = DType::kF32;
    view.shape = e.shape;
    view.data = reinterpret_cast<const uint8_t*>(data.data());
    view.num_bytes = data.size() * sizeof(float);
    w->tensors_.emplace(e.name, &view);
  }
  if (config.tie_word_embeddings) {
    w->tensors_["lm_head.weight"] = w->tensors_.at("model.embed_tokens.weight");
  }
  spdlog::debug("loaded {} tensors from {} (GGUF v{}), dequantised to fp32", w->tensors_.size(),
                path, file->version());
  return w;
}

const QuantizedTensor* ModelWeights::GetQuantized(const std::string& name) const {
  auto it = quantized_.find(name);
  if (it == quantized_.end() && name == "lm_head.weight" && config_.tie_word_embeddings) {
    it = quantized_.find("model.embed_tokens.weight");
  }
  return it == quantized_.end() ? nullptr : &it->second;
}

const TensorView* ModelWeights::Get(const std::string& name) const {
  auto it = tensors_.find(name);
  return it == tensors_.end() ? nullptr : it->second;
}

int64_t ModelWeights::NumFileParameters() const {
  int64_t total = 0;
  for (const StoredTensorHeader& t : stored_tensors_) {
    int64_t n = 1;
    for (int64_t d : t.shape) n *= d;
    total += n;
  }
  return total;
}

void ModelWeights::ToFloat(const TensorView& t, float* out) {
  const int64_t n = t.NumElements();
  constexpr int64_t kParallelThreshold = int64_t{1} << 20;
  switch (t.dtype) {
    case DType::kF32:
      std::memcpy(out, t.data, static_cast<size_t>(n) * sizeof(float));
      return;
    case DType::kBF16: {
      const uint8_t* src = t.data;  // may be unaligned: read through memcpy
#pragma omp parallel for schedule(static) if (n >= kParallelThreshold)
      for (int64_t i = 0; i < n; ++i) {
        bf16 v;
        std::memcpy(&v.bits, src + 2 * i, 2);
        out[i] = Bf16ToFloat(v);
      }
      return;
    }
    case DType::kF16: {
      const uint8_t* src = t.data;
#pragma omp parallel for schedule(static) if (n >= kParallelThreshold)
      for (int64_t i = 0; i < n; ++i) {
        uint16_t h;
        std::memcpy(&h, src + 2 * i, 2);
        out[i] = Fp16ToFloat(h);
      }
      return;
    }
    default:  // Load admits only float weights.
      std::memset(out, 0, static_cast<size_t>(n) * sizeof(float));
      return;
  }
}

std::vector<float> ModelWeights::ToFloat(const TensorView& t) {
  std::vector<float> out(static_cast<size_t>(t.NumElements()));
  ToFloat(t, out.data());
  return out;
}

}  // namespace kvkeep
