// Tests of the systemd protocols against real sockets: a real AF_UNIX datagram socket
// stands in for systemd's notify socket, and socket activation runs in a forked child
// whose fd 3 is a real listening socket.
#include "daemon/sd_notify.h"

#include <fcntl.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <cstring>
#include <functional>
#include <string>

#include <gtest/gtest.h>

#include "tests/testlib/test_util.h"

namespace kvkeep::daemon {
namespace {

using ::kvkeep::testing::TempDir;

// Binds a datagram socket to `name` (a path, or "@abstract"), as systemd does for
// NOTIFY_SOCKET. Returns the fd.
int BindDatagram(const std::string& name) {
  int fd = ::socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
  EXPECT_GE(fd, 0);
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  std::memcpy(addr.sun_path, name.data(), name.size());
  socklen_t len = offsetof(sockaddr_un, sun_path) + name.size();
  if (name[0] == '@') {
    addr.sun_path[0] = '\0';
  } else {
    len += 1;
  }
  EXPECT_EQ(::bind(fd, reinterpret_cast<sockaddr*>(&addr), len), 0) << std::strerror(errno);
  return fd;
}

// The next datagram on fd, or "<none>" when nothing is queued.
std::string Receive(int fd) {
  char buf[4096];
  ssize_t n = ::recv(fd, buf, sizeof(buf), MSG_DONTWAIT);
  if (n < 0) return "<none>";
  return std::string(buf, static_cast<size_t>(n));
}

class SdNotifyTest : public ::testing::Test {
 protected:
  void TearDown() override {
    for (const char* name : {"NOTIFY_SOCKET", "LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES",
                             "WATCHDOG_USEC", "WATCHDOG_PID"}) {
      ::unsetenv(name);
    }
  }
  TempDir dir_;
};

TEST_F(SdNotifyTest, SendsStateToPathSocket) {
  const std::string path = dir_.File("notify.sock");
  int fd = BindDatagram(path);
  ::setenv("NOTIFY_SOCKET", path.c_str(), 1);
  ASSERT_TRUE(SdNotifyOrError("READY=1\nSTATUS=model loaded").ok());
  SdNotify("WATCHDOG=1");
  EXPECT_EQ(Receive(fd), "READY=1\nSTATUS=model loaded");
  EXPECT_EQ(Receive(fd), "WATCHDOG=1");
  EXPECT_EQ(Receive(fd), "<none>");
  ::close(fd);
}

TEST_F(SdNotifyTest, SendsStateToAbstractSocket) {
  const std::string name = "@kvkeep-sd-notify-test-" + std::to_string(::getpid()) + "-" +
                           std::to_string(::kvkeep::testing::TestSeed());
  int fd = BindDatagram(name);
  ::setenv("NOTIFY_SOCKET", name.c_str(), 1);
  ASSERT_TRUE(SdNotifyOrError("READY=1").ok());
  EXPECT_EQ(Receive(fd), "READY=1");
  ::close(fd);
}

TEST_F(SdNotifyTest, UnsetVariableSendsNothing) {
  const std::string path = dir_.File("notify.sock");
  int fd = BindDatagram(path);
  ::unsetenv("NOTIFY_SOCKET");
  EXPECT_TRUE(SdNotifyOrError("READY=1").ok());
  EXPECT_EQ(Receive(fd), "<none>");
  ::close(fd);
}

TEST_F(SdNotifyTest, MalformedOrMissingSocketIsAnError) {
  ::setenv("NOTIFY_SOCKET", "relative/path", 1);
  EXPECT_TRUE(SdNotifyOrError("READY=1").IsInvalidArgument());
  ::setenv("NOTIFY_SOCKET", dir_.File("nobody-listens.sock").c_str(), 1);
  Status st = SdNotifyOrError("READY=1");
  EXPECT_EQ(st.code(), StatusCode::kIOError) << st.ToString();
  SdNotify("READY=1");  // logs, does not crash
}

// Runs `body` in a forked child with `fd3` installed as fd 3 and returns its exit code.
int RunInChild(int fd3, const std::function<int()>& body) {
  pid_t pid = ::fork();
  if (pid == 0) {
    if (fd3 != 3) {
      if (::dup2(fd3, 3) < 0) ::_exit(100);
      ::close(fd3);
    }
    // dup2 clears FD_CLOEXEC; SdListenUnixFd must set it again.
    ::_exit(body());
  }
  int status = 0;
  ::waitpid(pid, &status, 0);
  return WIFEXITED(status) ? WEXITSTATUS(status) : 200;
}

int ListeningUnixSocket(const std::string& path) {
  int fd = ::socket(AF_UNIX, SOCK_STREAM, 0);
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  std::strncpy(addr.sun_path, path.c_str(), sizeof(addr.sun_path) - 1);
  EXPECT_EQ(::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0);
  EXPECT_EQ(::listen(fd, 4), 0);
  return fd;
}

void SetListenEnv(const std::string& pid, const std::string& fds) {
  ::setenv("LISTEN_PID", pid.c_str(), 1);
  ::setenv("LISTEN_FDS", fds.c_str(), 1);
  ::setenv("LISTEN_FDNAMES", "kvkeepd.socket", 1);
}

bool ListenEnvIsUnset() {
  return std::getenv("LISTEN_PID") == nullptr && std::getenv("LISTEN_FDS") == nullptr &&
         std::getenv("LISTEN_FDNAMES") == nullptr;
}

TEST_F(SdNotifyTest, SocketActivationHandsOverListeningFd3) {
  const std::string path = dir_.File("kvkeep.sock");
  int listener = ListeningUnixSocket(path);
  int code = RunInChild(listener, [&path] {
    SetListenEnv(std::to_string(::getpid()), "1");
    std::optional<int> fd = SdListenUnixFd();
    if (!fd.has_value()) return 1;
    if (*fd != 3) return 2;
    if (!ListenEnvIsUnset()) return 3;
    if ((::fcntl(3, F_GETFD) & FD_CLOEXEC) == 0) return 4;
    // The fd is the socket the parent bound.
    sockaddr_un addr{};
    socklen_t len = sizeof(addr);
    if (::getsockname(3, reinterpret_cast<sockaddr*>(&addr), &len) != 0) return 5;
    return path == addr.sun_path ? 0 : 6;
  });
  EXPECT_EQ(code, 0) << "child failed at step " << code;
  ::close(listener);
}

TEST_F(SdNotifyTest, SocketActivationAcceptsParentConnection) {
  // The activated child serves a connection made to the path the parent bound.
  const std::string path = dir_.File("kvkeep.sock");
  int listener = ListeningUnixSocket(path);
  pid_t pid = ::fork();
  if (pid == 0) {
    ::dup2(listener, 3);
    SetListenEnv(std::to_string(::getpid()), "1");
    std::optional<int> fd = SdListenUnixFd();
    if (!fd.has_value()) ::_exit(1);
    int conn = ::accept(*fd, nullptr, nullptr);
    char c = 0;
    ::_exit(conn >= 0 && ::read(conn, &c, 1) == 1 && c == 'k' ? 0 : 2);
  }
  ::close(listener);  // only the child holds the listener now
  int client = ::socket(AF_UNIX, SOCK_STREAM, 0);
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  std::strncpy(addr.sun_path, path.c_str(), sizeof(addr.sun_path) - 1);
  ASSERT_EQ(::connect(client, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0);
  ASSERT_EQ(::write(client, "k", 1), 1);
  int status = 0;
  ::waitpid(pid, &status, 0);
  ASSERT_TRUE(WIFEXITED(status));
  EXPECT_EQ(WEXITSTATUS(status), 0);
  ::close(client);
}

TEST_F(SdNotifyTest, NotActivatedWithoutVariablesOrForAnotherPid) {
  int code = RunInChild(::open("/dev/null", O_RDONLY), [] {
    if (SdListenUnixFd().has_value()) return 1;
    // LISTEN_PID of our parent: meant for another process. Ignored, and unset.
    SetListenEnv(std::to_string(::getppid()), "1");
    Result<std::optional<int>> fd = SdListenUnixFdOrError();
    if (!fd.ok() || fd->has_value()) return 2;
    if (!ListenEnvIsUnset()) return 3;
    SetListenEnv(std::to_string(::getpid()), "0");
    fd = SdListenUnixFdOrError();
    if (!fd.ok() || fd->has_value()) return 4;
    return 0;
  });
  EXPECT_EQ(code, 0) << "child failed at step " << code;
}

TEST_F(SdNotifyTest, RejectsMalformedOrUnusableActivation) {
  int pair[2];
  ASSERT_EQ(::socketpair(AF_UNIX, SOCK_STREAM, 0, pair), 0);
  // A connected (not listening) stream socket as fd 3.
  int code = RunInChild(pair[0], [] {
    SetListenEnv(std::to_string(::getpid()), "1");
    Result<std::optional<int>> fd = SdListenUnixFdOrError();
    if (fd.ok() || !fd.status().IsInvalidArgument()) return 1;
    if (!ListenEnvIsUnset()) return 2;
    SetListenEnv(std::to_string(::getpid()), "2");
    if (SdListenUnixFdOrError().status().ok()) return 3;
    SetListenEnv(std::to_string(::getpid()), "one");
    if (SdListenUnixFdOrError().status().ok()) return 4;
    SetListenEnv(std::to_string(::getpid()), "1");
    if (SdListenUnixFd().has_value()) return 5;  // logged, falls back to binding
    return 0;
  });
  EXPECT_EQ(code, 0) << "child failed at step " << code;
  // A regular file as fd 3.
  code = RunInChild(::open("/dev/null", O_RDONLY), [] {
    SetListenEnv(std::to_string(::getpid()), "1");
    return SdListenUnixFdOrError().status().IsInvalidArgument() ? 0 : 1;
  });
  EXPECT_EQ(code, 0);
  ::close(pair[0]);
  ::close(pair[1]);
}

TEST_F(SdNotifyTest, WatchdogInterval) {
  EXPECT_EQ(SdWatchdogInterval().count(), 0);
  ::setenv("WATCHDOG_USEC", "30000000", 1);
  EXPECT_EQ(SdWatchdogInterval(), std::chrono::seconds(30));
  ::setenv("WATCHDOG_PID", std::to_string(::getpid()).c_str(), 1);
  EXPECT_EQ(SdWatchdogInterval(), std::chrono::seconds(30));
  ::setenv("WATCHDOG_PID", std::to_string(::getppid()).c_str(), 1);
  EXPECT_EQ(SdWatchdogInterval().count(), 0);
  ::unsetenv("WATCHDOG_PID");
  for (const char* bad : {"0", "-5", "30s", "99999999999999999999999"}) {
    ::setenv("WATCHDOG_USEC", bad, 1);
    EXPECT_EQ(SdWatchdogInterval().count(), 0) << bad;
  }
}

}  // namespace
}  // namespace kvkeep::daemon
