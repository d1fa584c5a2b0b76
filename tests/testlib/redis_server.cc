#include "tests/testlib/redis_server.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstring>
#include <thread>
#include <vector>

namespace kvkeep::testing {
namespace {

bool CanConnect(const std::string& path) {
  int fd = ::socket(AF_UNIX, SOCK_STREAM, 0);
  if (fd < 0) return false;
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  std::snprintf(addr.sun_path, sizeof(addr.sun_path), "%s", path.c_str());
  const bool ok = ::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0;
  ::close(fd);
  return ok;
}

}  // namespace

RedisServer::RedisServer(int64_t maxmemory_bytes)
    : socket_(dir_.File("redis.sock")), maxmemory_bytes_(maxmemory_bytes) {
  Start();
}

RedisServer::~RedisServer() { Kill(); }

bool RedisServer::Start() {
  std::vector<std::string> args = {"redis-server", "--port",      "0",         "--unixsocket",
                                   socket_,        "--save",      "",          "--appendonly",
                                   "no",           "--dir",       dir_.path(), "--loglevel",
                                   "warning",      "--daemonize", "no"};
  if (maxmemory_bytes_ > 0) {
    args.insert(args.end(), {"--maxmemory", std::to_string(maxmemory_bytes_), "--maxmemory-policy",
                             "allkeys-lru"});
  }
  pid_ = fork();
  if (pid_ == 0) {
    const int devnull = ::open("/dev/null", O_WRONLY);
    if (devnull >= 0) ::dup2(devnull, 1);  // its start-up banner; warnings still reach stderr
    std::vector<char*> argv;
    for (std::string& a : args) argv.push_back(a.data());
    argv.push_back(nullptr);
    execvp("redis-server", argv.data());
    std::perror("exec redis-server");
    _exit(127);
  }
  if (pid_ < 0) return false;
  for (int i = 0; i < 500; ++i) {  // up to 5 s
    if (CanConnect(socket_)) return true;
    int status = 0;
    if (waitpid(pid_, &status, WNOHANG) == pid_) break;  // exited: not installed?
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  Kill();
  return false;
}

void RedisServer::Kill() {
  if (pid_ <= 0) return;
  ::kill(pid_, SIGCONT);
  ::kill(pid_, SIGKILL);
  int status = 0;
  waitpid(pid_, &status, 0);
  pid_ = -1;
  ::unlink(socket_.c_str());
}

void RedisServer::Pause() {
  if (pid_ > 0) ::kill(pid_, SIGSTOP);
}
void RedisServer::Resume() {
  if (pid_ > 0) ::kill(pid_, SIGCONT);
}

bool RedisServer::Restart() {
  Kill();
  return Start();
}

}  // namespace kvkeep::testing
