#include "daemon/uid_inflight.h"

#include <string>

namespace kvkeep {

Status UidInflight::Acquire(uint32_t uid) {
  MutexLock lock(&mu_);
  int32_t& n = per_uid_[uid];
  if (n >= limit_per_uid_) {
    return Status::TooManyRequests("uid " + std::to_string(uid) + " has " + std::to_string(n) +
                                   " requests in flight on all its connections "
                                   "(limits.max_inflight_per_uid is " +
                                   std::to_string(limit_per_uid_) + ")");
  }
  ++n;
  return Status::OK();
}

void UidInflight::Release(uint32_t uid) {
  MutexLock lock(&mu_);
  auto it = per_uid_.find(uid);
  if (it == per_uid_.end()) return;
  if (--it->second <= 0) per_uid_.erase(it);
}

int32_t UidInflight::InFlight(uint32_t uid) const {
  MutexLock lock(&mu_);
  auto it = per_uid_.find(uid);
  return it == per_uid_.end() ? 0 : it->second;
}

}  // namespace kvkeep
