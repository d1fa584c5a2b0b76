// StateDir: kvkeepd's claim on its state directory (database, WAL, models, disk tier).
//
// Open() makes the directory private and locks it for this process:
//   - creates it 0700 if absent; an existing directory owned by this uid whose mode lets
//     the group or others in (e.g. 0755) is chmod-ed to 0700 with a warning; one owned by
//     another uid is refused (it cannot be made private by us);
//   - database files already there (kvkeep.db, -wal, -shm, -journal) readable by others are
//     chmod-ed to 0600 with a warning;
//   - sets the process umask to 077, so everything the daemon creates afterwards (SQLite's
//     database, WAL and SHM, models/, the disk tier) is 0600/0700;
//   - takes an exclusive flock on <dir>/kvkeepd.lock, held until destruction: a second
//     kvkeepd on the same directory gets Unavailable naming the holder's pid.
// The lock dies with the process (kill -9 included), so a crashed daemon never leaves it
// stale.
//
// Thread-safety: not thread-safe; create once at start-up. Owns the lock file descriptor.
#pragma once

#include <memory>
#include <string>

#include "base/status.h"

namespace kvkeep {

class StateDir {
 public:
  static constexpr const char* kLockFileName = "kvkeepd.lock";

  static Result<std::unique_ptr<StateDir>> Open(const std::string& path);
  ~StateDir();
  StateDir(const StateDir&) = delete;
  StateDir& operator=(const StateDir&) = delete;

  const std::string& path() const { return path_; }

 private:
  StateDir(std::string path, int lock_fd) : path_(std::move(path)), lock_fd_(lock_fd) {}
  std::string path_;
  int lock_fd_;
};

}  // namespace kvkeep
