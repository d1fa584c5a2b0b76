#include "engine/cuda/cuda_backend.h"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <string>
#include <vector>

#include "base/bf16.h"
#include "engine/cpu_backend.h"
#include "engine/cuda/cuda_device.h"
#include "engine/cuda/cuda_swaps.h"
#include "engine/model_weights.h"
#include "kernels/cpu/ops.h"
#include "kernels/cuda/attention.h"
#include "kernels/cuda/cuda_status.h"
#include "kernels/cuda/gemm.h"
#include "kernels/cuda/kv_ops.h"
#include "kernels/cuda/ops.h"

namespace kvkeep {
namespace {

using cuda::bf16_t;

// A device buffer that frees itself through the device; grows, never shrinks.
class DeviceBuffer {
 public:
  DeviceBuffer() = default;
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  ~DeviceBuffer() { Reset(); }
  void Bind(CudaDevice* device) { device_ = device; }
  Status Reserve(size_t bytes) {
    if (bytes <= bytes_) return Status::OK();
    Reset();
    ASSIGN_OR_RETURN(ptr_, device_->Allocate(bytes));
    bytes_ = bytes;
    return Status::OK();
  }
  void Reset() {
    if (ptr_ && device_) device_->Free(ptr_);
    ptr_ = nullptr;
    bytes_ = 0;
  }
  template <typename T>
  T* as() const {
    return static_cast<T*>(ptr_);
  }
  size_t bytes() const { return bytes_; }
  void* get() const { return ptr_; }

 private:
  CudaDevice* device_ = nullptr;
  void* ptr_ = nullptr;
  size_t bytes_ = 0;
};

struct CudaLayer {
  bf16_t* input_norm = nullptr;
  bf16_t* post_norm = nullptr;
  bf16_t* wqkv = nullptr;      // [qd + 2 kvd][hidden]
  bf16_t* wo = nullptr;        // [hidden][qd]
  bf16_t* wgate_up = nullptr;  // [2 inter][hidden]
  bf16_t* wdown = nullptr;     // [hidden][inter]
};

class CudaBackend final : public Backend {
 public:
  CudaBackend(std::unique_ptr<CudaDevice> device, const ModelConfig& config)
      : device_(std::move(device)),
        config_(config),
        swaps_(device_->compute_stream(), device_->swap_stream()) {
    for (DeviceBuffer* b : {&meta_, &hidden_, &xn_, &qkv_, &attn_, &proj_, &gate_up_, &act_, &rows_,
                            &logits_, &workspace_, &pairs_, &gemm_workspace_, &scores_,
                            &score_workspace_, &rows_offsets_, &compact_scratch_}) {
      b->Bind(device_.get());
    }
  }
  ~CudaBackend() override {
    device_->Synchronize().ok();
    for (auto& g : graphs_) DestroyGraph(*g);
    for (void* p : weight_allocs_) device_->Free(p);
    device_->Free(pool_);
    device_->FreePinned(staging_);
    device_->FreePinned(logits_host_);
    device_->FreePinned(host_arena_);
  }

  Status Init(const ModelWeights& weights, const BackendOptions& options);

  std::string name() const override { return device_->name(); }
  const ModelConfig& config() const override { return config_; }
  const KvPoolShape& kv_shape() const override { return shape_; }
  Status Forward(const ForwardBatch& batch, std::vector<float>* logits) override {
    return Run(batch, logits, 0, nullptr);
  }
  // cuda::AttentionScores after each layer's KV write, copied back after the step.
  Status ForwardScored(const ForwardBatch& batch, int32_t num_scored, std::vector<float>* logits,
                       std::vector<float>* scores) override;
  // Per-head compaction with two row moves (pool -> scratch -> pool): the kept entries of
  // a head move towards the front, so a direct parallel move could overwrite a source.
  Status CompactKvLayers(std::span<const int32_t> block_table, std::span<const int32_t> num_entries,
                         std::span<const int32_t> keep, std::span<const int32_t> num_keep) override;
  Status CopyBlocks(const std::vector<std::pair<int32_t, int32_t>>& src_dst) override;
  size_t block_bytes() const override { return shape_.block_stride() * sizeof(bf16_t); }
  Status ReadBlock(int32_t block_id, void* dst) override;
  Status WriteBlock(int32_t block_id, const void* src) override;
  // The host tier in pinned memory; swaps on the copy stream, one event per batch
  // (engine/cuda/cuda_swaps.h): compute waits only for the batches its blocks need.
  Status AllocateHostTier(int32_t num_blocks) override;
  Result<TransferFence> SwapOut(std::span<const std::pair<int32_t, int32_t>> device_host) override;
  Result<TransferFence> SwapIn(std::span<const std::pair<int32_t, int32_t>> host_device) override;
  Status WaitFence(TransferFence fence) override;

