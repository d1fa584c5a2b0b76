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

 private:
  bool ShouldFail();
  Env* base_;
  int fail_at_ = 0;
  bool sticky_ = false;
  int calls_ = 0;
};

// Joins path components with '/'.
std::string JoinPath(std::string_view a, std::string_view b);

}  // namespace kvkeep
