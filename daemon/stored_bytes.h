// StoredBytes: how many bytes each uid keeps in the store (and mirrors in memory), against
// one per-uid limit (limits.max_stored_bytes_per_uid, docs/configuration.md). A message
// counts its role, content, name, tool_call_id and 4 bytes per token; a tool event its
// tool and args; a fork the copied messages again. Bytes are kept per session, so a
// deleted session (session.close keep=false) gives its bytes back.
//
// Thread-safety: thread-safe (one mutex, held for a map update only; a leaf lock).
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "base/status.h"
#include "base/thread_annotations.h"
#include "daemon/session.h"

namespace kvkeep {

class StoredBytes {
 public:
  explicit StoredBytes(int64_t limit_per_uid) : limit_per_uid_(limit_per_uid) {}

  static int64_t Of(const Message& m);
  static int64_t Of(const std::vector<Message>& msgs);

  // Counts `bytes` more for the uid's session, or QuotaExceeded (naming the limit,
  // the uid's usage and the request's bytes) when the uid would pass the limit; then
  // nothing is counted.
  [[nodiscard]] Status Charge(uint32_t uid, const std::string& session, int64_t bytes);
  // Counts bytes stored whatever the limit: a generation's reply (bounded by max_tokens),
  // sessions loaded at start.
  void ChargeAnyway(uint32_t uid, const std::string& session, int64_t bytes);
  // Takes back a Charge whose store write failed.
  void Uncharge(uint32_t uid, const std::string& session, int64_t bytes);
  // The session was deleted: all its bytes come back.
  void Forget(uint32_t uid, const std::string& session);
  int64_t Used(uint32_t uid) const;
  int64_t limit_per_uid() const { return limit_per_uid_; }

 private:
  void AddLocked(uint32_t uid, const std::string& session, int64_t bytes) REQUIRES(mu_);

  const int64_t limit_per_uid_;
  mutable Mutex mu_;
  std::map<uint32_t, int64_t> per_uid_ GUARDED_BY(mu_);
  std::map<std::pair<uint32_t, std::string>, int64_t> per_session_ GUARDED_BY(mu_);
};

}  // namespace kvkeep
