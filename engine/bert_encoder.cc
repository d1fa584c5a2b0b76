#include "engine/bert_encoder.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include <nlohmann/json.hpp>

#include "engine/safetensors.h"
#include "kernels/cpu/ops.h"

namespace kvkeep {

struct BertEncoder::Layer {
  std::vector<float> wq, bq, wk, bk, wv, bv, wo, bo, ln1_w, ln1_b;
  std::vector<float> wi, bi, wo2, bo2, ln2_w, ln2_b;
};

struct BertEncoder::Weights {
  std::vector<float> word, position, token_type, ln_w, ln_b;
  std::vector<Layer> layers;
};

namespace {

using nlohmann::json;

// Copies an F32 tensor of the expected shape (the mapping need not be 4-byte aligned).
Status CopyTensor(const SafetensorsFile& file, const std::string& name,
                  const std::vector<int64_t>& shape, std::vector<float>* out) {
  const TensorView* t = file.Find(name);
  if (t == nullptr) return Status::NotFound("bert: missing tensor " + name);
  if (t->dtype != DType::kF32) {
    return Status::NotSupported("bert: tensor " + name + " is " + std::string(DTypeName(t->dtype)) +
                                ", only F32 is supported");
  }
  if (t->shape != shape) return Status::Corruption("bert: tensor " + name + " has a wrong shape");
  out->resize(static_cast<size_t>(t->NumElements()));
  std::memcpy(out->data(), t->data, t->num_bytes);
  return Status::OK();
}

void LayerNorm(float* x, const float* w, const float* b, int64_t rows, int64_t dim, float eps) {
  for (int64_t r = 0; r < rows; ++r) {
    float* row = x + r * dim;
    double mean = 0.0;
    for (int64_t i = 0; i < dim; ++i) mean += row[i];
    mean /= static_cast<double>(dim);
    double var = 0.0;
    for (int64_t i = 0; i < dim; ++i) var += (row[i] - mean) * (row[i] - mean);
    var /= static_cast<double>(dim);
    const double inv = 1.0 / std::sqrt(var + eps);
    for (int64_t i = 0; i < dim; ++i) {
      row[i] = static_cast<float>((row[i] - mean) * inv) * w[i] + b[i];
    }
  }
}

Result<BertConfig> ParseConfig(Env* env, const std::string& dir) {
  ASSIGN_OR_RETURN(std::string text, env->ReadFile(JoinPath(dir, "config.json")));
  json j = json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded() || !j.is_object())
    return Status::Corruption("bert: config.json is not JSON");
  if (j.value("model_type", "") != "bert") {
    return Status::NotSupported("bert: model_type '" + j.value("model_type", "") + "'");
  }
  if (j.value("hidden_act", "gelu") != "gelu") {
    return Status::NotSupported("bert: hidden_act '" + j.value("hidden_act", "") + "'");
  }
  if (j.value("position_embedding_type", "absolute") != "absolute") {
    return Status::NotSupported("bert: only absolute position embeddings");
  }
  BertConfig c;
  try {
    c.vocab_size = j.at("vocab_size").get<int32_t>();
    c.hidden_size = j.at("hidden_size").get<int32_t>();
    c.num_layers = j.at("num_hidden_layers").get<int32_t>();
    c.num_heads = j.at("num_attention_heads").get<int32_t>();
    c.intermediate_size = j.at("intermediate_size").get<int32_t>();
    c.max_position_embeddings = j.at("max_position_embeddings").get<int32_t>();
    c.type_vocab_size = j.value("type_vocab_size", 2);
    c.layer_norm_eps = j.value("layer_norm_eps", 1e-12f);
  } catch (const json::exception& e) {
    return Status::Corruption(std::string("bert: config.json: ") + e.what());
  }
  if (c.hidden_size <= 0 || c.num_heads <= 0 || c.hidden_size % c.num_heads != 0 ||
      c.num_layers <= 0 || c.vocab_size <= 0 || c.max_position_embeddings <= 2 ||
      c.type_vocab_size <= 0 || c.intermediate_size <= 0) {
    return Status::Corruption("bert: config.json has inconsistent sizes");
  }
  c.max_seq_length = c.max_position_embeddings;
  const std::string st_config = JoinPath(dir, "sentence_bert_config.json");
  if (env->FileExists(st_config)) {
    ASSIGN_OR_RETURN(std::string st_text, env->ReadFile(st_config));
    json s = json::parse(st_text, nullptr, false);
    if (s.is_object() && s.contains("max_seq_length") && s["max_seq_length"].is_number_integer()) {
      c.max_seq_length =
          std::clamp(s["max_seq_length"].get<int32_t>(), 3, c.max_position_embeddings);
    }
  }
  const std::string pooling = JoinPath(dir, "1_Pooling/config.json");
  if (env->FileExists(pooling)) {
    ASSIGN_OR_RETURN(std::string p_text, env->ReadFile(pooling));
    json p = json::parse(p_text, nullptr, false);
    if (!p.is_object() || !p.value("pooling_mode_mean_tokens", false)) {
      return Status::NotSupported("bert: only mean pooling is supported (1_Pooling/config.json)");
    }
  }
  return c;
}

}  // namespace

