#include "engine/cuda/cuda_swaps.h"

#include <algorithm>

#include "kernels/cuda/cuda_status.h"

namespace kvkeep {
namespace {

// Whether two sorted id lists share an id: a merge walk.
bool Intersect(std::span<const int32_t> a, std::span<const int32_t> b) {
  auto i = a.begin();
  auto j = b.begin();
  while (i != a.end() && j != b.end()) {
    if (*i == *j) return true;
    if (*i < *j) {
      ++i;
    } else {
      ++j;
    }
  }
  return false;
}

}  // namespace

CudaSwapQueue::~CudaSwapQueue() {
  for (Batch& b : pending_) {
    cudaEventSynchronize(b.done);
    cudaEventDestroy(b.done);
  }
  for (cudaEvent_t e : free_events_) cudaEventDestroy(e);
  if (compute_mark_ != nullptr) cudaEventDestroy(compute_mark_);
}

Result<cudaEvent_t> CudaSwapQueue::TakeEvent() {
  Reap();
  if (!free_events_.empty()) {
    cudaEvent_t e = free_events_.back();
    free_events_.pop_back();
    return e;
  }
  cudaEvent_t e = nullptr;
  KVKEEP_CUDA_RETURN(cudaEventCreateWithFlags(&e, cudaEventDisableTiming));
  return e;
}

void CudaSwapQueue::Reap() {
  std::erase_if(pending_, [&](const Batch& b) {
    if (cudaEventQuery(b.done) != cudaSuccess) return false;  // cudaErrorNotReady
    free_events_.push_back(b.done);
    return true;
  });
}

Result<uint64_t> CudaSwapQueue::Enqueue(void* device_pool, void* host_pool, size_t block_bytes,
                                        std::span<const std::pair<int32_t, int32_t>> pairs,
                                        cuda::SwapDirection dir) {
  if (compute_mark_ == nullptr) {
    KVKEEP_CUDA_RETURN(cudaEventCreateWithFlags(&compute_mark_, cudaEventDisableTiming));
  }
  Batch batch;
  ASSIGN_OR_RETURN(batch.done, TakeEvent());  // reaps completed batches first
  batch.out = dir == cuda::SwapDirection::kDeviceToHost;
  for (const auto& [src, dst] : pairs) {
    batch.device_blocks.push_back(batch.out ? src : dst);
    batch.host_slots.push_back(batch.out ? dst : src);
  }
  std::sort(batch.device_blocks.begin(), batch.device_blocks.end());
  std::sort(batch.host_slots.begin(), batch.host_slots.end());
  cudaStream_t stream = batch.out ? swap_out_ : swap_in_;
  // After the compute queued so far: it wrote what a swap-out reads, and may still read
  // what a swap-in overwrites.
  Status st = [&]() -> Status {
    KVKEEP_CUDA_RETURN(cudaEventRecord(compute_mark_, compute_));
    KVKEEP_CUDA_RETURN(cudaStreamWaitEvent(stream, compute_mark_, 0));
    // After the other direction's pending batches that touch the same memory.
    for (const Batch& b : pending_) {
      if (b.out == batch.out) continue;  // stream order
      if (Intersect(b.device_blocks, batch.device_blocks) ||
          Intersect(b.host_slots, batch.host_slots)) {
        KVKEEP_CUDA_RETURN(cudaStreamWaitEvent(stream, b.done, 0));
      }
    }
    const std::vector<std::pair<int32_t, int32_t>> src_dst(pairs.begin(), pairs.end());
    RETURN_IF_ERROR(cuda::SwapBlocks(device_pool, host_pool, block_bytes, src_dst, dir, stream));
    KVKEEP_CUDA_RETURN(cudaEventRecord(batch.done, stream));
    return Status::OK();
  }();
  if (!st.ok()) {
    free_events_.push_back(batch.done);
    return st;
  }
  batch.fence = next_fence_++;
  pending_.push_back(std::move(batch));
  return pending_.back().fence;
}

Status CudaSwapQueue::OrderCompute(std::span<const int32_t> blocks, bool all) {
  Reap();
  if (pending_.empty()) return Status::OK();
  std::vector<int32_t> touched;
  if (!all) {
    touched.assign(blocks.begin(), blocks.end());
    std::sort(touched.begin(), touched.end());
  }
  auto overlaps = [&](const Batch& b) { return all || Intersect(b.device_blocks, touched); };
  for (Batch& b : pending_) {
    if (b.compute_waits || !overlaps(b)) continue;
    KVKEEP_CUDA_RETURN(cudaStreamWaitEvent(compute_, b.done, 0));
    b.compute_waits = true;
  }
  return Status::OK();
}

Status CudaSwapQueue::Wait(uint64_t fence) {
  for (auto it = pending_.begin(); it != pending_.end(); ++it) {
    if (it->fence != fence) continue;
    KVKEEP_CUDA_RETURN(cudaEventSynchronize(it->done));
    free_events_.push_back(it->done);
    pending_.erase(it);
    return Status::OK();
  }
  return Status::OK();  // 0, or already seen complete
}

}  // namespace kvkeep
