#include "engine/cpu_backend.h"

#include <omp.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <string>

#include "base/bf16.h"
#include "engine/model_weights.h"
#include "kernels/cpu/attention.h"
#include "kernels/cpu/attention_scores.h"
#include "kernels/cpu/kv_compact.h"
#include "kernels/cpu/ops.h"
#include "kernels/cpu/quant_matmul.h"

namespace kvkeep {
namespace {

// A weight matrix [out][in]: fp32, or its GGUF Q8_0/Q4_1 blocks packed for the kernels.
struct LinearWeight {
  std::vector<float> f32;        // empty when quantised
  cpu::PackedQuantMatrix quant;  // quant.rows > 0 when quantised
};

struct LayerWeights {
  std::vector<float> input_norm, post_norm;
  LinearWeight wq, wk, wv, wo;
  std::vector<float> bq, bk, bv;      // empty without attention_bias
  std::vector<float> q_norm, k_norm;  // [head_dim], empty without qk_norm
  LinearWeight w_gate, w_up, w_down;
};

// Grows v to at least n elements; never shrinks, so steady-state steps do not allocate.
void Grow(std::vector<float>& v, size_t n) {
  if (v.size() < n) v.resize(n);
}

Status InvalidBatch(const std::string& what) {
  return Status::InvalidArgument("forward batch: " + what);
}

template <typename KvT>
class CpuBackend final : public Backend {
 public:
  CpuBackend(const ModelConfig& config, const KvPoolShape& shape, const BackendOptions& options)
      : config_(config),
        shape_(shape),
        num_threads_(options.num_threads),
        quantized_(options.cpu_quantized_weights),
        pool_(static_cast<size_t>(shape.total_elements())) {}

  Status LoadWeights(const ModelWeights& weights);

  std::string name() const override { return "cpu"; }
  const ModelConfig& config() const override { return config_; }
  const KvPoolShape& kv_shape() const override { return shape_; }
  Status Forward(const ForwardBatch& batch, std::vector<float>* logits) override {
    return Run(batch, 0, logits, nullptr);
  }
  Status ForwardScored(const ForwardBatch& batch, int32_t num_scored, std::vector<float>* logits,
                       std::vector<float>* scores) override;
  Status CompactKvLayers(std::span<const int32_t> block_table, std::span<const int32_t> num_entries,
                         std::span<const int32_t> keep, std::span<const int32_t> num_keep) override;
  Status CopyBlocks(const std::vector<std::pair<int32_t, int32_t>>& src_dst) override;
  size_t block_bytes() const override { return shape_.block_stride() * sizeof(KvT); }
  Status ReadBlock(int32_t block_id, void* dst) override;
  Status WriteBlock(int32_t block_id, const void* src) override;

 private:
  // Forward; with scores != nullptr also the scores of layer l at
  // scores[l * num_kv_heads * num_scored].
  Status Run(const ForwardBatch& batch, int32_t num_scored, std::vector<float>* logits,
             float* scores);
  Status Attention(const ForwardBatch& batch, int layer, bool all_decode, int32_t num_scored,
                   float* scores);
  void Layer(const ForwardBatch& batch, int layer, int64_t t);
  // y[m][out] = x[m][in] * w^T (+ bias).
  void Linear(const float* x, const LinearWeight& w, const float* bias, int64_t m, int64_t n,
              int64_t k, float* y);

