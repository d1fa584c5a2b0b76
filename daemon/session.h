// Sessions: the in-memory table of conversations. Each session holds its messages and
// the token sequence they render to (the whole context the engine is given each turn).
// The store (daemon/store.h) is the durable copy; every mutation is written to the store
// first and applied here only when the write succeeded.
//
// Locking (documented order; never take them the other way round):
//   Session::mu (a fork's parent before its child)  ->  one of the leaf mutexes:
//   SessionTable::mu_, the Store's, a Client's in-flight table, the engine's queue.
// SessionTable::mu_ guards the map and the open-session counts only; it is held for a map
// operation and never while another lock is taken. Session::mu
// guards every field of its session and is held across that session's store writes, which
// orders each session's writes (seq numbers) without serialising other sessions.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "base/status.h"
#include "daemon/store.h"

namespace kvkeep {

struct Message {
  std::string role;
  std::string content;
  std::string name;
  std::string tool_call_id;
  std::vector<int32_t> tokens;  // this message's slice of the session's token sequence
};

struct PendingTool {
  int64_t event_id = 0;
  std::string tool;
  int64_t begin_mono_us = 0;  // monotonic clock, for the duration
  std::string key;            // policy/tool_key.h ToolKey(tool, command): what is learned
};

struct Session {
  // Immutable after creation.
  uint32_t owner_uid = 0;
  std::string id;
  int64_t created_us = 0;  // wall clock
  std::string model;
  // Non-empty: its stored rows failed their checksum at load (Store::LoadAll); the
  // session is shown by session.info but refuses verbs that would build on it.
  std::string damage;

  std::mutex mu;  // guards everything below
  int64_t updated_us = 0;
  bool closed = false;
  bool deleted = false;     // removed from the table; stale references must not use it
  bool generating = false;  // a session.generate is in flight
  std::vector<Message> messages;
  std::vector<int32_t> tokens;  // concatenation of messages[i].tokens
  std::vector<PendingTool> pending_tools;
  // The store's tool events of this session, mirrored in memory once first read, so
  // session.info never queries SQLite twice (tool_begin/tool_end keep it current).
  bool tool_events_loaded = false;
  std::vector<ToolEvent> tool_events;

  // REQUIRES: mu held.
  void AppendLocked(Message m) {
    tokens.insert(tokens.end(), m.tokens.begin(), m.tokens.end());
    messages.push_back(std::move(m));
  }
  std::vector<StoredMessage> ToStoredLocked(size_t first_seq,
                                            const std::vector<Message>& msgs) const;
};

class SessionTable {
 public:
  // Loads stored sessions (daemon start).
  void Load(std::vector<StoredSession> stored);

  // The session, or nullptr when absent (other uids' sessions are absent).
  std::shared_ptr<Session> Find(uint32_t uid, const std::string& id) const;
  // Inserts a new open session. AlreadyExists if the id is taken for this uid;
  // TooManySessions when the uid already has max_open open sessions, or keeps max_stored
  // sessions (open or closed).
  Status Insert(std::shared_ptr<Session> session, int32_t max_open, int32_t max_stored);
  // Reserves an open slot for uid (reopen); ResourceExhausted at the limit.
  Status ReserveOpen(uint32_t uid, int32_t max_open);
  void ReleaseOpen(uint32_t uid);
  void Remove(uint32_t uid, const std::string& id);

  // Sessions of one uid, or of every uid.
  std::vector<std::shared_ptr<Session>> List(std::optional<uint32_t> uid) const;
  int64_t NumOpen() const;

 private:
  using Key = std::pair<uint32_t, std::string>;
  mutable std::mutex mu_;
  std::map<Key, std::shared_ptr<Session>> sessions_;  // guarded by mu_
  std::map<uint32_t, int32_t> open_count_;            // guarded by mu_
  std::map<uint32_t, int32_t> stored_count_;          // guarded by mu_: open and closed
};

}  // namespace kvkeep
