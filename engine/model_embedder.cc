#include "engine/model_embedder.h"

#include <spdlog/spdlog.h>

#include <algorithm>

#include "base/bf16.h"
#include "engine/model_config.h"

namespace kvkeep {

Result<std::unique_ptr<ModelKeyEmbedder>> ModelKeyEmbedder::Load(
    Env* env, const std::string& model_path, const ModelKeyEmbedderOptions& options) {
  if (options.max_tokens < 1) {
    return Status::InvalidArgument("model embedder: max_tokens must be >= 1");
  }
  ASSIGN_OR_RETURN(ModelConfig config, LoadModelConfig(env, model_path));
  std::unique_ptr<ModelKeyEmbedder> e(new ModelKeyEmbedder());
  e->options_ = options;
  ASSIGN_OR_RETURN(e->weights_, ModelWeights::Load(env, model_path, config));
  ASSIGN_OR_RETURN(e->tokenizer_, LoadTokenizer(env, model_path));
  BackendOptions bo;
  bo.block_size = 16;
  bo.num_kv_blocks = (options.max_tokens + bo.block_size - 1) / bo.block_size;
  bo.kv_dtype = KvDType::kF32;
  bo.num_threads = options.num_threads;
  bo.cpu_quantized_weights = options.cpu_quantized_weights;
  ASSIGN_OR_RETURN(e->backend_, CreateCpuBackend(*e->weights_, bo));
  const KvPoolShape& s = e->backend_->kv_shape();
  e->first_layer_ = options.first_layer < 0 ? s.num_layers / 2 : options.first_layer;
  if (e->first_layer_ >= s.num_layers) {
    return Status::InvalidArgument("model embedder: first layer " +
                                   std::to_string(e->first_layer_) + " >= the model's " +
                                   std::to_string(s.num_layers) + " layers");
  }
  e->dim_ = (s.num_layers - e->first_layer_) * s.num_kv_heads * s.head_dim;
  e->blocks_.resize(s.num_blocks);
  for (int32_t b = 0; b < s.num_blocks; ++b) e->blocks_[b] = b;
  e->raw_.resize(e->backend_->block_bytes());
  return e;
}

Status ModelKeyEmbedder::EmbedTokens(const std::vector<int32_t>& tokens, float* out) {
  const KvPoolShape& s = backend_->kv_shape();
  const int32_t n = static_cast<int32_t>(tokens.size());
  ForwardBatch b;
  b.token_ids = tokens;
  for (int32_t i = 0; i < n; ++i) {
    b.positions.push_back(i);
    b.slot_mapping.push_back(blocks_[i / s.block_size] * s.block_size + i % s.block_size);
  }
  b.q_start = {0, n};
  b.kv_len = {n};
  const int32_t used_blocks = (n + s.block_size - 1) / s.block_size;
  b.block_tables.assign(blocks_.begin(), blocks_.begin() + used_blocks);
  b.max_blocks_per_seq = used_blocks;
  b.logit_rows = {n - 1};
  std::vector<float> logits;
  RETURN_IF_ERROR(backend_->Forward(b, &logits));
  // Sum the keys of every entry, block by block: K of (layer l, head h, slot j) sits at
  // l * layer_stride + (h * block_size + j) * head_dim (kernels/paged_kv.h).
  std::fill(out, out + dim_, 0.0f);
  const float* pool = reinterpret_cast<const float*>(raw_.data());
  for (int32_t blk = 0; blk < used_blocks; ++blk) {
    RETURN_IF_ERROR(backend_->ReadBlock(blocks_[blk], raw_.data()));
    const int32_t entries = std::min(s.block_size, n - blk * s.block_size);
    for (int32_t l = first_layer_; l < s.num_layers; ++l) {
      for (int32_t h = 0; h < s.num_kv_heads; ++h) {
        float* dst = out + (int64_t{l - first_layer_} * s.num_kv_heads + h) * s.head_dim;
        for (int32_t j = 0; j < entries; ++j) {
          const float* k =
              pool + l * s.layer_stride() + (int64_t{h} * s.block_size + j) * s.head_dim;
          for (int32_t d = 0; d < s.head_dim; ++d) dst[d] += k[d];
        }
      }
    }
  }
  // The mean; the L2 normalisation that follows makes the 1/n immaterial to the direction,
  // but it keeps the pre-normalised vector the SentenceKV mean.
  for (int32_t d = 0; d < dim_; ++d) out[d] /= static_cast<float>(n);
  return Status::OK();
}

Result<const std::vector<float>*> ModelKeyEmbedder::Pooled(const std::string& text) {
  if (auto it = pooled_.find(text); it != pooled_.end()) return &it->second;
  std::vector<float> v(dim_, 0.0f);
  ASSIGN_OR_RETURN(std::vector<int32_t> tokens, tokenizer_->Encode(text, false));
  if (tokens.size() > static_cast<size_t>(options_.max_tokens)) {
    tokens.resize(options_.max_tokens);
  }
  if (!tokens.empty()) RETURN_IF_ERROR(EmbedTokens(tokens, v.data()));
  return &pooled_.emplace(text, std::move(v)).first->second;
}

void ModelKeyEmbedder::Observe(const std::vector<std::string>& texts) {
  observed_sum_.resize(dim_, 0.0);
  for (const std::string& t : texts) {
    auto v = Pooled(t);
    if (!v.ok()) {
      spdlog::warn("model embedder: observe: {}", v.status().ToString());
      continue;
    }
    const std::vector<float>& row = **v;
    if (std::all_of(row.begin(), row.end(), [](float x) { return x == 0.0f; })) continue;
    for (int32_t d = 0; d < dim_; ++d) observed_sum_[d] += row[d];
    ++num_observed_;
  }
}

Result<std::vector<float>> ModelKeyEmbedder::Embed(const std::vector<std::string>& texts) {
  std::vector<float> rows(texts.size() * static_cast<size_t>(dim_), 0.0f);
  for (size_t i = 0; i < texts.size(); ++i) {
    float* row = rows.data() + i * dim_;
    if (pooled_.count(texts[i])) {
      const std::vector<float>& v = pooled_.at(texts[i]);
      std::copy(v.begin(), v.end(), row);
    } else {
      ASSIGN_OR_RETURN(std::vector<int32_t> tokens, tokenizer_->Encode(texts[i], false));
      if (tokens.empty()) continue;  // nothing to embed: a zero row
      if (tokens.size() > static_cast<size_t>(options_.max_tokens)) {
        tokens.resize(options_.max_tokens);
      }
      RETURN_IF_ERROR(EmbedTokens(tokens, row));
    }
    if (num_observed_ > 0 && std::any_of(row, row + dim_, [](float x) { return x != 0.0f; })) {
      for (int32_t d = 0; d < dim_; ++d) {
        row[d] -= static_cast<float>(observed_sum_[d] / num_observed_);
      }
    }
  }
  index::NormalizeRows(rows.data(), static_cast<int64_t>(texts.size()), dim_);
  return rows;
}

}  // namespace kvkeep
