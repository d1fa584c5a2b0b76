// Positioned file I/O: the POSIX RandomRWFile, the Env defaults, and the fault-injecting
// wrapper (kept apart from file.cc, which holds the whole-file operations).
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "base/file.h"

namespace kvkeep {
namespace {

Status ErrnoError(std::string_view what, const std::string& path) {
  const int err = errno;
  std::string msg = std::string(what) + " " + path + ": " + std::strerror(err);
  if (err == ENOENT) return Status::NotFound(msg);
  if (err == EACCES || err == EPERM) return Status::PermissionDenied(msg);
  return Status::IOError(msg);
}

class PosixRandomRWFile final : public RandomRWFile {
 public:
  PosixRandomRWFile(std::string path, int fd) : path_(std::move(path)), fd_(fd) {}
  ~PosixRandomRWFile() override { close(fd_); }

  Status ReadAt(uint64_t offset, void* dst, size_t num_bytes) override {
    auto* out = static_cast<char*>(dst);
    size_t done = 0;
    while (done < num_bytes) {
      const ssize_t n = pread(fd_, out + done, num_bytes - done, static_cast<off_t>(offset + done));
      if (n < 0) {
        if (errno == EINTR) continue;
        return ErrnoError("pread", path_);
      }
      if (n == 0) {
        return Status::Corruption("short read of " + path_ + ": " + std::to_string(done) + " of " +
                                  std::to_string(num_bytes) + " bytes at " +
                                  std::to_string(offset));
      }
      done += static_cast<size_t>(n);
    }
    return Status::OK();
  }

  Status WriteAt(uint64_t offset, const void* src, size_t num_bytes) override {
    const auto* in = static_cast<const char*>(src);
    size_t done = 0;
    while (done < num_bytes) {
      const ssize_t n = pwrite(fd_, in + done, num_bytes - done, static_cast<off_t>(offset + done));
      if (n < 0) {
        if (errno == EINTR) continue;
        return ErrnoError("pwrite", path_);
      }
      done += static_cast<size_t>(n);
    }
    return Status::OK();
  }

  Result<uint64_t> Size() override {
    struct stat st {};
    if (fstat(fd_, &st) != 0) return ErrnoError("stat", path_);
    return static_cast<uint64_t>(st.st_size);
  }

 private:
  std::string path_;
  int fd_;
};

}  // namespace

Result<std::unique_ptr<RandomRWFile>> OpenPosixRandomRWFile(const std::string& path, bool create) {
  const int flags = O_RDWR | O_CLOEXEC | (create ? O_CREAT : 0);
  const int fd = open(path.c_str(), flags, 0600);
  if (fd < 0) return ErrnoError("open", path);
  return std::unique_ptr<RandomRWFile>(new PosixRandomRWFile(path, fd));
}

Result<std::unique_ptr<RandomRWFile>> Env::OpenRandomRWFile(const std::string& path, bool) {
  return Status::NotSupported("positioned I/O is not available in this Env (" + path + ")");
}

Status Env::RenameFile(const std::string& from, const std::string&) {
  return Status::NotSupported("rename is not available in this Env (" + from + ")");
}

// Every ReadAt/WriteAt goes through the owning FaultInjectionEnv's call counter.
class FaultInjectionEnv::FaultyFile final : public RandomRWFile {
 public:
  FaultyFile(FaultInjectionEnv* env, std::unique_ptr<RandomRWFile> base, std::string path)
      : env_(env), base_(std::move(base)), path_(std::move(path)) {}
  Status ReadAt(uint64_t offset, void* dst, size_t num_bytes) override {
    if (env_->ShouldFail()) return Status::IOError("injected fault reading " + path_);
    return base_->ReadAt(offset, dst, num_bytes);
  }
  Status WriteAt(uint64_t offset, const void* src, size_t num_bytes) override {
    if (env_->ShouldFail()) return Status::IOError("injected fault writing " + path_);
    return base_->WriteAt(offset, src, num_bytes);
  }
  Result<uint64_t> Size() override { return base_->Size(); }

 private:
  FaultInjectionEnv* env_;
  std::unique_ptr<RandomRWFile> base_;
  std::string path_;
};

Result<std::unique_ptr<RandomRWFile>> FaultInjectionEnv::OpenRandomRWFile(const std::string& path,
                                                                          bool create) {
  if (ShouldFail()) return Status::IOError("injected fault opening " + path);
  ASSIGN_OR_RETURN(std::unique_ptr<RandomRWFile> file, base_->OpenRandomRWFile(path, create));
  return std::unique_ptr<RandomRWFile>(new FaultyFile(this, std::move(file), path));
}

Status FaultInjectionEnv::RenameFile(const std::string& from, const std::string& to) {
  if (ShouldFail()) return Status::IOError("injected fault renaming " + from);
  return base_->RenameFile(from, to);
}

}  // namespace kvkeep
