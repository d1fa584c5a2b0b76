#include "daemon/state_dir.h"

#include <fcntl.h>
#include <spdlog/spdlog.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "base/file.h"

namespace kvkeep {
namespace {

Status Errno(const std::string& what) {
  return Status::IOError(what + ": " + std::strerror(errno));
}

// Makes an existing directory private: refuses one of another uid, tightens a loose mode.
Status MakeDirPrivate(const std::string& path) {
  struct stat st;
  if (::stat(path.c_str(), &st) != 0) return Errno("stat " + path);
  if (!S_ISDIR(st.st_mode)) return Status::InvalidArgument(path + " is not a directory");
  if (st.st_uid != ::geteuid()) {
    return Status::PermissionDenied("state directory " + path + " is owned by uid " +
                                    std::to_string(st.st_uid) + ", not by this daemon's uid " +
                                    std::to_string(::geteuid()));
  }
  const mode_t mode = st.st_mode & 07777;
  if ((mode & 077) != 0) {
    if (::chmod(path.c_str(), 0700) != 0) return Errno("chmod 0700 " + path);
    spdlog::warn("state directory {} had mode {:04o} (readable by others); changed to 0700", path,
                 mode);
  }
  return Status::OK();
}

// Files SQLite creates beside the database; tightened if an older kvkeepd left them open.
Status MakeFilesPrivate(const std::string& dir) {
  for (const char* name : {"kvkeep.db", "kvkeep.db-wal", "kvkeep.db-shm", "kvkeep.db-journal",
                           StateDir::kLockFileName}) {
    const std::string path = JoinPath(dir, name);
    struct stat st;
    if (::lstat(path.c_str(), &st) != 0) continue;  // absent
    if (!S_ISREG(st.st_mode)) return Status::InvalidArgument(path + " is not a regular file");
    const mode_t mode = st.st_mode & 07777;
    if ((mode & 077) == 0) continue;
    if (::chmod(path.c_str(), 0600) != 0) return Errno("chmod 0600 " + path);
    spdlog::warn("{} had mode {:04o} (readable by others); changed to 0600", path, mode);
  }
  return Status::OK();
}

}  // namespace

Result<std::unique_ptr<StateDir>> StateDir::Open(const std::string& path) {
  // From here on every file and directory the daemon creates is private.
  ::umask(077);
  RETURN_IF_ERROR(DefaultEnv()->CreateDirs(path, 0700));
  RETURN_IF_ERROR(MakeDirPrivate(path));

  const std::string lock_path = JoinPath(path, kLockFileName);
  int fd = ::open(lock_path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600);
  if (fd < 0) return Errno("open " + lock_path);
  if (::flock(fd, LOCK_EX | LOCK_NB) != 0) {
    const int err = errno;
    char pid[32] = {0};
    ssize_t n = ::pread(fd, pid, sizeof(pid) - 1, 0);
    ::close(fd);
    if (err != EWOULDBLOCK) {
      errno = err;
      return Errno("flock " + lock_path);
    }
    std::string holder = n > 0 ? std::string(pid, static_cast<size_t>(n)) : "unknown";
    while (!holder.empty() && (holder.back() == '\n' || holder.back() == ' ')) holder.pop_back();
    return Status::Unavailable("state directory " + path + " is in use by another kvkeepd (pid " +
                               holder + " holds " + lock_path +
                               "); stop it or use another --state-dir");
  }
  std::unique_ptr<StateDir> dir(new StateDir(path, fd));
  // The holder's pid, for the message above; informational only (the flock is the lock).
  const std::string pid = std::to_string(::getpid()) + "\n";
  if (::ftruncate(fd, 0) != 0 || ::pwrite(fd, pid.data(), pid.size(), 0) < 0) {
    return Errno("write " + lock_path);
  }
  RETURN_IF_ERROR(MakeFilesPrivate(path));
  return dir;
}

StateDir::~StateDir() {
  if (lock_fd_ >= 0) ::close(lock_fd_);  // releases the flock
}

}  // namespace kvkeep
