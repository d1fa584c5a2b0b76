#include "daemon/connection_limits.h"

#include <spdlog/spdlog.h>
#include <sys/resource.h>

#include <algorithm>

namespace kvkeep {

ConnectionLimits::Options ConnectionLimits::FromLimits(const DaemonLimits& limits) {
  Options o;
  o.max_connections = limits.max_connections;
  o.max_connections_per_uid = limits.max_connections_per_uid;
  o.max_output_bytes_total = limits.max_output_bytes_total;
  rlimit rl{};
  if (::getrlimit(RLIMIT_NOFILE, &rl) != 0) return o;
  if (rl.rlim_cur < rl.rlim_max) {
    rlimit raised = rl;
    raised.rlim_cur = rl.rlim_max;
    if (::setrlimit(RLIMIT_NOFILE, &raised) == 0) rl = raised;
  }
  if (rl.rlim_cur == RLIM_INFINITY) return o;
  const int64_t fit = static_cast<int64_t>(rl.rlim_cur) - kReservedFds;
  if (o.max_connections > fit) {
    const int32_t fitted = static_cast<int32_t>(std::max<int64_t>(1, fit));
    spdlog::warn(
        "limits.max_connections {} does not fit the fd limit {} (less {} reserved); using {}",
        o.max_connections, static_cast<int64_t>(rl.rlim_cur), kReservedFds, fitted);
    o.max_connections = fitted;
  }
  return o;
}

Result<std::unique_ptr<ConnectionLimits::Ticket>> ConnectionLimits::Admit(uint32_t uid) {
  MutexLock lock(&mu_);
  if (total_ >= options_.max_connections) {
    return Status::ResourceExhausted("the daemon has " + std::to_string(total_) +
                                     " connections open (limits.max_connections)");
  }
  int32_t& mine = by_uid_[uid];
  if (mine >= options_.max_connections_per_uid) {
    return Status::ResourceExhausted("uid " + std::to_string(uid) + " has " + std::to_string(mine) +
                                     " connections open (limits.max_connections_per_uid)");
  }
  ++mine;
  ++total_;
  return std::make_unique<Ticket>(this, uid);
}

void ConnectionLimits::Release(uint32_t uid) {
  MutexLock lock(&mu_);
  --total_;
  auto it = by_uid_.find(uid);
  if (it != by_uid_.end() && --it->second <= 0) by_uid_.erase(it);
}

int32_t ConnectionLimits::connections() const {
  MutexLock lock(&mu_);
  return total_;
}

bool ConnectionLimits::IsSlowReader(int64_t connection_unsent_bytes) const {
  if (output_bytes_.load() <= options_.max_output_bytes_total) return false;
  const int64_t open = std::max<int32_t>(1, connections());
  const int64_t fair = std::max(kMinFairShareBytes, options_.max_output_bytes_total / open);
  return connection_unsent_bytes > fair;
}

}  // namespace kvkeep
