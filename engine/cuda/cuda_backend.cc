#include "engine/cuda/cuda_backend.h"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <string>
#include <vector>

#include "base/bf16.h"
#include "engine/cpu_backend.h"
#include "engine/cuda/cuda_backend_impl.h"
#include "engine/cuda/cuda_device.h"
#include "engine/cuda/cuda_swaps.h"
#include "engine/model_weights.h"
#include "kernels/cpu/ops.h"
#include "kernels/cuda/attention.h"
#include "kernels/cuda/cuda_status.h"
#include "kernels/cuda/gemm.h"
#include "kernels/cuda/kv_ops.h"
#include "kernels/cuda/ops.h"

namespace kvkeep::cuda_backend_detail {

Result<bf16_t*> CudaBackend::Upload(const ModelWeights& weights,
                                    const std::vector<std::string>& names) {
  std::vector<const TensorView*> views;
  int64_t total = 0;
  for (const std::string& n : names) {
    const TensorView* t = weights.Get(n);
    if (t == nullptr) return Status::InvalidArgument("weights: missing tensor " + n);
    views.push_back(t);
    total += t->NumElements();
  }
  ASSIGN_OR_RETURN(void* dev, device_->Allocate(total * sizeof(bf16_t)));
  weight_allocs_.push_back(dev);
  std::vector<bf16> host;
  int64_t offset = 0;
  for (const TensorView* t : views) {
    const int64_t n = t->NumElements();
    const void* src = t->data;
    if (t->dtype != DType::kBF16) {
      std::vector<float> f = ModelWeights::ToFloat(*t);
      host.resize(n);
      for (int64_t i = 0; i < n; ++i) host[i] = FloatToBf16(f[i]);
      src = host.data();
    }
    RETURN_IF_ERROR(
        device_->CopyHostToDevice(static_cast<bf16_t*>(dev) + offset, src, n * sizeof(bf16_t)));
    offset += n;
  }
  return static_cast<bf16_t*>(dev);
}

Status CudaBackend::Init(const ModelWeights& weights, const BackendOptions& options) {
  const ModelConfig& c = config_;
  if (c.attention_bias || c.qk_norm) {
    return Status::NotSupported("cuda backend: attention_bias / qk_norm models");
  }
  if (options.kv_dtype != KvDType::kBF16) {
    spdlog::info("cuda backend: the KV pool is bf16 (kv_dtype f32 applies to the CPU backend)");
  }
  const int group = c.num_q_heads / std::max(c.num_kv_heads, 1);
  if ((c.head_dim != 32 && c.head_dim != 64 && c.head_dim != 128) ||
      c.num_q_heads % c.num_kv_heads != 0 ||
      (group != 1 && group != 2 && group != 3 && group != 4 && group != 8)) {
    return Status::NotSupported("cuda backend: head_dim " + std::to_string(c.head_dim) +
                                ", GQA group " + std::to_string(group));
  }
  size_t free_start = 0, total = 0;
  RETURN_IF_ERROR(device_->MemoryInfo(&free_start, &total));
  ASSIGN_OR_RETURN(gemm_, cuda::Gemm::Create(device_->compute_stream()));
  constexpr size_t kGemmWorkspaceBytes = size_t{32} << 20;
  RETURN_IF_ERROR(gemm_workspace_.Reserve(kGemmWorkspaceBytes));
  RETURN_IF_ERROR(gemm_->SetWorkspace(gemm_workspace_.get(), kGemmWorkspaceBytes));

  ASSIGN_OR_RETURN(embed_, Upload(weights, {"model.embed_tokens.weight"}));
  ASSIGN_OR_RETURN(final_norm_, Upload(weights, {"model.norm.weight"}));
  if (c.tie_word_embeddings) {
    lm_head_ = embed_;
  } else {
    ASSIGN_OR_RETURN(lm_head_, Upload(weights, {"lm_head.weight"}));
  }
  layers_.resize(c.num_layers);
  for (int i = 0; i < c.num_layers; ++i) {
    const std::string p = "model.layers." + std::to_string(i) + ".";
    CudaLayer& l = layers_[i];
    ASSIGN_OR_RETURN(l.input_norm, Upload(weights, {p + "input_layernorm.weight"}));
    ASSIGN_OR_RETURN(l.post_norm, Upload(weights, {p + "post_attention_layernorm.weight"}));
    ASSIGN_OR_RETURN(l.wqkv,
                     (Upload(weights, {p + "self_attn.q_proj.weight", p + "self_attn.k_proj.weight",
                                       p + "self_attn.v_proj.weight"})));
    ASSIGN_OR_RETURN(l.wo, Upload(weights, {p + "self_attn.o_proj.weight"}));
    ASSIGN_OR_RETURN(l.wgate_up,
                     (Upload(weights, {p + "mlp.gate_proj.weight", p + "mlp.up_proj.weight"})));
    ASSIGN_OR_RETURN(l.wdown, Upload(weights, {p + "mlp.down_proj.weight"}));
  }
  config_.rope.head_dim = c.head_dim;
  const int rotary = config_.rope.rotary_dim > 0 ? config_.rope.rotary_dim : c.head_dim;
  std::vector<float> inv_freq(rotary / 2);
  cpu::RopeInvFreq(config_.rope, inv_freq.data());
  ASSIGN_OR_RETURN(void* f, device_->Allocate(inv_freq.size() * sizeof(float)));
  weight_allocs_.push_back(f);
  inv_freq_ = static_cast<float*>(f);
  RETURN_IF_ERROR(
      device_->CopyHostToDevice(inv_freq_, inv_freq.data(), inv_freq.size() * sizeof(float)));

  shape_.num_layers = c.num_layers;
  shape_.num_kv_heads = c.num_kv_heads;
  shape_.block_size = options.block_size;
  shape_.head_dim = c.head_dim;
  const size_t block = shape_.block_stride() * sizeof(bf16_t);
  int64_t blocks = options.num_kv_blocks;
  if (blocks <= 0 && options.kv_memory_bytes > 0) blocks = options.kv_memory_bytes / block;
  if (blocks <= 0) {
    size_t free_now = 0;
    RETURN_IF_ERROR(device_->MemoryInfo(&free_now, &total));
    const double weights_bytes = static_cast<double>(free_start - free_now);
    // Activations for ~8k tokens in flight plus logits rows, and cuBLAS workspace.
    const double reserve = 8192.0 * (c.hidden_size * 8.0 + c.intermediate_size * 6.0 +
                                     (c.num_q_heads + 2.0 * c.num_kv_heads) * c.head_dim * 4.0) +
                           256.0 * c.vocab_size * 6.0 + (512.0 * (1 << 20));
    const double budget = options.gpu_memory_fraction * free_start - weights_bytes - reserve;
    blocks = budget > 0 ? static_cast<int64_t>(budget / block) : 0;
  }
  if (blocks <= 0 || blocks > INT32_MAX) {
    return Status::ResourceExhausted("cuda backend: no room for a KV pool");
  }
  shape_.num_blocks = static_cast<int32_t>(blocks);
  ASSIGN_OR_RETURN(
      void* pool, device_->Allocate(static_cast<size_t>(shape_.total_elements()) * sizeof(bf16_t)));
  pool_ = static_cast<bf16_t*>(pool);
  spdlog::info("cuda backend on {} ({}): {} layers, KV pool {} blocks x {} tokens ({} MiB bf16)",
               device_->name(), device_->device_name(), c.num_layers, shape_.num_blocks,
               shape_.block_size, (shape_.total_elements() * 2) >> 20);
  return Status::OK();
}

Status CudaBackend::Reserve(int64_t t, int64_t num_seqs, int64_t r, int64_t max_blocks) {
  const ModelConfig& c = config_;
  const int64_t qd = int64_t{c.num_q_heads} * c.head_dim;
  const int64_t kvd = int64_t{c.num_kv_heads} * c.head_dim;
  RETURN_IF_ERROR(hidden_.Reserve(t * c.hidden_size * sizeof(float)));
  RETURN_IF_ERROR(xn_.Reserve(t * c.hidden_size * sizeof(bf16_t)));
  RETURN_IF_ERROR(qkv_.Reserve(t * (qd + 2 * kvd) * sizeof(bf16_t)));
  RETURN_IF_ERROR(attn_.Reserve(t * qd * sizeof(bf16_t)));
  RETURN_IF_ERROR(proj_.Reserve(t * c.hidden_size * sizeof(bf16_t)));
  RETURN_IF_ERROR(gate_up_.Reserve(t * 2 * c.intermediate_size * sizeof(bf16_t)));
  RETURN_IF_ERROR(act_.Reserve(t * c.intermediate_size * sizeof(bf16_t)));
  RETURN_IF_ERROR(rows_.Reserve(std::max<int64_t>(r, 1) * c.hidden_size * sizeof(bf16_t)));
  RETURN_IF_ERROR(logits_.Reserve(std::max<int64_t>(r, 1) * c.vocab_size * sizeof(float)));
  const size_t meta = (4 * t + 2 * num_seqs + 1 + num_seqs * max_blocks + r) * sizeof(int32_t);
  RETURN_IF_ERROR(meta_.Reserve(meta));
  return Status::OK();
}

Status CudaBackend::Enqueue(const Step& st) {
  const ModelConfig& c = config_;
  cudaStream_t s = device_->compute_stream();
  const int32_t t = st.num_tokens;
  const int64_t qd = int64_t{c.num_q_heads} * c.head_dim;
  const int64_t kvd = int64_t{c.num_kv_heads} * c.head_dim;
  const int64_t qkv_stride = qd + 2 * kvd;
  AttentionParams ap;
  ap.num_q_heads = c.num_q_heads;
  ap.scale = 1.0f / std::sqrt(static_cast<float>(c.head_dim));
  const int rotary = c.rope.rotary_dim > 0 ? c.rope.rotary_dim : c.head_dim;
  float* hidden = hidden_.as<float>();
  bf16_t* xn = xn_.as<bf16_t>();
  bf16_t* qkv = qkv_.as<bf16_t>();
  bf16_t* proj = proj_.as<bf16_t>();
  const float eps = c.rms_norm_eps;
  RETURN_IF_ERROR(cuda::EmbeddingLookup(embed_, st.ids, t, c.hidden_size, hidden, s));
  for (int l = 0; l < c.num_layers; ++l) {
    const CudaLayer& w = layers_[l];
    RETURN_IF_ERROR(cuda::AddRmsNorm(hidden, l == 0 ? nullptr : proj, w.input_norm, t,
                                     c.hidden_size, eps, xn, s));
    RETURN_IF_ERROR(gemm_->Run(xn, w.wqkv, qkv, false, t, qkv_stride, c.hidden_size));
    const PagedKv<bf16_t> view = LayerView(pool_, shape_, l);
    // Per-layer budgets: this layer's own context lengths and slots; the kernels are the
    // same, each launch just sees shorter contexts.
    AttentionBatch attn = st.attn;
    const int32_t* slots = st.slots;
    if (st.layer_kv_len != nullptr) {
      attn.kv_len = st.layer_kv_len + int64_t{l} * attn.num_seqs;
      slots = st.layer_slots + int64_t{l} * t;
    }
    // One launch: RoPE on the q and k heads of the fused row, then k and v into the pool.
    RETURN_IF_ERROR(cuda::RopeWriteKv(view, qkv, qkv_stride, t, c.num_q_heads, rotary, st.positions,
                                      inv_freq_, slots, s));
    if (st.scores != nullptr) {  // the rotated queries over this layer's paged K
      RETURN_IF_ERROR(ScoreLayer(st, l, ap, view, qkv, qkv_stride));
    }
    cuda::AttentionIo io;
    io.q = qkv;
    io.q_token_stride = qkv_stride;
    io.out = attn_.as<bf16_t>();
    if (st.all_decode) {
      RETURN_IF_ERROR(
          cuda::PagedDecodeAttention(ap, attn, view, io, st.plan, workspace_.as<float>(), s));
    } else {
      RETURN_IF_ERROR(cuda::PagedPrefillAttention(ap, attn, view, io, st.max_q_len, s));
    }
    RETURN_IF_ERROR(gemm_->Run(attn_.as<bf16_t>(), w.wo, proj, false, t, c.hidden_size, qd));
    RETURN_IF_ERROR(cuda::AddRmsNorm(hidden, proj, w.post_norm, t, c.hidden_size, eps, xn, s));
    RETURN_IF_ERROR(gemm_->Run(xn, w.wgate_up, gate_up_.as<bf16_t>(), false, t,
                               2 * c.intermediate_size, c.hidden_size));
    RETURN_IF_ERROR(
        cuda::SiluMul(gate_up_.as<bf16_t>(), t, c.intermediate_size, act_.as<bf16_t>(), s));
    RETURN_IF_ERROR(
        gemm_->Run(act_.as<bf16_t>(), w.wdown, proj, false, t, c.hidden_size, c.intermediate_size));
  }
  RETURN_IF_ERROR(cuda::AddRmsNorm(hidden, proj, final_norm_, t, c.hidden_size, eps, xn, s));
  if (st.num_rows == 0) return Status::OK();
  RETURN_IF_ERROR(cuda::GatherRows(xn, st.rows, st.num_rows, c.hidden_size, rows_.as<bf16_t>(), s));
  return gemm_->Run(rows_.as<bf16_t>(), lm_head_, logits_.as<float>(), true, st.num_rows,
                    c.vocab_size, c.hidden_size);
}

Status CudaBackend::ReadLogits(int32_t num_rows, std::vector<float>* logits) {
  const size_t bytes = size_t(num_rows) * config_.vocab_size * sizeof(float);
  logits->resize(size_t(num_rows) * config_.vocab_size);
  if (bytes == 0) return Status::OK();
  if (bytes > logits_host_bytes_) {
    device_->FreePinned(logits_host_);
    logits_host_ = nullptr;
    logits_host_bytes_ = 0;
    ASSIGN_OR_RETURN(void* p, device_->AllocatePinned(bytes));
    logits_host_ = static_cast<float*>(p);
    logits_host_bytes_ = bytes;
  }
  cudaStream_t s = device_->compute_stream();
  KVKEEP_CUDA_RETURN(
      cudaMemcpyAsync(logits_host_, logits_.as<float>(), bytes, cudaMemcpyDeviceToHost, s));
  KVKEEP_CUDA_RETURN(cudaStreamSynchronize(s));
  std::memcpy(logits->data(), logits_host_, bytes);
  return Status::OK();
}

Status CudaBackend::Run(const ForwardBatch& batch, std::vector<float>* logits, int32_t num_scored,
                        std::vector<float>* scores) {
  RETURN_IF_ERROR(ValidateForwardBatch(batch, shape_, config_.vocab_size));
  const int32_t t = batch.num_tokens(), n = batch.num_seqs();
  const int32_t r = static_cast<int32_t>(batch.logit_rows.size());
  const bool all_decode = t == n;
  const bool trimmed = !batch.layer_kv_trim.empty();
  if (all_decode && graphs_enabled_ && scores == nullptr && !trimmed) {
    Status st = ForwardDecodeGraph(batch, logits);
    if (st.ok()) return st;
    spdlog::warn("cuda backend: {}; decode steps run without CUDA graphs from now on",
                 st.ToString());
    graphs_enabled_ = false;
  }
  RETURN_IF_ERROR(Reserve(t, n, r, batch.max_blocks_per_seq));
  cudaStream_t s = device_->compute_stream();

  // Per-layer budgets: each layer's context lengths and slots (ForwardBatch::layer_kv_trim).
  std::vector<int32_t> layer_kv_len, layer_slots;
  if (trimmed) {
    layer_kv_len.resize(size_t(config_.num_layers) * n);
    layer_slots.resize(size_t(config_.num_layers) * t);
    for (int l = 0; l < config_.num_layers; ++l) {
      LayerKvLayout(batch, l, shape_.block_size, &layer_kv_len[size_t(l) * n],
                    &layer_slots[size_t(l) * t]);
    }
  }
  // Batch metadata: one pinned buffer, one copy.
  const size_t meta_ints = 3 * size_t(t) + (n + 1) + n + batch.block_tables.size() + r +
                           layer_kv_len.size() + layer_slots.size();
  RETURN_IF_ERROR(meta_.Reserve(meta_ints * sizeof(int32_t)));
  KVKEEP_CUDA_RETURN(cudaStreamSynchronize(s));  // the previous step's copy has finished
  if (meta_ints * sizeof(int32_t) > staging_bytes_) {
    device_->FreePinned(staging_);
    staging_ = nullptr;
    staging_bytes_ = 0;
    ASSIGN_OR_RETURN(staging_, device_->AllocatePinned(meta_ints * sizeof(int32_t) * 2));
    staging_bytes_ = meta_ints * sizeof(int32_t) * 2;
  }
  int32_t* h = static_cast<int32_t*>(staging_);
  size_t off = 0;
  auto put = [&](const std::vector<int32_t>& v) {
    std::memcpy(h + off, v.data(), v.size() * sizeof(int32_t));
    const size_t at = off;
    off += v.size();
    return meta_.as<int32_t>() + at;
  };
  Step st;
  st.num_tokens = t;
  st.num_rows = r;
  st.ids = put(batch.token_ids);
  st.positions = put(batch.positions);
  st.slots = put(batch.slot_mapping);
  st.attn.num_seqs = n;
  st.attn.q_start = put(batch.q_start);
  st.attn.kv_len = put(batch.kv_len);
  st.attn.block_tables = put(batch.block_tables);
  st.attn.max_blocks_per_seq = batch.max_blocks_per_seq;
  st.rows = put(batch.logit_rows);
  if (trimmed) {
    st.layer_kv_len = put(layer_kv_len);
    st.layer_slots = put(layer_slots);
  }
  KVKEEP_CUDA_RETURN(
      cudaMemcpyAsync(meta_.as<int32_t>(), h, off * sizeof(int32_t), cudaMemcpyHostToDevice, s));
  st.all_decode = all_decode;
  int32_t max_kv = 0;
  for (int32_t i = 0; i < n; ++i) {
    st.max_q_len = std::max(st.max_q_len, batch.q_start[i + 1] - batch.q_start[i]);
    max_kv = std::max(max_kv, batch.kv_len[i]);
  }
  if (all_decode) {
    st.plan = cuda::PlanDecode(n, config_.num_kv_heads, max_kv, device_->num_sms());
    RETURN_IF_ERROR(workspace_.Reserve(
        cuda::DecodeWorkspaceBytes(n, config_.num_q_heads, config_.head_dim, st.plan)));
  }
  const int64_t num_score_values = int64_t{config_.num_layers} * config_.num_kv_heads * num_scored;
  if (scores != nullptr) {
    RETURN_IF_ERROR(scores_.Reserve(std::max<int64_t>(num_score_values, 1) * sizeof(float)));
    RETURN_IF_ERROR(
        score_workspace_.Reserve(cuda::AttentionScoresWorkspaceBytes(t, config_.num_q_heads)));
    st.scores = scores_.as<float>();
    st.num_scored = num_scored;
    st.score_kv_len = batch.kv_len[0];
    if (trimmed) {  // one sequence: layer l's trim is layer_kv_trim[l]
      st.score_trims = batch.layer_kv_trim;
      for (int32_t trim : st.score_trims) {
        if (trim > num_scored) {
          return Status::InvalidArgument("forward batch: a layer trims more than num_scored");
        }
      }
    }
  }
  RETURN_IF_ERROR(OrderAfterSwaps(batch));
  RETURN_IF_ERROR(Enqueue(st));
  RETURN_IF_ERROR(ReadLogits(r, logits));  // synchronises the compute stream
  if (scores == nullptr) return Status::OK();
  scores->resize(num_score_values);
  if (num_score_values == 0) return Status::OK();
  return device_->CopyDeviceToHost(scores->data(), scores_.get(), num_score_values * sizeof(float));
}

}  // namespace kvkeep::cuda_backend_detail

namespace kvkeep {

Result<std::unique_ptr<Backend>> CreateCudaBackend(const ModelWeights& weights,
                                                   const BackendOptions& options) {
  if (options.block_size <= 0) return Status::InvalidArgument("block_size must be positive");
  ASSIGN_OR_RETURN(std::unique_ptr<CudaDevice> device, CudaDevice::Create(0));
  auto backend =
      std::make_unique<cuda_backend_detail::CudaBackend>(std::move(device), weights.config());
  RETURN_IF_ERROR(backend->Init(weights, options));
  return std::unique_ptr<Backend>(std::move(backend));
}

}  // namespace kvkeep
