#include "daemon/session.h"

namespace kvkeep {

std::vector<StoredMessage> Session::ToStoredLocked(size_t first_seq,
                                                   const std::vector<Message>& msgs) const {
  std::vector<StoredMessage> out;
  out.reserve(msgs.size());
  for (size_t i = 0; i < msgs.size(); ++i) {
    const Message& m = msgs[i];
    out.push_back(
        {static_cast<int64_t>(first_seq + i), m.role, m.content, m.name, m.tool_call_id, m.tokens});
  }
  return out;
}

void SessionTable::Load(std::vector<StoredSession> stored) {
  std::lock_guard<std::mutex> lock(mu_);
  for (StoredSession& s : stored) {
    auto session = std::make_shared<Session>();
    session->owner_uid = s.owner_uid;
    session->id = s.id;
    session->created_us = s.created_us;
    session->model = s.model;
    session->updated_us = s.updated_us;
    session->closed = s.closed;
    session->damage = std::move(s.damage);
    for (StoredMessage& m : s.messages) {
      session->AppendLocked({std::move(m.role), std::move(m.content), std::move(m.name),
                             std::move(m.tool_call_id), std::move(m.tokens)});
    }
    if (!s.closed) open_count_[s.owner_uid]++;
    stored_count_[s.owner_uid]++;
    sessions_[{s.owner_uid, s.id}] = std::move(session);
  }
}

std::shared_ptr<Session> SessionTable::Find(uint32_t uid, const std::string& id) const {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = sessions_.find({uid, id});
  return it == sessions_.end() ? nullptr : it->second;
}

Status SessionTable::Insert(std::shared_ptr<Session> session, int32_t max_open,
                            int32_t max_stored) {
  std::lock_guard<std::mutex> lock(mu_);
  Key key{session->owner_uid, session->id};
  if (sessions_.count(key)) return Status::AlreadyExists("session '" + session->id + "' exists");
  int32_t& open = open_count_[session->owner_uid];
  if (open >= max_open) {
    return Status::TooManySessions("uid has " + std::to_string(open) +
                                   " open sessions (max_sessions_per_uid)");
  }
  int32_t& stored = stored_count_[session->owner_uid];
  if (stored >= max_stored) {
    return Status::TooManySessions("uid keeps " + std::to_string(stored) +
                                   " sessions, open or closed (max_stored_sessions_per_uid); "
                                   "delete some with session.close keep=false");
  }
  ++open;
  ++stored;
  sessions_[key] = std::move(session);
  return Status::OK();
}

Status SessionTable::ReserveOpen(uint32_t uid, int32_t max_open) {
  std::lock_guard<std::mutex> lock(mu_);
  int32_t& open = open_count_[uid];
  if (open >= max_open) {
    return Status::TooManySessions("uid has " + std::to_string(open) +
                                   " open sessions (max_sessions_per_uid)");
  }
  ++open;
  return Status::OK();
}

void SessionTable::ReleaseOpen(uint32_t uid) {
  std::lock_guard<std::mutex> lock(mu_);
  if (open_count_[uid] > 0) open_count_[uid]--;
}

void SessionTable::Remove(uint32_t uid, const std::string& id) {
  std::lock_guard<std::mutex> lock(mu_);
  if (sessions_.erase({uid, id}) > 0 && stored_count_[uid] > 0) stored_count_[uid]--;
}

std::vector<std::shared_ptr<Session>> SessionTable::List(std::optional<uint32_t> uid) const {
  std::lock_guard<std::mutex> lock(mu_);
  std::vector<std::shared_ptr<Session>> out;
  for (const auto& [key, s] : sessions_) {
    if (!uid || key.first == *uid) out.push_back(s);
  }
  return out;
}

int64_t SessionTable::NumOpen() const {
  std::lock_guard<std::mutex> lock(mu_);
  int64_t n = 0;
  for (const auto& [uid, count] : open_count_) n += count;
  return n;
}

}  // namespace kvkeep