BertEncoder::BertEncoder() = default;
BertEncoder::~BertEncoder() = default;

Result<std::unique_ptr<BertEncoder>> BertEncoder::Load(Env* env, const std::string& model_dir) {
  std::unique_ptr<BertEncoder> enc(new BertEncoder());
  ASSIGN_OR_RETURN(enc->config_, ParseConfig(env, model_dir));
  ASSIGN_OR_RETURN(enc->tokenizer_, LoadTokenizer(env, model_dir));
  ASSIGN_OR_RETURN(auto file, SafetensorsFile::Open(env, JoinPath(model_dir, "model.safetensors")));
  const BertConfig& c = enc->config_;
  const int64_t h = c.hidden_size;
  const int64_t f = c.intermediate_size;
  auto w = std::make_unique<Weights>();
  RETURN_IF_ERROR(
      CopyTensor(*file, "embeddings.word_embeddings.weight", {c.vocab_size, h}, &w->word));
  RETURN_IF_ERROR(CopyTensor(*file, "embeddings.position_embeddings.weight",
                             {c.max_position_embeddings, h}, &w->position));
  RETURN_IF_ERROR(CopyTensor(*file, "embeddings.token_type_embeddings.weight",
                             {c.type_vocab_size, h}, &w->token_type));
  RETURN_IF_ERROR(CopyTensor(*file, "embeddings.LayerNorm.weight", {h}, &w->ln_w));
  RETURN_IF_ERROR(CopyTensor(*file, "embeddings.LayerNorm.bias", {h}, &w->ln_b));
  w->layers.resize(static_cast<size_t>(c.num_layers));
  for (int32_t l = 0; l < c.num_layers; ++l) {
    const std::string p = "encoder.layer." + std::to_string(l) + ".";
    Layer& L = w->layers[l];
    const struct {
      const char* name;
      std::vector<int64_t> shape;
      std::vector<float>* dst;
    } tensors[] = {
        {"attention.self.query.weight", {h, h}, &L.wq},
        {"attention.self.query.bias", {h}, &L.bq},
        {"attention.self.key.weight", {h, h}, &L.wk},
        {"attention.self.key.bias", {h}, &L.bk},
        {"attention.self.value.weight", {h, h}, &L.wv},
        {"attention.self.value.bias", {h}, &L.bv},
        {"attention.output.dense.weight", {h, h}, &L.wo},
        {"attention.output.dense.bias", {h}, &L.bo},
        {"attention.output.LayerNorm.weight", {h}, &L.ln1_w},
        {"attention.output.LayerNorm.bias", {h}, &L.ln1_b},
        {"intermediate.dense.weight", {f, h}, &L.wi},
        {"intermediate.dense.bias", {f}, &L.bi},
        {"output.dense.weight", {h, f}, &L.wo2},
        {"output.dense.bias", {h}, &L.bo2},
        {"output.LayerNorm.weight", {h}, &L.ln2_w},
        {"output.LayerNorm.bias", {h}, &L.ln2_b},
    };
    for (const auto& t : tensors) RETURN_IF_ERROR(CopyTensor(*file, p + t.name, t.shape, t.dst));
  }
  enc->weights_ = std::move(w);
  return enc;
}

Result<std::vector<int32_t>> BertEncoder::Tokenize(const std::string& text) const {
  EncodeOptions options;
  options.parse_special = false;
  options.add_special_tokens = true;
  ASSIGN_OR_RETURN(std::vector<int32_t> ids, tokenizer_->EncodeWithOptions(text, options));
  if (ids.size() < 2) return Status::Internal("bert: tokenizer added no [CLS]/[SEP]");
  if (ids.size() > static_cast<size_t>(config_.max_seq_length)) {
    const int32_t sep = ids.back();
    ids.resize(static_cast<size_t>(config_.max_seq_length));
    ids.back() = sep;
  }
  for (int32_t id : ids) {
    if (id < 0 || id >= config_.vocab_size) return Status::Internal("bert: token id out of range");
  }
  return ids;
}

