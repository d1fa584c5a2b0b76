// DaemonProcess: a kvkeepd child started by `kvkeep replay run --spawn`, one per policy,
// each on its own socket and state directory, stopped with SIGTERM (SIGKILL after a
// grace period) when the object goes away.
#pragma once

#include <sys/types.h>

#include <string>
#include <vector>

#include "base/status.h"

namespace kvkeep::replay {

struct DaemonSpawnOptions {
  std::string kvkeepd_path;  // the binary
  std::string socket_path;
  std::string state_dir;
  std::string log_path;                 // the daemon's stderr goes here
  std::vector<std::string> extra_args;  // e.g. --model DIR --policy lru ...
  int ready_timeout_s = 180;            // model creation and loading included
};

class DaemonProcess {
 public:
  // Starts kvkeepd and waits until it answers `hello` on its socket.
  static Result<std::unique_ptr<DaemonProcess>> Start(const DaemonSpawnOptions& options);
  ~DaemonProcess();
  DaemonProcess(const DaemonProcess&) = delete;
  DaemonProcess& operator=(const DaemonProcess&) = delete;

  // SIGTERM, then waits up to grace_s before SIGKILL. Returns the exit status.
  int Stop(int grace_s = 30);
  pid_t pid() const { return pid_; }

 private:
  explicit DaemonProcess(pid_t pid) : pid_(pid) {}
  pid_t pid_;
  bool stopped_ = false;
};

// The kvkeepd beside the running kvkeep binary (same build or install directory).
std::string DefaultKvkeepdPath();

}  // namespace kvkeep::replay
