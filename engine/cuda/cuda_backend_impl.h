// The CUDA backend's class (engine/cuda/cuda_backend.h has the factory and says what it
// does), shared by its source files, split by what they compute:
//   cuda_backend.cc          creation, the weights, a step's forward (Run, Enqueue);
//   cuda_decode_graph.cc     decode steps replayed from CUDA graphs;
//   cuda_backend_scoring.cc  the compressed cache's hooks: attention scores, compaction;
//   cuda_backend_blocks.cc   block copies, raw block I/O, the pinned host tier and swaps.
// Private to engine/cuda: include only from those files.
//
// Thread-safety: owned and called by the engine thread only.
#pragma once

#include <cuda_runtime.h>

#include <memory>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "engine/backend.h"
#include "engine/cuda/cuda_device.h"
#include "engine/cuda/cuda_swaps.h"
#include "kernels/cuda/attention.h"
#include "kernels/cuda/gemm.h"
#include "kernels/cuda/kv_ops.h"

namespace kvkeep::cuda_backend_detail {

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
        swaps_(device_->compute_stream(), device_->swap_out_stream(), device_->swap_in_stream()) {
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
  // The host tier in pinned memory; swaps on a stream per direction, one event per batch
  // (engine/cuda/cuda_swaps.h): compute waits only for the batches its blocks need.
  Status AllocateHostTier(int32_t num_blocks) override;
  Result<TransferFence> SwapOut(std::span<const std::pair<int32_t, int32_t>> device_host) override;
  Result<TransferFence> SwapIn(std::span<const std::pair<int32_t, int32_t>> host_device) override;
  Status WaitFence(TransferFence fence) override;
  // The swap streams run beside the compute stream; a step waits only for the swaps of
  // blocks it touches (engine/cuda/cuda_swaps.h).
  bool SwapsOverlapCompute() const override { return true; }

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

}  // namespace kvkeep::cuda_backend_detail