void BertEncoder::Encode(const std::vector<int32_t>& ids, float* out) {
  const BertConfig& c = config_;
  const Weights& w = *weights_;
  const int64_t n = static_cast<int64_t>(ids.size());
  const int64_t h = c.hidden_size;
  const int64_t f = c.intermediate_size;
  const int64_t heads = c.num_heads;
  const int64_t dh = h / heads;
  x_.resize(n * h);
  q_.resize(n * h);
  k_.resize(n * h);
  v_.resize(n * h);
  ctx_.resize(n * h);
  tmp_.resize(n * h);
  ffn_.resize(n * f);
  probs_.resize(n);
  cpu::EmbeddingLookup(w.word.data(), ids.data(), n, h, x_.data());
  for (int64_t t = 0; t < n; ++t) {
    for (int64_t i = 0; i < h; ++i) x_[t * h + i] += w.position[t * h + i] + w.token_type[i];
  }
  LayerNorm(x_.data(), w.ln_w.data(), w.ln_b.data(), n, h, c.layer_norm_eps);
  const float scale = 1.0f / std::sqrt(static_cast<float>(dh));
  for (const Layer& L : w.layers) {
    cpu::Matmul(x_.data(), L.wq.data(), L.bq.data(), n, h, h, q_.data());
    cpu::Matmul(x_.data(), L.wk.data(), L.bk.data(), n, h, h, k_.data());
    cpu::Matmul(x_.data(), L.wv.data(), L.bv.data(), n, h, h, v_.data());
    // Bidirectional attention per head; sequences are short, so a plain loop suffices.
    for (int64_t hd = 0; hd < heads; ++hd) {
      for (int64_t i = 0; i < n; ++i) {
        const float* qi = q_.data() + i * h + hd * dh;
        float max_score = -1e30f;
        for (int64_t j = 0; j < n; ++j) {
          probs_[j] = index::Dot(qi, k_.data() + j * h + hd * dh, dh) * scale;
          max_score = std::max(max_score, probs_[j]);
        }
        double sum = 0.0;
        for (int64_t j = 0; j < n; ++j) sum += probs_[j] = std::exp(probs_[j] - max_score);
        float* ci = ctx_.data() + i * h + hd * dh;
        std::fill(ci, ci + dh, 0.0f);
        for (int64_t j = 0; j < n; ++j) {
          const float p = static_cast<float>(probs_[j] / sum);
          const float* vj = v_.data() + j * h + hd * dh;
          for (int64_t d = 0; d < dh; ++d) ci[d] += p * vj[d];
        }
      }
    }
    cpu::Matmul(ctx_.data(), L.wo.data(), L.bo.data(), n, h, h, tmp_.data());
    for (int64_t i = 0; i < n * h; ++i) x_[i] += tmp_[i];
    LayerNorm(x_.data(), L.ln1_w.data(), L.ln1_b.data(), n, h, c.layer_norm_eps);
    cpu::Matmul(x_.data(), L.wi.data(), L.bi.data(), n, f, h, ffn_.data());
    for (int64_t i = 0; i < n * f; ++i) {
      ffn_[i] = 0.5f * ffn_[i] * (1.0f + std::erf(ffn_[i] * 0.70710678118654752f));
    }
    cpu::Matmul(ffn_.data(), L.wo2.data(), L.bo2.data(), n, h, f, tmp_.data());
    for (int64_t i = 0; i < n * h; ++i) x_[i] += tmp_[i];
    LayerNorm(x_.data(), L.ln2_w.data(), L.ln2_b.data(), n, h, c.layer_norm_eps);
  }
  std::fill(out, out + h, 0.0f);
  for (int64_t t = 0; t < n; ++t) {
    for (int64_t i = 0; i < h; ++i) out[i] += x_[t * h + i];
  }
  for (int64_t i = 0; i < h; ++i) out[i] /= static_cast<float>(n);
}

Result<std::vector<float>> BertEncoder::Embed(const std::vector<std::string>& texts) {
  const int64_t h = config_.hidden_size;
  std::vector<float> out(texts.size() * static_cast<size_t>(h));
  for (size_t r = 0; r < texts.size(); ++r) {
    ASSIGN_OR_RETURN(std::vector<int32_t> ids, Tokenize(texts[r]));
    Encode(ids, out.data() + r * h);
  }
  index::NormalizeRows(out.data(), static_cast<int64_t>(texts.size()), h);
  return out;
}

}  // namespace kvkeep
