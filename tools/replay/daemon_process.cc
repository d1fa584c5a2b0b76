#include "tools/replay/daemon_process.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <thread>

#include "tools/replay/daemon_client.h"

namespace kvkeep::replay {

std::string DefaultKvkeepdPath() {
  char buf[4096];
  ssize_t n = readlink("/proc/self/exe", buf, sizeof(buf) - 1);
  if (n <= 0) return "kvkeepd";
  std::string self(buf, static_cast<size_t>(n));
  return self.substr(0, self.find_last_of('/') + 1) + "kvkeepd";
}

Result<std::unique_ptr<DaemonProcess>> DaemonProcess::Start(const DaemonSpawnOptions& o) {
  if (access(o.kvkeepd_path.c_str(), X_OK) != 0) {
    return Status::NotFound("kvkeepd not found or not executable: " + o.kvkeepd_path);
  }
  std::vector<std::string> args = {o.kvkeepd_path, "--socket", o.socket_path, "--state-dir",
                                   o.state_dir};
  args.insert(args.end(), o.extra_args.begin(), o.extra_args.end());
  std::vector<char*> argv;
  for (std::string& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);

  pid_t pid = fork();
  if (pid < 0) return Status::IOError("fork failed");
  if (pid == 0) {
    int log = open(o.log_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (log >= 0) {
      dup2(log, STDERR_FILENO);
      dup2(log, STDOUT_FILENO);
    }
    execv(argv[0], argv.data());
    _exit(127);
  }
  auto process = std::unique_ptr<DaemonProcess>(new DaemonProcess(pid));
  auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(o.ready_timeout_s);
  while (std::chrono::steady_clock::now() < deadline) {
    int status = 0;
    if (waitpid(pid, &status, WNOHANG) == pid) {
      process->stopped_ = true;
      return Status::Unavailable("kvkeepd exited during start-up (status " +
                                 std::to_string(status) + "); see " + o.log_path);
    }
    auto conn = client::DaemonClient::Connect(o.socket_path);
    if (conn.ok() && (*conn)->Call("hello").ok()) return process;
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  return Status::DeadlineExceeded("kvkeepd did not answer within " +
                                  std::to_string(o.ready_timeout_s) + " s; see " + o.log_path);
}

int DaemonProcess::Stop(int grace_s) {
  if (stopped_) return 0;
  stopped_ = true;
  kill(pid_, SIGTERM);
  int status = 0;
  for (int i = 0; i < grace_s * 10; ++i) {
    if (waitpid(pid_, &status, WNOHANG) == pid_) return status;
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  kill(pid_, SIGKILL);
  waitpid(pid_, &status, 0);
  return status;
}

DaemonProcess::~DaemonProcess() { Stop(); }

}  // namespace kvkeep::replay
