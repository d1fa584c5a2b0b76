// ConnectionLimits: admission of new connections, in total and per uid, and the daemon-wide
// budget of reply bytes queued but not yet read by their clients.
//
// Connections: Admit() hands out a Ticket (released on destruction) unless the daemon has
// max_connections open or the uid has max_connections_per_uid; the server then answers the
// refused client one error line and closes it, so its fd is free at once. The total is
// kept below the process's fd limit (RLIMIT_NOFILE less kReservedFds for the database, the
// model and the disk tier); FromLimits raises the soft limit to the hard one and lowers
// max_connections with a warning when it would not fit.
// Output: each connection reports its unsent bytes (UpdateOutput); once the sum exceeds
// max_output_bytes_total, a connection holding more than its fair share (the budget over
// the open connections, at least kMinFairShareBytes) is a slow reader to drop. This bounds
// memory without punishing clients that keep up.
//
// Thread-safety: all methods are thread-safe.
#pragma once

#include <atomic>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>

#include "base/status.h"
#include "base/thread_annotations.h"
#include "daemon/config.h"

namespace kvkeep {

class ConnectionLimits {
 public:
  static constexpr int64_t kReservedFds = 256;
  static constexpr int64_t kMinFairShareBytes = int64_t{1} << 20;

  struct Options {
    int32_t max_connections = 4096;
    int32_t max_connections_per_uid = 1024;
    int64_t max_output_bytes_total = int64_t{1} << 30;
  };
  // Options from the daemon's limits, max_connections fitted to the fd limit (see above).
  static Options FromLimits(const DaemonLimits& limits);

  explicit ConnectionLimits(Options options) : options_(options) {}

  // One admitted connection; gives its slot back on destruction.
  class Ticket {
   public:
    Ticket(ConnectionLimits* owner, uint32_t uid) : owner_(owner), uid_(uid) {}
    ~Ticket() { owner_->Release(uid_); }
    Ticket(const Ticket&) = delete;
    Ticket& operator=(const Ticket&) = delete;

   private:
    ConnectionLimits* owner_;
    uint32_t uid_;
  };
  // A ticket, or ResourceExhausted naming the limit that refused it.
  Result<std::unique_ptr<Ticket>> Admit(uint32_t uid);

  // Adds delta (may be negative) to the daemon's unsent reply bytes.
  void UpdateOutput(int64_t delta_bytes) { output_bytes_.fetch_add(delta_bytes); }
  // True when the daemon is over its output budget and a connection with this many unsent
  // bytes holds more than its fair share of it.
  bool IsSlowReader(int64_t connection_unsent_bytes) const;

  int64_t output_bytes() const { return output_bytes_.load(); }
  int32_t connections() const;
  const Options& options() const { return options_; }

 private:
  void Release(uint32_t uid);

  const Options options_;
  mutable Mutex mu_;
  int32_t total_ GUARDED_BY(mu_) = 0;
  std::map<uint32_t, int32_t> by_uid_ GUARDED_BY(mu_);
  std::atomic<int64_t> output_bytes_{0};
};

}  // namespace kvkeep
