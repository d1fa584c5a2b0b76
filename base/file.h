// Files: the filesystem seam. Everything that touches files goes through an Env so
// tests can inject failures (FaultInjectionEnv fails the Nth call).
//
// Thread-safety: PosixEnv is stateless and thread-safe.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "base/status.h"

namespace kvkeep {

// A read-only memory mapping of a whole file. Unmaps on destruction.
class MappedFile {
 public:
  virtual ~MappedFile() = default;
  virtual const uint8_t* data() const = 0;
  virtual size_t size() const = 0;
};

// A file opened for positioned reads and writes (the disk tier's block files). Writes are
// not synced: callers that need durability use WriteFileAtomic. Thread-safety: one object
// may be used from one thread at a time; distinct objects are independent.
class RandomRWFile {
 public:
  virtual ~RandomRWFile() = default;
  // Reads exactly num_bytes at offset into dst; Corruption on a short read (the file is
  // shorter than offset + num_bytes), IOError on a failed read.
  virtual Status ReadAt(uint64_t offset, void* dst, size_t num_bytes) = 0;
  // Writes all num_bytes at offset, extending the file as needed.
  virtual Status WriteAt(uint64_t offset, const void* src, size_t num_bytes) = 0;
  virtual Result<uint64_t> Size() = 0;
};

class Env {
 public:
  virtual ~Env() = default;
  virtual Result<std::string> ReadFile(const std::string& path) = 0;
  // Writes to path.tmp, fsyncs, renames over path: readers see old or new, never half.
  virtual Status WriteFileAtomic(const std::string& path, std::string_view contents) = 0;
  virtual Result<std::unique_ptr<MappedFile>> MapFile(const std::string& path) = 0;
  virtual bool FileExists(const std::string& path) = 0;
  // mkdir -p with the given mode for created directories.
  virtual Status CreateDirs(const std::string& path, int mode = 0755) = 0;
  virtual Result<std::vector<std::string>> ListDir(const std::string& path) = 0;
  virtual Status RemoveFile(const std::string& path) = 0;
  // Value of an environment variable, or empty. Only tools/ and daemon/ config call this.
  virtual std::string GetEnvVar(const char* name) = 0;
  // Opens path for positioned I/O, creating it (mode 0600) when `create`; NotFound if it
  // is absent and !create. NotSupported unless the Env implements it.
  virtual Result<std::unique_ptr<RandomRWFile>> OpenRandomRWFile(const std::string& path,
                                                                 bool create);
  // rename(2): replaces `to` atomically. NotSupported unless the Env implements it.
  virtual Status RenameFile(const std::string& from, const std::string& to);
};

// The real POSIX environment. Process-wide singleton.
Env* DefaultEnv();

// Wraps an Env; the Nth (1-based) call to a file operation, and every later one if
// sticky, fails with IOError. For tests of error paths.
class FaultInjectionEnv final : public Env {
 public:
  explicit FaultInjectionEnv(Env* base) : base_(base) {}
  void FailAfter(int n, bool sticky = false) {
    fail_at_ = n;
    sticky_ = sticky;
    calls_ = 0;
  }
  Result<std::string> ReadFile(const std::string& path) override;
  Status WriteFileAtomic(const std::string& path, std::string_view contents) override;
  Result<std::unique_ptr<MappedFile>> MapFile(const std::string& path) override;
  bool FileExists(const std::string& path) override { return base_->FileExists(path); }
  Status CreateDirs(const std::string& path, int mode) override;
  Result<std::vector<std::string>> ListDir(const std::string& path) override;
  Status RemoveFile(const std::string& path) override;
  std::string GetEnvVar(const char* name) override { return base_->GetEnvVar(name); }
  // Opening counts as a call, and so does every ReadAt/WriteAt on the returned file.
  Result<std::unique_ptr<RandomRWFile>> OpenRandomRWFile(const std::string& path,
                                                         bool create) override;
  Status RenameFile(const std::string& from, const std::string& to) override;

 private:
  class FaultyFile;
  bool ShouldFail();
  Env* base_;
  int fail_at_ = 0;
  bool sticky_ = false;
  int calls_ = 0;
};

// The POSIX RandomRWFile behind DefaultEnv()->OpenRandomRWFile (pread/pwrite).
Result<std::unique_ptr<RandomRWFile>> OpenPosixRandomRWFile(const std::string& path, bool create);

// Joins path components with '/'.
std::string JoinPath(std::string_view a, std::string_view b);

}  // namespace kvkeep
