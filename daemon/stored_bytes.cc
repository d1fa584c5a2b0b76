#include "daemon/stored_bytes.h"

#include <algorithm>

namespace kvkeep {

int64_t StoredBytes::Of(const Message& m) {
  return static_cast<int64_t>(m.role.size() + m.content.size() + m.name.size() +
                              m.tool_call_id.size() + 4 * m.tokens.size());
}

int64_t StoredBytes::Of(const std::vector<Message>& msgs) {
  int64_t n = 0;
  for (const Message& m : msgs) n += Of(m);
  return n;
}

void StoredBytes::AddLocked(uint32_t uid, const std::string& session, int64_t bytes) {
  int64_t& s = per_session_[{uid, session}];
  int64_t& u = per_uid_[uid];
  bytes = std::max(bytes, -s);  // never below zero
  s += bytes;
  u = std::max<int64_t>(0, u + bytes);
}

Status StoredBytes::Charge(uint32_t uid, const std::string& session, int64_t bytes) {
  MutexLock lock(&mu_);
  const int64_t used = per_uid_[uid];
  if (bytes > 0 && used + bytes > limit_per_uid_) {
    return Status::QuotaExceeded(
        "uid " + std::to_string(uid) + " stores " + std::to_string(used) + " bytes; " +
        std::to_string(bytes) + " more would pass limits.max_stored_bytes_per_uid (" +
        std::to_string(limit_per_uid_) + "); delete sessions (session.close keep=false)");
  }
  AddLocked(uid, session, bytes);
  return Status::OK();
}

void StoredBytes::ChargeAnyway(uint32_t uid, const std::string& session, int64_t bytes) {
  MutexLock lock(&mu_);
  AddLocked(uid, session, bytes);
}

void StoredBytes::Uncharge(uint32_t uid, const std::string& session, int64_t bytes) {
  MutexLock lock(&mu_);
  AddLocked(uid, session, -bytes);
}

void StoredBytes::Forget(uint32_t uid, const std::string& session) {
  MutexLock lock(&mu_);
  auto it = per_session_.find({uid, session});
  if (it == per_session_.end()) return;
  per_uid_[uid] = std::max<int64_t>(0, per_uid_[uid] - it->second);
  per_session_.erase(it);
}

int64_t StoredBytes::Used(uint32_t uid) const {
  MutexLock lock(&mu_);
  auto it = per_uid_.find(uid);
  return it == per_uid_.end() ? 0 : it->second;
}

}  // namespace kvkeep
