// CudaBackend's decode steps through CUDA graphs (engine/cuda/cuda_backend_impl.h).
#include "engine/cuda/cuda_backend_impl.h"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <cstring>
#include <string>
#include <vector>

#include "kernels/cuda/cuda_status.h"

namespace kvkeep::cuda_backend_detail {

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

}  // namespace kvkeep::cuda_backend_detail
