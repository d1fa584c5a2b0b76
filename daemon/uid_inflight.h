// UidInflight: session.generate requests in flight per uid, across all of the uid's
// connections, against limits.max_inflight_per_uid (docs/configuration.md). A uid with many
// connections can otherwise submit max_inflight_per_connection on each of them (issue 11,
// defect 1).
//
// Thread-safety: thread-safe (one mutex, held for a map update only; a leaf lock).
#pragma once

#include <cstdint>
#include <map>

#include "base/status.h"
#include "base/thread_annotations.h"

namespace kvkeep {

class UidInflight {
 public:
  explicit UidInflight(int32_t limit_per_uid) : limit_per_uid_(limit_per_uid) {}

  // Counts one more request of uid, or TooManyRequests naming the limit when the uid
  // already has limit_per_uid in flight (then nothing is counted).
  [[nodiscard]] Status Acquire(uint32_t uid);
  // The request finished (or was never submitted). REQUIRES: a successful Acquire(uid).
  void Release(uint32_t uid);
  int32_t InFlight(uint32_t uid) const;

 private:
  const int32_t limit_per_uid_;
  mutable Mutex mu_;
  std::map<uint32_t, int32_t> per_uid_ GUARDED_BY(mu_);
};

}  // namespace kvkeep
