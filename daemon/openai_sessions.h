// SessionMatcher: finds the session an OpenAI request continues, for clients that send
// the whole conversation every turn and no session id (docs/openai.md, "Sessions").
//
// Each session the HTTP front end created is remembered with the chained hashes of its
// messages (h[i] = hash of messages 0..i, from each message's match key). A request's
// chain is compared against the tenant's sessions; chains are equal up to the first
// differing message and differ after it, so the shared length is found by binary search.
//   - named (prompt_cache_key, user, X-Session-Id): the name's session. Its whole chain a
//     prefix of the request: continue it; otherwise fork (a new session; the name moves).
//   - unnamed: the session with the longest chain that is a whole prefix of the request
//     is continued; if none, the longest partial match is forked; if none, a new session.
// A session with a request in flight is never continued twice: an unnamed request forks
// instead, a named one is refused as busy. Tenants never see each other's sessions.
// The table lives in memory: after a restart, conversations start new sessions (the
// prompt's KV is still reused through the prefix cache while it is resident).
//
// Thread-safety: all methods are thread-safe.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <map>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

namespace kvkeep::openai {

// Chained hashes of a conversation's match keys: h[i] = ChainNext(h[i-1], key[i]), h[-1] = 0.
uint64_t ChainNext(uint64_t prev, uint64_t key);
std::vector<uint64_t> ChainKeys(const std::vector<uint64_t>& keys);

struct Match {
  enum class Kind { kNew, kContinue, kFork };
  Kind kind = Kind::kNew;
  std::string session_id;     // kContinue: the session; kFork: the parent
  size_t stored = 0;          // messages of the request the session already holds (kContinue)
  size_t shared = 0;          // kFork: messages shared with the parent
  bool reopen = false;        // kContinue: the session was closed to make room; reopen it
  int pending_tools = 0;      // kContinue: tool calls of its last reply awaiting results
  bool pending_text = false;  // ...made in text mode (results arrive as user messages)
};

class SessionMatcher {
 public:
  // Picks the session for a request and marks it busy (kContinue). A busy named session
  // yields nullopt (the caller answers 429).
  std::optional<Match> Acquire(uid_t uid, const std::string& name,
                               const std::vector<uint64_t>& chain);
  // Records that session `id` of uid now holds `chain` and is idle, with `pending_tools`
  // tool calls awaiting results; `name` (may be empty) now points at it.
  void Release(uid_t uid, const std::string& id, const std::string& name,
               std::vector<uint64_t> chain, int pending_tools, bool pending_text);
  // Marks session id idle without changing what it holds (a failed request).
  void Abandon(uid_t uid, const std::string& id);
  // Drops session id and the names pointing at it (it was deleted behind the matcher's
  // back, e.g. session.close keep=false on the native socket): its conversation's next
  // request starts a new session.
  void Forget(uid_t uid, const std::string& id);
  // The least recently used idle open session of uid, to close when its quota is full.
  std::optional<std::string> EvictionCandidate(uid_t uid);
  void MarkClosed(uid_t uid, const std::string& id);

 private:
  struct Entry {
    std::vector<uint64_t> chain;
    bool busy = false;
    bool open = true;
    int pending_tools = 0;
    bool pending_text = false;
    uint64_t last_used = 0;
  };
  using Key = std::pair<uid_t, std::string>;
  std::mutex mu_;
  std::map<Key, Entry> entries_;      // guarded by mu_
  std::map<Key, std::string> names_;  // (uid, name) -> session id; guarded by mu_
  uint64_t clock_ = 0;                // guarded by mu_
};

}  // namespace kvkeep::openai