 private:
  Result<TransferFence> Swap(std::span<const std::pair<int32_t, int32_t>> pairs,
                             cuda::SwapDirection dir);
  // Forward; with scores != nullptr also the attention scores (ForwardScored).
  Status Run(const ForwardBatch& batch, std::vector<float>* logits, int32_t num_scored,
             std::vector<float>* scores);
  // Orders the compute stream after the pending swaps that touch the batch's blocks (each
  // sequence's first ceil(kv_len / block_size) table entries: what it reads and writes).
  Status OrderAfterSwaps(const ForwardBatch& batch);
  // Uploads the concatenation of `names` (rows stacked) as one bf16 matrix.
  Result<bf16_t*> Upload(const ModelWeights& weights, const std::vector<std::string>& names);
  Status Reserve(int64_t num_tokens, int64_t num_seqs, int64_t num_rows,
                 int64_t max_blocks_per_seq);

  // Device pointers and sizes of one step, as Enqueue consumes them.
  struct Step {
    int32_t num_tokens = 0;
    int32_t num_rows = 0;  // logit rows
    const int32_t *ids = nullptr, *positions = nullptr, *slots = nullptr, *rows = nullptr;
    AttentionBatch attn;
    bool all_decode = false;
    cuda::DecodePlan plan;
    int32_t max_q_len = 0;
    // Scoring (one sequence): scores [num_layers][num_kv_heads][num_scored] on the device.
    float* scores = nullptr;
    int32_t num_scored = 0, score_kv_len = 0;
    // Per-layer budgets (ForwardBatch::layer_kv_trim), null without: each layer's context
    // lengths [num_layers][num_seqs] and slots [num_layers][num_tokens] on the device,
    // and (scoring) sequence 0's trim per layer on the host.
    const int32_t *layer_kv_len = nullptr, *layer_slots = nullptr;
    std::vector<int32_t> score_trims;
  };
  // Queues the whole forward of a step on the compute stream (no host sync); the logits
  // of the step's rows end up in logits_.
  Status Enqueue(const Step& step);
  // One layer's attention scores into step.scores (per-layer budgets: its own entries).
  Status ScoreLayer(const Step& step, int layer, const AttentionParams& ap,
                    const PagedKv<bf16_t>& view, const bf16_t* qkv, int64_t qkv_stride);
  // Decode steps through CUDA graphs bucketed by batch size (see Forward).
  Status ForwardDecodeGraph(const ForwardBatch& batch, std::vector<float>* logits);
  // Copies the first num_rows rows of logits_ to *logits (the step's one host sync).
  Status ReadLogits(int32_t num_rows, std::vector<float>* logits);
  std::vector<void*> BufferSignature() const;

  struct DecodeGraph {
    int32_t bucket = 0, width = 0, splits = 0;
    std::vector<void*> buffers;  // activation buffers the graph was captured with
    void* staging = nullptr;     // pinned metadata, copied by the graph's first node
    DeviceBuffer meta;
    cudaGraphExec_t exec = nullptr;
  };
  void DestroyGraph(DecodeGraph& g);

  std::unique_ptr<CudaDevice> device_;
  ModelConfig config_;
  CudaSwapQueue swaps_;  // after device_: its streams outlive it
  KvPoolShape shape_;
  std::unique_ptr<cuda::Gemm> gemm_;
  bf16_t* pool_ = nullptr;
  std::vector<void*> weight_allocs_;
  bf16_t* embed_ = nullptr;
  bf16_t* lm_head_ = nullptr;
  bf16_t* final_norm_ = nullptr;
  float* inv_freq_ = nullptr;
  std::vector<CudaLayer> layers_;