  ModelConfig config_;
  KvPoolShape shape_;
  int32_t num_threads_;  // 0: OpenMP's default
  bool quantized_;       // keep Q8_0/Q4_1 matrices quantised
  std::vector<KvT> pool_;
  std::vector<float> embed_, final_norm_;
  LinearWeight lm_head_;  // f32 empty (and quant unset) when tied to the fp32 embedding
  std::vector<LayerWeights> layers_;
  std::vector<float> inv_freq_;
  // Activations, [num_tokens][...], grown on demand.
  std::vector<float> x_, xn_, q_, k_, v_, attn_, proj_, gate_, up_, rows_, layer_scores_;
  std::vector<int32_t> layer_kv_len_, layer_slots_;  // one layer's, under layer_kv_trim
  cpu::Q8Rows q8_;                                   // quantised activations
};

template <typename KvT>
Status CpuBackend<KvT>::LoadWeights(const ModelWeights& weights) {
  auto get = [&](const std::string& name, std::vector<float>* out) -> Status {
    const TensorView* t = weights.Get(name);
    if (t == nullptr) return Status::InvalidArgument("weights: missing tensor " + name);
    *out = ModelWeights::ToFloat(*t);
    return Status::OK();
  };
  int num_quantized = 0;
  auto linear = [&](const std::string& name, LinearWeight* out) -> Status {
    const QuantizedTensor* q = quantized_ ? weights.GetQuantized(name) : nullptr;
    if (q == nullptr) return get(name, &out->f32);
    out->quant = cpu::PackQuantMatrix(
        q->type == GgmlType::kQ8_0 ? cpu::GgmlQuantType::kQ8_0 : cpu::GgmlQuantType::kQ4_1, q->rows,
        q->cols, q->bytes.data());
    ++num_quantized;
    return Status::OK();
  };
  RETURN_IF_ERROR(get("model.embed_tokens.weight", &embed_));
  RETURN_IF_ERROR(get("model.norm.weight", &final_norm_));
  if (!config_.tie_word_embeddings || (quantized_ && weights.GetQuantized("lm_head.weight"))) {
    RETURN_IF_ERROR(linear("lm_head.weight", &lm_head_));
  }
  layers_.resize(config_.num_layers);
  for (int i = 0; i < config_.num_layers; ++i) {
    const std::string p = "model.layers." + std::to_string(i) + ".";
    LayerWeights& l = layers_[i];
    RETURN_IF_ERROR(get(p + "input_layernorm.weight", &l.input_norm));
    RETURN_IF_ERROR(get(p + "post_attention_layernorm.weight", &l.post_norm));
    RETURN_IF_ERROR(linear(p + "self_attn.q_proj.weight", &l.wq));
    RETURN_IF_ERROR(linear(p + "self_attn.k_proj.weight", &l.wk));
    RETURN_IF_ERROR(linear(p + "self_attn.v_proj.weight", &l.wv));
    RETURN_IF_ERROR(linear(p + "self_attn.o_proj.weight", &l.wo));
    if (config_.attention_bias) {
      RETURN_IF_ERROR(get(p + "self_attn.q_proj.bias", &l.bq));
      RETURN_IF_ERROR(get(p + "self_attn.k_proj.bias", &l.bk));
      RETURN_IF_ERROR(get(p + "self_attn.v_proj.bias", &l.bv));
    }
    if (config_.qk_norm) {
      RETURN_IF_ERROR(get(p + "self_attn.q_norm.weight", &l.q_norm));
      RETURN_IF_ERROR(get(p + "self_attn.k_norm.weight", &l.k_norm));
    }
    RETURN_IF_ERROR(linear(p + "mlp.gate_proj.weight", &l.w_gate));
    RETURN_IF_ERROR(linear(p + "mlp.up_proj.weight", &l.w_up));
    RETURN_IF_ERROR(linear(p + "mlp.down_proj.weight", &l.w_down));
  }
  if (num_quantized > 0) {
    spdlog::info("cpu backend: {} matrices kept quantised (Q8_0/Q4_1, {} kernels)", num_quantized,
                 cpu::QuantIsaName(cpu::DetectQuantIsa()));
  }
  config_.rope.head_dim = config_.head_dim;
  const int rotary = config_.rope.rotary_dim > 0 ? config_.rope.rotary_dim : config_.head_dim;
  inv_freq_.resize(rotary / 2);
  cpu::RopeInvFreq(config_.rope, inv_freq_.data());
  return Status::OK();
}

template <typename KvT>
Status CpuBackend<KvT>::Attention(const ForwardBatch& batch, int layer, bool all_decode,
                                  int32_t num_scored, float* scores) {
  AttentionBatch ab;
  ab.num_seqs = batch.num_seqs();
  ab.q_start = batch.q_start.data();
  ab.kv_len = batch.kv_len.data();
  ab.block_tables = batch.block_tables.data();
  ab.max_blocks_per_seq = batch.max_blocks_per_seq;
  const int32_t* slots = batch.slot_mapping.data();
  int32_t trim0 = 0;                   // sequence 0's trim in this layer (scoring has one sequence)
  if (!batch.layer_kv_trim.empty()) {  // this layer's own context lengths and slots
    trim0 = batch.layer_kv_trim[int64_t{layer} * batch.num_seqs()];
    layer_kv_len_.resize(batch.num_seqs());
    layer_slots_.resize(batch.num_tokens());
    LayerKvLayout(batch, layer, shape_.block_size, layer_kv_len_.data(), layer_slots_.data());
    ab.kv_len = layer_kv_len_.data();
    slots = layer_slots_.data();
  }
  AttentionParams ap;
  ap.num_q_heads = config_.num_q_heads;
  ap.scale = 1.0f / std::sqrt(static_cast<float>(config_.head_dim));
  PagedKv<KvT> view = LayerView(pool_.data(), shape_, layer);
  RETURN_IF_ERROR(cpu::WriteKv(view, k_.data(), v_.data(), slots, batch.num_tokens()));
  if (scores != nullptr) {
    // This layer scores its own first num_scored - trim entries; the rest stay 0.
    const int32_t h = config_.num_kv_heads, own = num_scored - trim0;
    float* out = scores + int64_t{layer} * h * num_scored;
    if (trim0 == 0) {
      RETURN_IF_ERROR(cpu::AttentionScores(ap, ab, view, q_.data(), own, out));
    } else {
      Grow(layer_scores_, int64_t{h} * own);
      RETURN_IF_ERROR(cpu::AttentionScores(ap, ab, view, q_.data(), own, layer_scores_.data()));
      for (int32_t r = 0; r < h; ++r) {
        std::copy_n(layer_scores_.data() + int64_t{r} * own, own, out + int64_t{r} * num_scored);
      }
    }
  }
  if (all_decode) return cpu::PagedDecodeAttention(ap, ab, view, q_.data(), attn_.data());
  return cpu::PagedAttention(ap, ab, view, q_.data(), attn_.data());
}

template <typename KvT>
Status CpuBackend<KvT>::ForwardScored(const ForwardBatch& batch, int32_t num_scored,
                                      std::vector<float>* logits, std::vector<float>* scores) {
  if (batch.num_seqs() != 1 || num_scored < 0 || num_scored > batch.kv_len[0]) {
    return InvalidBatch("scoring needs one sequence and 0 <= num_scored <= kv_len");
  }
  scores->assign(int64_t{config_.num_layers} * config_.num_kv_heads * num_scored, 0.0f);
  return Run(batch, num_scored, logits, scores->data());
}

template <typename KvT>
Status CpuBackend<KvT>::CompactKvLayers(std::span<const int32_t> block_table,
                                        std::span<const int32_t> num_entries,
                                        std::span<const int32_t> keep,
                                        std::span<const int32_t> num_keep) {
  RETURN_IF_ERROR(CheckCompactKvLayers(shape_, block_table, num_entries, keep, num_keep));
  const int32_t layers = shape_.num_layers;
  const int32_t* k = keep.data();
  for (int l = 0; l < layers; ++l) {
    RETURN_IF_ERROR(cpu::CompactKv(LayerView(pool_.data(), shape_, l), block_table.data(),
                                   num_entries[l], k, num_keep[l]));
    k += int64_t{shape_.num_kv_heads} * num_keep[l];
  }
  return Status::OK();
}

template <typename KvT>
void CpuBackend<KvT>::Linear(const float* x, const LinearWeight& w, const float* bias, int64_t m,
                             int64_t n, int64_t k, float* y) {
  if (w.quant.rows > 0) {
    cpu::QuantMatmul(x, w.quant, bias, m, y, &q8_);
  } else {
    cpu::Matmul(x, w.f32.data(), bias, m, n, k, y);
  }
}

template <typename KvT>
void CpuBackend<KvT>::Layer(const ForwardBatch& batch, int layer, int64_t t) {
  const LayerWeights& w = layers_[layer];
  const int64_t h = config_.hidden_size, d = config_.head_dim;
  const int64_t qd = config_.num_q_heads * d, kvd = config_.num_kv_heads * d;
  const float eps = config_.rms_norm_eps;
  auto bias = [](const std::vector<float>& b) { return b.empty() ? nullptr : b.data(); };

  cpu::RmsNorm(x_.data(), w.input_norm.data(), t, h, eps, xn_.data());
  Linear(xn_.data(), w.wq, bias(w.bq), t, qd, h, q_.data());
  Linear(xn_.data(), w.wk, bias(w.bk), t, kvd, h, k_.data());
  Linear(xn_.data(), w.wv, bias(w.bv), t, kvd, h, v_.data());
  if (config_.qk_norm) {
    cpu::RmsNorm(q_.data(), w.q_norm.data(), t * config_.num_q_heads, d, eps, q_.data());
    cpu::RmsNorm(k_.data(), w.k_norm.data(), t * config_.num_kv_heads, d, eps, k_.data());
  }
  cpu::ApplyRope(config_.rope, inv_freq_.data(), batch.positions.data(), t, config_.num_q_heads,
                 q_.data());
  cpu::ApplyRope(config_.rope, inv_freq_.data(), batch.positions.data(), t, config_.num_kv_heads,
                 k_.data());
}

template <typename KvT>
Status CpuBackend<KvT>::Run(const ForwardBatch& batch, int32_t num_scored,
                            std::vector<float>* logits, float* scores) {
  RETURN_IF_ERROR(ValidateForwardBatch(batch, shape_, config_.vocab_size));
  // The OpenMP thread count is per calling thread: set it on the thread that runs steps.
  if (num_threads_ > 0) omp_set_num_threads(num_threads_);
  const int64_t t = batch.num_tokens();
  const int64_t h = config_.hidden_size, inter = config_.intermediate_size;
  const int64_t qd = int64_t{config_.num_q_heads} * config_.head_dim;
  const int64_t kvd = int64_t{config_.num_kv_heads} * config_.head_dim;
  Grow(x_, t * h);
  Grow(xn_, t * h);
  Grow(q_, t * qd);
  Grow(k_, t * kvd);
  Grow(v_, t * kvd);
  Grow(attn_, t * qd);
  Grow(proj_, t * h);
  Grow(gate_, t * inter);
  Grow(up_, t * inter);
  const bool all_decode = t == batch.num_seqs();

  cpu::EmbeddingLookup(embed_.data(), batch.token_ids.data(), t, h, x_.data());
  for (int l = 0; l < config_.num_layers; ++l) {
    const LayerWeights& w = layers_[l];
    Layer(batch, l, t);
    RETURN_IF_ERROR(Attention(batch, l, all_decode, num_scored, scores));
    Linear(attn_.data(), w.wo, nullptr, t, h, qd, proj_.data());
    for (int64_t i = 0; i < t * h; ++i) x_[i] += proj_[i];
    cpu::RmsNorm(x_.data(), w.post_norm.data(), t, h, config_.rms_norm_eps, xn_.data());
    Linear(xn_.data(), w.w_gate, nullptr, t, inter, h, gate_.data());
    Linear(xn_.data(), w.w_up, nullptr, t, inter, h, up_.data());
    cpu::SiluMul(gate_.data(), up_.data(), t, inter, gate_.data());
    Linear(gate_.data(), w.w_down, nullptr, t, h, inter, proj_.data());
    for (int64_t i = 0; i < t * h; ++i) x_[i] += proj_[i];
  }
  // Final norm and lm_head only for the rows whose logits are wanted.
  const int64_t r = static_cast<int64_t>(batch.logit_rows.size());
  Grow(rows_, r * h);
  for (int64_t i = 0; i < r; ++i) {
    std::memcpy(rows_.data() + i * h, x_.data() + int64_t{batch.logit_rows[i]} * h,
                h * sizeof(float));
  }
  cpu::RmsNorm(rows_.data(), final_norm_.data(), r, h, config_.rms_norm_eps, rows_.data());
  logits->resize(r * config_.vocab_size);
  if (r > 0 && lm_head_.f32.empty() && lm_head_.quant.rows == 0) {  // tied, fp32
    cpu::Matmul(rows_.data(), embed_.data(), nullptr, r, config_.vocab_size, h, logits->data());
  } else if (r > 0) {
    Linear(rows_.data(), lm_head_, nullptr, r, config_.vocab_size, h, logits->data());
  }
  return Status::OK();
}

template <typename KvT>
Status CpuBackend<KvT>::CopyBlocks(const std::vector<std::pair<int32_t, int32_t>>& src_dst) {
  for (const auto& [src, dst] : src_dst) {
    RETURN_IF_ERROR(CheckBlockId(shape_, src));
    RETURN_IF_ERROR(CheckBlockId(shape_, dst));
  }
  const int64_t n = shape_.block_stride();
  for (const auto& [src, dst] : src_dst) {
    if (src != dst) std::memcpy(&pool_[dst * n], &pool_[src * n], n * sizeof(KvT));
  }
  return Status::OK();
}

template <typename KvT>
Status CpuBackend<KvT>::ReadBlock(int32_t block_id, void* dst) {
  RETURN_IF_ERROR(CheckBlockId(shape_, block_id));
  std::memcpy(dst, &pool_[block_id * shape_.block_stride()], block_bytes());
  return Status::OK();
}

template <typename KvT>
Status CpuBackend<KvT>::WriteBlock(int32_t block_id, const void* src) {
  RETURN_IF_ERROR(CheckBlockId(shape_, block_id));
  std::memcpy(&pool_[block_id * shape_.block_stride()], src, block_bytes());
  return Status::OK();
}

}  // namespace

Status ValidateForwardBatch(const ForwardBatch& b, const KvPoolShape& shape, int32_t vocab_size) {
  const int32_t t = b.num_tokens(), n = b.num_seqs();
  if (t == 0 || n == 0) return InvalidBatch("empty batch");
  if (b.positions.size() != b.token_ids.size() || b.slot_mapping.size() != b.token_ids.size()) {
    return InvalidBatch("token_ids, positions and slot_mapping differ in length");
  }
  if (b.q_start.size() != static_cast<size_t>(n) + 1 || b.q_start[0] != 0 || b.q_start[n] != t) {
    return InvalidBatch("q_start must have num_seqs + 1 entries from 0 to num_tokens");
  }
  if (b.max_blocks_per_seq <= 0 ||
      b.block_tables.size() != static_cast<size_t>(n) * b.max_blocks_per_seq) {
    return InvalidBatch("block_tables must be num_seqs x max_blocks_per_seq");
  }
  for (int32_t id : b.token_ids) {
    if (id < 0 || id >= vocab_size) {
      return InvalidBatch("token id " + std::to_string(id) + " outside the vocabulary");
    }
  }
  const int32_t bs = shape.block_size;
  for (int32_t i = 0; i < n; ++i) {
    const int32_t n_new = b.q_start[i + 1] - b.q_start[i];
    if (n_new < 1 || b.kv_len[i] < n_new || b.kv_len[i] > int64_t{b.max_blocks_per_seq} * bs) {
      return InvalidBatch("sequence " + std::to_string(i) + ": bad q_start/kv_len");
    }
    const int32_t* table = &b.block_tables[static_cast<size_t>(i) * b.max_blocks_per_seq];
    const int32_t used = (b.kv_len[i] + bs - 1) / bs;
    for (int32_t j = 0; j < used; ++j) {
      if (table[j] < 0 || table[j] >= shape.num_blocks) {
        return InvalidBatch("sequence " + std::to_string(i) + ": block id " +
                            std::to_string(table[j]) + " outside the pool");
      }
    }
    for (int32_t j = 0; j < n_new; ++j) {
      const int32_t tok = b.q_start[i] + j;
      const int32_t index = b.kv_len[i] - n_new + j;
      if (b.slot_mapping[tok] != table[index / bs] * bs + index % bs) {
        return InvalidBatch("token " + std::to_string(tok) +
                            ": slot does not match its block table entry");
      }
      if (b.positions[tok] < 0) return InvalidBatch("negative position");
    }
  }
  for (int32_t row : b.logit_rows) {
    if (row < 0 || row >= t) return InvalidBatch("logit row outside the batch");
  }
  if (!b.layer_kv_trim.empty()) {
    if (b.layer_kv_trim.size() != static_cast<size_t>(shape.num_layers) * n) {
      return InvalidBatch("layer_kv_trim must be num_layers x num_seqs");
    }
    for (size_t j = 0; j < b.layer_kv_trim.size(); ++j) {
      const int32_t i = static_cast<int32_t>(j % n);
      const int32_t restored = b.kv_len[i] - (b.q_start[i + 1] - b.q_start[i]);
      if (b.layer_kv_trim[j] < 0 || b.layer_kv_trim[j] > restored) {
        return InvalidBatch("layer_kv_trim outside 0..kv_len - n_new");
      }
    }
  }
  return Status::OK();
}

Result<std::unique_ptr<Backend>> CreateCpuBackend(const ModelWeights& weights,
                                                  const BackendOptions& options) {
  const ModelConfig& config = weights.config();
  if (options.block_size <= 0) return Status::InvalidArgument("block_size must be positive");
  if (config.head_dim > cpu::kMaxHeadDim) {
    return Status::NotSupported("head_dim " + std::to_string(config.head_dim) +
                                " exceeds the CPU kernels' limit");
  }
  KvPoolShape shape;
  shape.num_layers = config.num_layers;
  shape.num_kv_heads = config.num_kv_heads;
  shape.block_size = options.block_size;
  shape.head_dim = config.head_dim;
  const size_t elem = options.kv_dtype == KvDType::kF32 ? sizeof(float) : sizeof(bf16);
  shape.num_blocks = options.num_kv_blocks;
  if (shape.num_blocks <= 0) {
    shape.num_blocks =
        static_cast<int32_t>(options.kv_memory_bytes / (shape.block_stride() * elem));
  }
  if (shape.num_blocks <= 0) {
    return Status::InvalidArgument("KV pool has no blocks: set num_kv_blocks or kv_memory_bytes");
  }
  spdlog::info(
      "cpu backend: {} layers, KV pool {} blocks x {} tokens ({} MiB, {}), weights {} MiB fp32",
      config.num_layers, shape.num_blocks, shape.block_size, shape.total_elements() * elem >> 20,
      options.kv_dtype == KvDType::kF32 ? "f32" : "bf16", config.NumParameters() * 4 >> 20);
  std::unique_ptr<Backend> backend;
  Status st;
  if (options.kv_dtype == KvDType::kF32) {
    auto b = std::make_unique<CpuBackend<float>>(config, shape, options);
    st = b->LoadWeights(weights);
    backend = std::move(b);
  } else {
    auto b = std::make_unique<CpuBackend<bf16>>(config, shape, options);
    st = b->LoadWeights(weights);
    backend = std::move(b);
  }
  RETURN_IF_ERROR(st);
  return backend;
}

}  // namespace kvkeep
