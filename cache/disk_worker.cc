#include "cache/disk_worker.h"

#include <spdlog/spdlog.h>

namespace kvkeep {

DiskWorker::DiskWorker(DiskBlockStore* store) : store_(store) {
  thread_ = std::thread([this] { ThreadMain(); });
}

DiskWorker::~DiskWorker() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_ = true;
  }
  cv_.notify_all();
  thread_.join();
}

void DiskWorker::Enqueue(Job job) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    queue_.push_back(std::move(job));
  }
  cv_.notify_one();
}

void DiskWorker::Write(DiskBlockHeader header, std::vector<uint8_t> bytes) {
  Enqueue(Job{Job::Kind::kWrite, std::move(header), std::move(bytes), nullptr});
}

void DiskWorker::Read(BlockHash hash, void* dst) {
  Job job{Job::Kind::kRead, {}, {}, dst};
  job.header.hash = hash;
  Enqueue(std::move(job));
}

void DiskWorker::Remove(BlockHash hash) {
  Job job{Job::Kind::kRemove, {}, {}, nullptr};
  job.header.hash = hash;
  Enqueue(std::move(job));
}

std::vector<std::pair<BlockHash, bool>> DiskWorker::TakeCompletedReads() {
  std::lock_guard<std::mutex> lock(mu_);
  std::vector<std::pair<BlockHash, bool>> out;
  out.swap(completed_);
  return out;
}

void DiskWorker::WaitIdle() {
  std::unique_lock<std::mutex> lock(mu_);
  idle_cv_.wait(lock, [&] { return queue_.empty() && !busy_; });
}

void DiskWorker::WaitForCompletedRead(std::chrono::microseconds timeout) {
  std::unique_lock<std::mutex> lock(mu_);
  idle_cv_.wait_for(lock, timeout,
                    [&] { return !completed_.empty() || (queue_.empty() && !busy_); });
}

bool DiskWorker::idle() const {
  std::lock_guard<std::mutex> lock(mu_);
  return queue_.empty() && !busy_;
}

DiskWorkerStats DiskWorker::stats() const {
  std::lock_guard<std::mutex> lock(mu_);
  return stats_;
}

void DiskWorker::ThreadMain() {
  std::unique_lock<std::mutex> lock(mu_);
  while (true) {
    cv_.wait(lock, [&] { return stop_ || !queue_.empty(); });
    if (queue_.empty()) break;  // stop requested and everything done
    Job job = std::move(queue_.front());
    queue_.pop_front();
    busy_ = true;
    lock.unlock();
    Status st;
    switch (job.kind) {
      case Job::Kind::kWrite:
        st = store_->Write(job.header, job.bytes.data());
        break;
      case Job::Kind::kRead:
        st = store_->Read(job.header.hash, job.dst);
        break;
      case Job::Kind::kRemove:
        st = store_->Remove(job.header.hash);
        break;
    }
    if (!st.ok()) spdlog::warn("disk tier: {}", st.ToString());
    lock.lock();
    busy_ = false;
    if (job.kind == Job::Kind::kRead) {
      completed_.emplace_back(job.header.hash, st.ok());
      ++(st.ok() ? stats_.blocks_read : stats_.read_failures);
    } else if (!st.ok()) {
      ++stats_.write_failures;
    } else if (job.kind == Job::Kind::kWrite) {
      ++stats_.blocks_written;
    }
    if (queue_.empty() || job.kind == Job::Kind::kRead) idle_cv_.notify_all();
  }
}

}  // namespace kvkeep
