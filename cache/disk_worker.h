// DiskWorker: the disk tier's I/O thread. The engine thread queues writes (with the block's
// bytes copied out of the host tier), reads (straight into a reserved host-tier slot, which
// is pinned memory on CUDA: the swap-in that follows copies from it with no staging step)
// and removals;
// the worker runs them in FIFO order, so a read or removal queued after a write of the same
// hash sees it. Completed reads are collected by the engine thread with TakeCompletedReads
// and handed to BlockPool::FinishDiskRead. A failed write or removal is logged and counted:
// the block's record then points at a missing file and its read fails, so it is
// recomputed.
//
// Thread-safety: every public method is thread-safe. The destructor finishes the queue.
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <mutex>
#include <thread>
#include <utility>
#include <vector>

#include "cache/disk_tier.h"

namespace kvkeep {

struct DiskWorkerStats {
  int64_t blocks_written = 0;
  int64_t blocks_read = 0;
  int64_t read_failures = 0;   // missing files and checksum mismatches
  int64_t write_failures = 0;  // includes removal failures
};

class DiskWorker {
 public:
  // REQUIRES: store outlives the worker.
  explicit DiskWorker(DiskBlockStore* store);
  ~DiskWorker();
  DiskWorker(const DiskWorker&) = delete;
  DiskWorker& operator=(const DiskWorker&) = delete;

  void Write(DiskBlockHeader header, std::vector<uint8_t> bytes);
  // REQUIRES: dst (store block_bytes) stays valid and untouched until the completion is
  // taken.
  void Read(BlockHash hash, void* dst);
  void Remove(BlockHash hash);
  // Reads completed since the last call, in completion order: (hash, ok).
  std::vector<std::pair<BlockHash, bool>> TakeCompletedReads();
  // Blocks until the queue is empty (shutdown, tests).
  void WaitIdle();
  // Blocks until a completed read waits to be taken, the queue is empty, or timeout passes:
  // a bounded wait for the engine thread, which has nothing else to do.
  void WaitForCompletedRead(std::chrono::microseconds timeout);
  bool idle() const;
  DiskWorkerStats stats() const;

 private:
  struct Job {
    enum class Kind : uint8_t { kWrite, kRead, kRemove } kind;
    DiskBlockHeader header;  // kWrite; header.hash names the block for every kind
    std::vector<uint8_t> bytes;
    void* dst = nullptr;
  };
  void Enqueue(Job job);
  void ThreadMain();

  DiskBlockStore* store_;
  mutable std::mutex mu_;
  std::condition_variable cv_;                         // work queued, or stop
  std::condition_variable idle_cv_;                    // queue drained, or a read completed
  std::deque<Job> queue_;                              // guarded by mu_
  bool busy_ = false;                                  // guarded by mu_: a job is running
  bool stop_ = false;                                  // guarded by mu_
  std::vector<std::pair<BlockHash, bool>> completed_;  // guarded by mu_
  DiskWorkerStats stats_;                              // guarded by mu_
  std::thread thread_;
};

}  // namespace kvkeep
