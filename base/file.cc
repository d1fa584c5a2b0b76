#include "base/file.h"

#include <dirent.h>
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>

namespace kvkeep {
namespace {

Status ErrnoStatus(std::string_view what, const std::string& path) {
  int err = errno;
  std::string msg = std::string(what) + " " + path + ": " + std::strerror(err);
  if (err == ENOENT) return Status::NotFound(msg);
  if (err == EACCES || err == EPERM) return Status::PermissionDenied(msg);
  return Status::IOError(msg);
}

class PosixMappedFile final : public MappedFile {
 public:
  PosixMappedFile(void* addr, size_t size) : addr_(addr), size_(size) {}
  ~PosixMappedFile() override {
    if (addr_ != nullptr && size_ > 0) munmap(addr_, size_);
  }
  const uint8_t* data() const override { return static_cast<const uint8_t*>(addr_); }
  size_t size() const override { return size_; }

 private:
  void* addr_;
  size_t size_;
};

class PosixEnv final : public Env {
 public:
  Result<std::string> ReadFile(const std::string& path) override {
    int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) return ErrnoStatus("open", path);
    std::string out;
    char buf[1 << 16];
    for (;;) {
      ssize_t n = read(fd, buf, sizeof(buf));
      if (n < 0) {
        if (errno == EINTR) continue;
        Status st = ErrnoStatus("read", path);
        close(fd);
        return st;
      }
      if (n == 0) break;
      out.append(buf, static_cast<size_t>(n));
    }
    close(fd);
    return out;
  }

  Status WriteFileAtomic(const std::string& path, std::string_view contents) override {
    std::string tmp = path + ".tmp";
    int fd = open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) return ErrnoStatus("open", tmp);
    size_t done = 0;
    while (done < contents.size()) {
      ssize_t n = write(fd, contents.data() + done, contents.size() - done);
      if (n < 0) {
        if (errno == EINTR) continue;
        Status st = ErrnoStatus("write", tmp);
        close(fd);
        return st;
      }
      done += static_cast<size_t>(n);
    }
    if (fsync(fd) != 0) {
      Status st = ErrnoStatus("fsync", tmp);
      close(fd);
      return st;
    }
    close(fd);
    if (rename(tmp.c_str(), path.c_str()) != 0) return ErrnoStatus("rename", path);
    return Status::OK();
  }

  Result<std::unique_ptr<MappedFile>> MapFile(const std::string& path) override {
    int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) return ErrnoStatus("open", path);
    struct stat st {};
    if (fstat(fd, &st) != 0) {
      Status s = ErrnoStatus("stat", path);
      close(fd);
      return s;
    }
    size_t size = static_cast<size_t>(st.st_size);
    void* addr = nullptr;
    if (size > 0) {
      addr = mmap(nullptr, size, PROT_READ, MAP_PRIVATE, fd, 0);
      if (addr == MAP_FAILED) {
        Status s = ErrnoStatus("mmap", path);
        close(fd);
        return s;
      }
    }
    close(fd);
    return std::unique_ptr<MappedFile>(new PosixMappedFile(addr, size));
  }

  bool FileExists(const std::string& path) override { return access(path.c_str(), F_OK) == 0; }

  Status CreateDirs(const std::string& path, int mode) override {
    if (path.empty()) return Status::InvalidArgument("empty directory path");
    std::string partial;
    size_t pos = 0;
    while (pos != std::string::npos) {
      pos = path.find('/', pos + 1);
      partial = path.substr(0, pos);
      if (partial.empty()) continue;
      if (mkdir(partial.c_str(), static_cast<mode_t>(mode)) != 0 && errno != EEXIST) {
        return ErrnoStatus("mkdir", partial);
      }
    }
    struct stat st {};
    if (stat(path.c_str(), &st) != 0 || !S_ISDIR(st.st_mode)) {
      return Status::IOError("not a directory: " + path);
    }
    return Status::OK();
  }

  Result<std::vector<std::string>> ListDir(const std::string& path) override {
    DIR* dir = opendir(path.c_str());
    if (dir == nullptr) return ErrnoStatus("opendir", path);
    std::vector<std::string> names;
    while (dirent* e = readdir(dir)) {
      std::string name = e->d_name;
      if (name != "." && name != "..") names.push_back(std::move(name));
    }
    closedir(dir);
    return names;
  }

  Status RemoveFile(const std::string& path) override {
    if (unlink(path.c_str()) != 0) return ErrnoStatus("unlink", path);
    return Status::OK();
  }

  std::string GetEnvVar(const char* name) override {
    const char* v = std::getenv(name);
    return v ? std::string(v) : std::string();
  }

  Result<std::unique_ptr<RandomRWFile>> OpenRandomRWFile(const std::string& path,
                                                         bool create) override {
    return OpenPosixRandomRWFile(path, create);
  }

  Status RenameFile(const std::string& from, const std::string& to) override {
    if (rename(from.c_str(), to.c_str()) != 0) return ErrnoStatus("rename", from);
    return Status::OK();
  }
};

}  // namespace

Env* DefaultEnv() {
  static PosixEnv env;
  return &env;
}

std::string JoinPath(std::string_view a, std::string_view b) {
  if (a.empty()) return std::string(b);
  std::string out(a);
  if (out.back() != '/') out += '/';
  out += b;
  return out;
}

bool FaultInjectionEnv::ShouldFail() {
  ++calls_;
  if (fail_at_ <= 0) return false;
  return sticky_ ? calls_ >= fail_at_ : calls_ == fail_at_;
}

Result<std::string> FaultInjectionEnv::ReadFile(const std::string& path) {
  if (ShouldFail()) return Status::IOError("injected fault reading " + path);
  return base_->ReadFile(path);
}
Status FaultInjectionEnv::WriteFileAtomic(const std::string& path, std::string_view contents) {
  if (ShouldFail()) return Status::IOError("injected fault writing " + path);
  return base_->WriteFileAtomic(path, contents);
}
Result<std::unique_ptr<MappedFile>> FaultInjectionEnv::MapFile(const std::string& path) {
  if (ShouldFail()) return Status::IOError("injected fault mapping " + path);
  return base_->MapFile(path);
}
Status FaultInjectionEnv::CreateDirs(const std::string& path, int mode) {
  if (ShouldFail()) return Status::IOError("injected fault creating " + path);
  return base_->CreateDirs(path, mode);
}
Result<std::vector<std::string>> FaultInjectionEnv::ListDir(const std::string& path) {
  if (ShouldFail()) return Status::IOError("injected fault listing " + path);
  return base_->ListDir(path);
}
Status FaultInjectionEnv::RemoveFile(const std::string& path) {
  if (ShouldFail()) return Status::IOError("injected fault removing " + path);
  return base_->RemoveFile(path);
}

}  // namespace kvkeep
