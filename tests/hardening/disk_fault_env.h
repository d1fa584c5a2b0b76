// DiskFaultEnv: a test Env over DefaultEnv() that injects the disk tier's faults into the
// positioned I/O of block files (*.kvb and their *.kvb.tmp), the way a full or failing
// disk shows them to DiskBlockStore:
//   kNoSpace     WriteAt fails with "No space left on device" (ENOSPC) and writes nothing;
//   kShortWrite  WriteAt writes only the first half and reports success (a torn write the
//                caller cannot see: only the block's checksums can catch it);
//   kReadEio     ReadAt fails with "Input/output error" (EIO).
// A fault hits the Nth matching call (1-based) and, when sticky, every later one, until
// Clear(). Everything else passes through (EnvWrapper).
//
// Thread-safety: every method is thread-safe (the disk worker calls from its own thread).
#pragma once

#include <atomic>
#include <memory>
#include <mutex>
#include <string>

#include "base/file.h"
#include "tests/testlib/env_wrapper.h"

namespace kvkeep::testing {

enum class DiskFault { kNone, kNoSpace, kShortWrite, kReadEio };

class DiskFaultEnv final : public EnvWrapper {
 public:
  DiskFaultEnv() = default;

  void Inject(DiskFault fault, int nth, bool sticky) {
    std::lock_guard<std::mutex> lock(mu_);
    fault_ = fault;
    nth_ = nth;
    sticky_ = sticky;
    calls_ = 0;
  }
  void Clear() { Inject(DiskFault::kNone, 0, false); }
  int injected() const { return injected_.load(); }

  Result<std::unique_ptr<RandomRWFile>> OpenRandomRWFile(const std::string& path,
                                                         bool create) override {
    ASSIGN_OR_RETURN(std::unique_ptr<RandomRWFile> file, target()->OpenRandomRWFile(path, create));
    return std::unique_ptr<RandomRWFile>(new File(this, std::move(file)));
  }

 private:
  class File final : public RandomRWFile {
   public:
    File(DiskFaultEnv* env, std::unique_ptr<RandomRWFile> base)
        : env_(env), base_(std::move(base)) {}
    Status ReadAt(uint64_t offset, void* dst, size_t n) override {
      if (env_->Hit(false) == DiskFault::kReadEio) {
        return Status::IOError("pread: Input/output error (injected EIO)");
      }
      return base_->ReadAt(offset, dst, n);
    }
    Status WriteAt(uint64_t offset, const void* src, size_t n) override {
      switch (env_->Hit(true)) {
        case DiskFault::kNoSpace:
          return Status::IOError("pwrite: No space left on device (injected ENOSPC)");
        case DiskFault::kShortWrite:
          return base_->WriteAt(offset, src, n / 2);
        default:
          return base_->WriteAt(offset, src, n);
      }
    }
    Result<uint64_t> Size() override { return base_->Size(); }

   private:
    DiskFaultEnv* env_;
    std::unique_ptr<RandomRWFile> base_;
  };

  // The fault for this call, or kNone; counts calls of the armed fault's kind.
  DiskFault Hit(bool is_write) {
    std::lock_guard<std::mutex> lock(mu_);
    const bool matches = fault_ != DiskFault::kNone && (fault_ == DiskFault::kReadEio) != is_write;
    if (!matches) return DiskFault::kNone;
    ++calls_;
    if (calls_ == nth_ || (sticky_ && calls_ > nth_)) {
      ++injected_;
      return fault_;
    }
    return DiskFault::kNone;
  }

  std::mutex mu_;
  DiskFault fault_ = DiskFault::kNone;  // guarded by mu_
  int nth_ = 0;                         // guarded by mu_
  bool sticky_ = false;                 // guarded by mu_
  int calls_ = 0;                       // guarded by mu_
  std::atomic<int> injected_{0};
};

}  // namespace kvkeep::testing
