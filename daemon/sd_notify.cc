#include "daemon/sd_notify.h"

#include <fcntl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <string>

#include <spdlog/spdlog.h>

namespace kvkeep::daemon {
namespace {

// Parses a whole decimal string into an unsigned integer; nullopt on anything else.
std::optional<uint64_t> ParseUnsigned(const std::string& s) {
  uint64_t value = 0;
  const char* end = s.data() + s.size();
  auto [ptr, ec] = std::from_chars(s.data(), end, value);
  if (s.empty() || ec != std::errc() || ptr != end) return std::nullopt;
  return value;
}

bool NamesThisProcess(const std::string& pid_text) {
  std::optional<uint64_t> pid = ParseUnsigned(pid_text);
  return pid.has_value() && *pid == static_cast<uint64_t>(::getpid());
}

// Closes an fd on scope exit.
class FdCloser {
 public:
  explicit FdCloser(int fd) : fd_(fd) {}
  ~FdCloser() { ::close(fd_); }
  FdCloser(const FdCloser&) = delete;
  FdCloser& operator=(const FdCloser&) = delete;

 private:
  int fd_;
};

Status ErrnoStatus(std::string_view what) {
  return Status::IOError(std::string(what) + ": " + std::strerror(errno));
}

int GetIntSockOpt(int fd, int option) {
  int value = -1;
  socklen_t len = sizeof(value);
  if (::getsockopt(fd, SOL_SOCKET, option, &value, &len) != 0) return -1;
  return value;
}

}  // namespace

Status SdNotifyOrError(std::string_view state, Env* env) {
  const std::string path = env->GetEnvVar("NOTIFY_SOCKET");
  if (path.empty()) return Status::OK();
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  if (path.size() >= sizeof(addr.sun_path) || (path[0] != '/' && path[0] != '@')) {
    return Status::InvalidArgument("NOTIFY_SOCKET is not an absolute path or @name: " + path);
  }
  std::memcpy(addr.sun_path, path.data(), path.size());
  socklen_t addr_len = static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + path.size());
  if (path[0] == '@') {
    addr.sun_path[0] = '\0';  // abstract namespace: no trailing NUL in the length
  } else {
    addr_len += 1;
  }
  const int fd = ::socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return ErrnoStatus("socket(AF_UNIX, SOCK_DGRAM)");
  FdCloser closer(fd);
  const ssize_t sent = ::sendto(fd, state.data(), state.size(), MSG_NOSIGNAL,
                                reinterpret_cast<const sockaddr*>(&addr), addr_len);
  if (sent < 0) return ErrnoStatus("sendto NOTIFY_SOCKET " + path);
  if (static_cast<size_t>(sent) != state.size()) {
    return Status::IOError("short datagram to NOTIFY_SOCKET " + path);
  }
  return Status::OK();
}

void SdNotify(std::string_view state, Env* env) {
  if (Status st = SdNotifyOrError(state, env); !st.ok()) {
    spdlog::warn("sd_notify({}): {}", state, st.ToString());
  }
}

namespace {

// A passed fd must be a listening AF_UNIX stream socket; marks it close-on-exec.
Status CheckListeningUnixSocket(int fd) {
  struct stat st {};
  const std::string name = "passed fd " + std::to_string(fd);
  if (::fstat(fd, &st) != 0 || !S_ISSOCK(st.st_mode)) {
    return Status::InvalidArgument(name + " is not a socket");
  }
  if (GetIntSockOpt(fd, SO_DOMAIN) != AF_UNIX || GetIntSockOpt(fd, SO_TYPE) != SOCK_STREAM) {
    return Status::InvalidArgument(name + " is not an AF_UNIX stream socket");
  }
  if (GetIntSockOpt(fd, SO_ACCEPTCONN) != 1) {
    return Status::InvalidArgument(name + " is not listening (use Accept=no)");
  }
  const int flags = ::fcntl(fd, F_GETFD);
  if (flags < 0 || ::fcntl(fd, F_SETFD, flags | FD_CLOEXEC) != 0) {
    return ErrnoStatus("fcntl(" + std::to_string(fd) + ", F_SETFD, FD_CLOEXEC)");
  }
  return Status::OK();
}

}  // namespace

Result<std::optional<int>> SdListenUnixFdOrError(Env* env) {
  ASSIGN_OR_RETURN(auto fds, SdListenUnixFdsOrError(env));
  if (fds.empty()) return std::optional<int>();
  if (fds.size() != 1) {
    return Status::InvalidArgument("socket activation passed " + std::to_string(fds.size()) +
                                   " fds; kvkeepd listens on exactly one socket");
  }
  return std::optional<int>(fds.begin()->second);
}

Result<std::map<std::string, int>> SdListenUnixFdsOrError(Env* env) {
  const std::string pid_text = env->GetEnvVar("LISTEN_PID");
  const std::string fds_text = env->GetEnvVar("LISTEN_FDS");
  const std::string names = env->GetEnvVar("LISTEN_FDNAMES");
  ::unsetenv("LISTEN_PID");
  ::unsetenv("LISTEN_FDS");
  ::unsetenv("LISTEN_FDNAMES");
  std::map<std::string, int> out;
  if (pid_text.empty() || !NamesThisProcess(pid_text)) {
    if (!pid_text.empty()) spdlog::debug("LISTEN_PID={} is another process", pid_text);
    return out;
  }
  std::optional<uint64_t> num_fds = ParseUnsigned(fds_text);
  if (!num_fds.has_value()) {
    return Status::InvalidArgument("LISTEN_FDS is not a number: '" + fds_text + "'");
  }
  if (*num_fds > 16) return Status::InvalidArgument("LISTEN_FDS=" + fds_text + " is too many");
  size_t start = 0;
  for (int i = 0; i < static_cast<int>(*num_fds); ++i) {
    const size_t end = std::min(names.find(':', start), names.size());
    std::string name = start < names.size() ? names.substr(start, end - start) : "";
    start = end + 1;
    if (name.empty()) name = "unknown";  // systemd's name for an unnamed fd
    const int fd = kSdListenFdsStart + i;
    RETURN_IF_ERROR(CheckListeningUnixSocket(fd));
    if (!out.emplace(name, fd).second) {
      return Status::InvalidArgument("socket activation passed two fds named '" + name + "'");
    }
    spdlog::info("socket activation: listening on fd {} ({})", fd, name);
  }
  return out;
}

std::optional<int> SdListenUnixFd(Env* env) {
  Result<std::optional<int>> fd = SdListenUnixFdOrError(env);
  if (!fd.ok()) {
    spdlog::error("ignoring socket activation: {}", fd.status().ToString());
    return std::nullopt;
  }
  return *fd;
}

std::chrono::microseconds SdWatchdogInterval(Env* env) {
  const std::string usec_text = env->GetEnvVar("WATCHDOG_USEC");
  if (usec_text.empty()) return std::chrono::microseconds(0);
  const std::string pid_text = env->GetEnvVar("WATCHDOG_PID");
  if (!pid_text.empty() && !NamesThisProcess(pid_text)) return std::chrono::microseconds(0);
  std::optional<uint64_t> usec = ParseUnsigned(usec_text);
  if (!usec.has_value() || *usec == 0 || *usec > static_cast<uint64_t>(INT64_MAX)) {
    spdlog::warn("ignoring malformed WATCHDOG_USEC='{}'", usec_text);
    return std::chrono::microseconds(0);
  }
  return std::chrono::microseconds(static_cast<int64_t>(*usec));
}

}  // namespace kvkeep::daemon
