// CudaSwapQueue: the CUDA backend's swaps between the device KV pool and the pinned host
// tier, on a copy stream per direction, each batch with its own event, so that they
// overlap the forward passes that do not need them and each other: the host link is full
// duplex, and a promotion's swap-ins need not queue behind the demotions issued before it.
//
// Ordering (docs/cuda.md, "Swaps and the forward pass"):
//   - a batch starts on its direction's stream after the compute work queued before it
//     (that work wrote the blocks a swap-out reads, and read the blocks a swap-in
//     overwrites), and after the earlier batches of its direction (stream order);
//   - it starts after a pending batch of the other direction only when the two share a
//     device block or a host slot (a swap-in into a block a swap-out still reads, a
//     swap-out of a block a swap-in still writes, and the same for host slots);
//   - compute waits on a pending batch only when it touches one of the batch's device
//     blocks (OrderCompute): a forward pass that reads a block a swap-in writes, or writes
//     a block a swap-out still reads. A step over other blocks runs alongside the copies;
//   - the host waits on a batch only through Wait (before the disk tier reads a host slot
//     a swap-out fills, or writes one a swap-in reads).
// A batch's event is reused once the batch has completed.
//
// Thread-safety: none; owned by the backend, called on the engine thread.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <span>
#include <utility>
#include <vector>

#include "base/status.h"
#include "kernels/cuda/kv_ops.h"

namespace kvkeep {

class CudaSwapQueue {
 public:
  // REQUIRES: the streams outlive the queue; swap_out and swap_in are distinct.
  CudaSwapQueue(cudaStream_t compute, cudaStream_t swap_out, cudaStream_t swap_in)
      : compute_(compute), swap_out_(swap_out), swap_in_(swap_in) {}
  ~CudaSwapQueue();
  CudaSwapQueue(const CudaSwapQueue&) = delete;
  CudaSwapQueue& operator=(const CudaSwapQueue&) = delete;

  // Queues one batch of whole-block copies (src, dst) in direction dir on that direction's
  // stream and returns its fence id (> 0). REQUIRES: pairs validated against both pools.
  Result<uint64_t> Enqueue(void* device_pool, void* host_pool, size_t block_bytes,
                           std::span<const std::pair<int32_t, int32_t>> pairs,
                           cuda::SwapDirection dir);
  // Makes the compute stream wait for every pending batch that touches one of `blocks`
  // (device block ids, any order, repeats allowed); with all = true, for every pending
  // batch. Queues waits only: no host synchronisation.
  Status OrderCompute(std::span<const int32_t> blocks, bool all = false);
  // Blocks the host until batch `fence` has completed (0 and completed fences return at
  // once).
  Status Wait(uint64_t fence);
  // Batches queued and not yet seen complete (tests, stats).
  int32_t num_pending() const { return static_cast<int32_t>(pending_.size()); }

 private:
  struct Batch {
    uint64_t fence = 0;
    cudaEvent_t done = nullptr;
    bool out = false;                    // device to host
    std::vector<int32_t> device_blocks;  // sorted
    std::vector<int32_t> host_slots;     // sorted
    bool compute_waits = false;          // the compute stream already waits on it
  };
  void Reap();  // returns the events of completed batches to the free list
  Result<cudaEvent_t> TakeEvent();

  cudaStream_t compute_, swap_out_, swap_in_;
  cudaEvent_t compute_mark_ = nullptr;  // "compute queued so far", for the swap streams
  std::vector<Batch> pending_;          // in fence order
  std::vector<cudaEvent_t> free_events_;
  uint64_t next_fence_ = 1;
};

}  // namespace kvkeep