  void* staging_ = nullptr;  // pinned, for batch metadata
  size_t staging_bytes_ = 0;
  float* logits_host_ = nullptr;  // pinned
  size_t logits_host_bytes_ = 0;
  DeviceBuffer meta_, hidden_, xn_, qkv_, attn_, proj_, gate_up_, act_, rows_, logits_, workspace_,
      pairs_, gemm_workspace_, scores_, score_workspace_, rows_offsets_, compact_scratch_,
      layer_scores_;
  std::vector<std::unique_ptr<DecodeGraph>> graphs_;
  bool graphs_enabled_ = true;
};

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

// A trimmed layer scores its own num_scored - trim entries (over its own context); the
// rest of its rows stay 0, as on the CPU backend. The kernel writes rows of its own
// length, so those go through a scratch buffer into the [num_kv_heads][num_scored] rows.
Status CudaBackend::ScoreLayer(const Step& st, int layer, const AttentionParams& ap,
                               const PagedKv<bf16_t>& view, const bf16_t* qkv, int64_t qkv_stride) {
  const int32_t heads = config_.num_kv_heads;
  float* out = st.scores + int64_t{layer} * heads * st.num_scored;
  const int32_t trim = st.score_trims.empty() ? 0 : st.score_trims[layer];
  cudaStream_t s = device_->compute_stream();
  if (trim == 0) {
    return cuda::AttentionScores(ap, view, st.attn.block_tables, st.score_kv_len, st.num_tokens,
                                 qkv, qkv_stride, st.num_scored, out, score_workspace_.as<float>(),
                                 s);
  }
  const int32_t own = st.num_scored - trim;
  RETURN_IF_ERROR(
      layer_scores_.Reserve(std::max<int64_t>(int64_t{heads} * own, 1) * sizeof(float)));
  KVKEEP_CUDA_RETURN(cudaMemsetAsync(out, 0, size_t(heads) * st.num_scored * sizeof(float), s));
  if (own == 0) return Status::OK();
  RETURN_IF_ERROR(cuda::AttentionScores(
      ap, view, st.attn.block_tables, st.score_kv_len - trim, st.num_tokens, qkv, qkv_stride, own,
      layer_scores_.as<float>(), score_workspace_.as<float>(), s));
  KVKEEP_CUDA_RETURN(cudaMemcpy2DAsync(
      out, size_t(st.num_scored) * sizeof(float), layer_scores_.get(), size_t(own) * sizeof(float),
      size_t(own) * sizeof(float), heads, cudaMemcpyDeviceToDevice, s));
  return Status::OK();
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

std::vector<void*> CudaBackend::BufferSignature() const {
  return {hidden_.get(),  xn_.get(),  qkv_.get(),  attn_.get(),   proj_.get(),
          gate_up_.get(), act_.get(), rows_.get(), logits_.get(), workspace_.get()};
}

void CudaBackend::DestroyGraph(DecodeGraph& g) {
  if (g.exec) cudaGraphExecDestroy(g.exec);
  g.exec = nullptr;
  device_->FreePinned(g.staging);
  g.staging = nullptr;
  g.meta.Reset();
}

namespace {
int32_t RoundUpPow2(int32_t x) {
  int32_t p = 1;
  while (p < x) p *= 2;
  return p;
}
}  // namespace

// Decode steps run as CUDA graphs keyed by (batch bucket, block-table width bucket, splits):
// the batch is padded to a power of two with dummy sequences (kv_len 1, block 0, slot -1 so
// nothing is written), the block tables to a power-of-two width. Each graph owns its pinned
// metadata buffer; its first node copies that buffer to the device, so a step is: fill the
// pinned buffer, launch the graph, copy the logits back. A graph is re-captured when an
// activation buffer moved (a larger step grew it).
Status CudaBackend::ForwardDecodeGraph(const ForwardBatch& batch, std::vector<float>* logits) {
  const ModelConfig& c = config_;
  const int32_t n = batch.num_seqs();
  const int32_t bucket = RoundUpPow2(n);
  const int32_t width = RoundUpPow2(batch.max_blocks_per_seq);
  int32_t max_kv = 0;
  for (int32_t len : batch.kv_len) max_kv = std::max(max_kv, len);
  const cuda::DecodePlan plan =
      cuda::PlanDecode(bucket, c.num_kv_heads, max_kv, device_->num_sms());
  RETURN_IF_ERROR(Reserve(bucket, bucket, bucket, width));
  RETURN_IF_ERROR(
      workspace_.Reserve(cuda::DecodeWorkspaceBytes(bucket, c.num_q_heads, c.head_dim, plan)));
  const std::vector<void*> signature = BufferSignature();
  cudaStream_t s = device_->compute_stream();

  DecodeGraph* graph = nullptr;
  for (auto& g : graphs_) {
    if (g->bucket == bucket && g->width == width && g->splits == plan.num_splits) graph = g.get();
  }
  // Metadata layout: ids, positions, slots [bucket]; q_start [bucket + 1]; kv_len [bucket];
  // tables [bucket][width]; rows [bucket].
  const size_t ints = 3 * size_t(bucket) + (bucket + 1) + bucket + size_t(bucket) * width + bucket;
  if (graph == nullptr || graph->buffers != signature) {
    if (graph == nullptr) {
      graphs_.push_back(std::make_unique<DecodeGraph>());
      graph = graphs_.back().get();
      graph->bucket = bucket;
      graph->width = width;
      graph->splits = plan.num_splits;
      graph->meta.Bind(device_.get());
    }
    DestroyGraph(*graph);
    ASSIGN_OR_RETURN(graph->staging, device_->AllocatePinned(ints * sizeof(int32_t)));
    RETURN_IF_ERROR(graph->meta.Reserve(ints * sizeof(int32_t)));
    graph->buffers = signature;
    const int32_t* d = graph->meta.as<int32_t>();
    Step st;
    st.num_tokens = bucket;
    st.num_rows = bucket;
    st.ids = d;
    st.positions = d + bucket;
    st.slots = d + 2 * bucket;
    st.attn.num_seqs = bucket;
    st.attn.q_start = d + 3 * bucket;
    st.attn.kv_len = d + 4 * bucket + 1;
    st.attn.block_tables = d + 5 * bucket + 1;
    st.attn.max_blocks_per_seq = width;
    st.rows = d + 5 * bucket + 1 + size_t(bucket) * width;
    st.all_decode = true;
    st.plan = plan;
    st.max_q_len = 1;
    KVKEEP_CUDA_RETURN(cudaStreamSynchronize(s));
    KVKEEP_CUDA_RETURN(cudaStreamBeginCapture(s, cudaStreamCaptureModeThreadLocal));
    Status enq = Status::OK();
    const cudaError_t copy_err = cudaMemcpyAsync(graph->meta.get(), graph->staging,
                                                 ints * sizeof(int32_t), cudaMemcpyHostToDevice, s);
    if (copy_err == cudaSuccess) enq = Enqueue(st);
    cudaGraph_t g = nullptr;
    const cudaError_t end_err = cudaStreamEndCapture(s, &g);
    if (copy_err != cudaSuccess || !enq.ok() || end_err != cudaSuccess) {
      if (g) cudaGraphDestroy(g);
      cudaGetLastError();
      return Status::Internal(
          "decode graph capture failed: " +
          (enq.ok() ? std::string(cudaGetErrorString(copy_err != cudaSuccess ? copy_err : end_err))
                    : enq.ToString()));
    }
    const cudaError_t inst = cudaGraphInstantiate(&graph->exec, g, 0);
    cudaGraphDestroy(g);
    KVKEEP_CUDA_RETURN(inst);
  }

  // Fill the graph's pinned metadata (the previous step has finished: Forward ends in a sync).
  int32_t* h = static_cast<int32_t*>(graph->staging);
  for (int32_t i = 0; i < bucket; ++i) {
    const bool real = i < n;
    h[i] = real ? batch.token_ids[i] : 0;
    h[bucket + i] = real ? batch.positions[i] : 0;
    h[2 * bucket + i] = real ? batch.slot_mapping[i] : -1;
    h[3 * bucket + i] = i;
    h[4 * bucket + 1 + i] = real ? batch.kv_len[i] : 1;
    int32_t* row = h + 5 * bucket + 1 + size_t(i) * width;
    std::fill(row, row + width, 0);
    if (real) {
      std::copy_n(batch.block_tables.begin() + size_t(i) * batch.max_blocks_per_seq,
                  batch.max_blocks_per_seq, row);
    }
    h[5 * bucket + 1 + size_t(bucket) * width + i] = i;
  }
  h[3 * bucket + bucket] = bucket;
  RETURN_IF_ERROR(OrderAfterSwaps(batch));  // outside any capture
  KVKEEP_CUDA_RETURN(cudaGraphLaunch(graph->exec, s));
  std::vector<float> all;
  RETURN_IF_ERROR(ReadLogits(n, &all));
  // Decode: token i is sequence i; return the requested rows in order.
  const size_t v = c.vocab_size;
  logits->resize(batch.logit_rows.size() * v);
  for (size_t k = 0; k < batch.logit_rows.size(); ++k) {
    std::memcpy(logits->data() + k * v, all.data() + size_t(batch.logit_rows[k]) * v,
                v * sizeof(float));
  }
  return Status::OK();
}

Status CudaBackend::ForwardScored(const ForwardBatch& batch, int32_t num_scored,
                                  std::vector<float>* logits, std::vector<float>* scores) {
  if (batch.num_seqs() != 1 || batch.kv_len.size() != 1 || num_scored < 0 ||
      num_scored > batch.kv_len[0]) {
    return Status::InvalidArgument(
        "forward batch: scoring needs one sequence and 0 <= num_scored <= kv_len");
  }
  return Run(batch, logits, num_scored, scores);
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

Status CudaBackend::CompactKvLayers(std::span<const int32_t> block_table,
                                    std::span<const int32_t> num_entries,
                                    std::span<const int32_t> keep,
                                    std::span<const int32_t> num_keep) {
  RETURN_IF_ERROR(CheckCompactKvLayers(shape_, block_table, num_entries, keep, num_keep));
  // Element offsets of every (layer, K/V, head, kept entry) row that moves: source, then
  // destination; entries that stay put are skipped.
  const int32_t bs = shape_.block_size, heads = shape_.num_kv_heads;
  auto row = [&](int32_t l, int32_t kv, int32_t h, int32_t entry) {
    return int64_t{block_table[entry / bs]} * shape_.block_stride() + l * shape_.layer_stride() +
           kv * shape_.kv_stride() + (int64_t{h} * bs + entry % bs) * shape_.head_dim;
  };
  std::vector<int64_t> src, dst;
  const int32_t* k = keep.data();
  for (int32_t l = 0; l < shape_.num_layers; ++l) {
    for (int32_t h = 0; h < heads; ++h, k += num_keep[l]) {
      for (int32_t i = 0; i < num_keep[l]; ++i) {
        if (k[i] == i) continue;
        for (int32_t kv = 0; kv < 2; ++kv) {
          src.push_back(row(l, kv, h, k[i]));
          dst.push_back(row(l, kv, h, i));
        }
      }
    }
  }
  const int32_t rows = static_cast<int32_t>(src.size());
  if (rows == 0) return Status::OK();
  src.insert(src.end(), dst.begin(), dst.end());
  RETURN_IF_ERROR(rows_offsets_.Reserve(src.size() * sizeof(int64_t)));
  RETURN_IF_ERROR(compact_scratch_.Reserve(size_t(rows) * shape_.head_dim * sizeof(bf16_t)));
  cudaStream_t s = device_->compute_stream();
  // Stream-ordered after the previous step, and synchronous: src may go out of scope.
  RETURN_IF_ERROR(
      device_->CopyHostToDevice(rows_offsets_.get(), src.data(), src.size() * sizeof(int64_t)));
  const int64_t* d_src = rows_offsets_.as<int64_t>();
  const int64_t* d_dst = d_src + rows;
  std::vector<int32_t> used(
      block_table.begin(),
      block_table.begin() +
          (*std::max_element(num_entries.begin(), num_entries.end()) + bs - 1) / bs);
  RETURN_IF_ERROR(swaps_.OrderCompute(used));
  RETURN_IF_ERROR(cuda::CopyRows(pool_, d_src, compact_scratch_.as<bf16_t>(), nullptr, rows,
                                 shape_.head_dim, s));
  return cuda::CopyRows(compact_scratch_.as<bf16_t>(), nullptr, pool_, d_dst, rows, shape_.head_dim,
                        s);
}

Status CudaBackend::OrderAfterSwaps(const ForwardBatch& batch) {
  if (swaps_.num_pending() == 0) return Status::OK();
  std::vector<int32_t> blocks;
  const int32_t bs = shape_.block_size;
  for (int32_t i = 0; i < batch.num_seqs(); ++i) {
    const int32_t used = std::min((batch.kv_len[i] + bs - 1) / bs, batch.max_blocks_per_seq);
    const auto row = batch.block_tables.begin() + size_t(i) * batch.max_blocks_per_seq;
    blocks.insert(blocks.end(), row, row + used);
  }
  return swaps_.OrderCompute(blocks);
}

Status CudaBackend::CopyBlocks(const std::vector<std::pair<int32_t, int32_t>>& src_dst) {
  std::vector<int32_t> flat;
  for (const auto& [src, dst] : src_dst) {
    RETURN_IF_ERROR(CheckBlockId(shape_, src));
    RETURN_IF_ERROR(CheckBlockId(shape_, dst));
    if (src == dst) continue;
    flat.push_back(src);
    flat.push_back(dst);
  }
  if (flat.empty()) return Status::OK();
  RETURN_IF_ERROR(pairs_.Reserve(flat.size() * sizeof(int32_t)));
  RETURN_IF_ERROR(
      device_->CopyHostToDevice(pairs_.as<int32_t>(), flat.data(), flat.size() * sizeof(int32_t)));
  RETURN_IF_ERROR(swaps_.OrderCompute(flat));  // a swapped-in source, a swapped-out target
  RETURN_IF_ERROR(cuda::CopyBlocks(pool_, shape_, pairs_.as<int32_t>(),
                                   static_cast<int32_t>(flat.size() / 2),
                                   device_->compute_stream()));
  // The compute stream only: a device-wide synchronise would wait for unrelated swaps.
  KVKEEP_CUDA_RETURN(cudaStreamSynchronize(device_->compute_stream()));
  return Status::OK();
}

Status CudaBackend::ReadBlock(int32_t block_id, void* dst) {
  RETURN_IF_ERROR(CheckBlockId(shape_, block_id));
  RETURN_IF_ERROR(swaps_.OrderCompute(std::span<const int32_t>(&block_id, 1)));
  return device_->CopyDeviceToHost(dst, pool_ + block_id * shape_.block_stride(), block_bytes());
}

Status CudaBackend::WriteBlock(int32_t block_id, const void* src) {
  RETURN_IF_ERROR(CheckBlockId(shape_, block_id));
  RETURN_IF_ERROR(swaps_.OrderCompute(std::span<const int32_t>(&block_id, 1)));
  return device_->CopyHostToDevice(pool_ + block_id * shape_.block_stride(), src, block_bytes());
}

Status CudaBackend::AllocateHostTier(int32_t num_blocks) {
  if (num_blocks < 0 || host_arena_ != nullptr) {
    return Status::InvalidArgument("host tier: allocated twice or negative size");
  }
  if (num_blocks == 0) return Status::OK();
  ASSIGN_OR_RETURN(void* pinned, device_->AllocatePinned(size_t(num_blocks) * block_bytes()));
  host_arena_ = static_cast<uint8_t*>(pinned);
  num_host_blocks_ = num_blocks;
  return Status::OK();
}

Result<TransferFence> CudaBackend::Swap(std::span<const std::pair<int32_t, int32_t>> pairs,
                                        cuda::SwapDirection dir) {
  if (pairs.empty()) return TransferFence{};
  const bool out = dir == cuda::SwapDirection::kDeviceToHost;
  for (const auto& [src, dst] : pairs) {
    RETURN_IF_ERROR(CheckBlockId(shape_, out ? src : dst));
    const int32_t host = out ? dst : src;
    if (host < 0 || host >= num_host_blocks_) {
      return Status::InvalidArgument("host slot " + std::to_string(host) + " outside the tier");
    }
  }
  ASSIGN_OR_RETURN(const uint64_t fence,
                   swaps_.Enqueue(pool_, host_arena_, block_bytes(), pairs, dir));
  return TransferFence{fence};
}

Result<TransferFence> CudaBackend::SwapOut(
    std::span<const std::pair<int32_t, int32_t>> device_host) {
  return Swap(device_host, cuda::SwapDirection::kDeviceToHost);
}

Result<TransferFence> CudaBackend::SwapIn(
    std::span<const std::pair<int32_t, int32_t>> host_device) {
  return Swap(host_device, cuda::SwapDirection::kHostToDevice);
}

Status CudaBackend::WaitFence(TransferFence fence) { return swaps_.Wait(fence.id); }

}  // namespace

Result<std::unique_ptr<Backend>> CreateCudaBackend(const ModelWeights& weights,
                                                   const BackendOptions& options) {
  if (options.block_size <= 0) return Status::InvalidArgument("block_size must be positive");
  ASSIGN_OR_RETURN(std::unique_ptr<CudaDevice> device, CudaDevice::Create(0));
  auto backend = std::make_unique<CudaBackend>(std::move(device), weights.config());
  RETURN_IF_ERROR(backend->Init(weights, options));
  return std::unique_ptr<Backend>(std::move(backend));
}

}  // namespace kvkeep
