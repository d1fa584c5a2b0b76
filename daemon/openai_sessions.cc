#include "daemon/openai_sessions.h"

#include <iterator>

#include "base/hash64.h"

namespace kvkeep::openai {
namespace {

// Length of the common prefix of two chains: equal chained hashes at i mean equal
// messages 0..i, so equality is monotone and binary search finds the divergence.
size_t SharedLength(const std::vector<uint64_t>& a, const std::vector<uint64_t>& b) {
  size_t lo = 0, hi = std::min(a.size(), b.size());
  while (lo < hi) {
    const size_t mid = (lo + hi + 1) / 2;
    if (a[mid - 1] == b[mid - 1]) {
      lo = mid;
    } else {
      hi = mid - 1;
    }
  }
  return lo;
}

}  // namespace

uint64_t ChainNext(uint64_t prev, uint64_t key) { return SplitMix64(Mix64(prev) ^ key); }

std::vector<uint64_t> ChainKeys(const std::vector<uint64_t>& keys) {
  std::vector<uint64_t> chain;
  chain.reserve(keys.size());
  uint64_t h = 0;
  for (uint64_t k : keys) {
    h = ChainNext(h, k);
    chain.push_back(h);
  }
  return chain;
}

std::optional<Match> SessionMatcher::Acquire(uid_t uid, const std::string& name,
                                             const std::vector<uint64_t>& chain) {
  std::lock_guard<std::mutex> lock(mu_);
  Match m;
  auto take = [&](const std::string& id, Entry& e) {
    m.kind = Match::Kind::kContinue;
    m.session_id = id;
    m.stored = e.chain.size();
    m.reopen = !e.open;
    m.pending_tools = e.pending_tools;
    m.pending_text = e.pending_text;
    e.busy = true;
    e.open = true;
    e.last_used = ++clock_;
  };
  if (!name.empty()) {
    auto n = names_.find({uid, name});
    if (n == names_.end()) return m;
    auto it = entries_.find({uid, n->second});
    if (it == entries_.end()) return m;
    Entry& e = it->second;
    const size_t shared = SharedLength(e.chain, chain);
    if (shared == e.chain.size()) {
      if (e.busy) return std::nullopt;
      take(n->second, e);
      return m;
    }
    m.kind = Match::Kind::kFork;
    m.session_id = n->second;
    m.shared = shared;
    return m;
  }
  Entry* best = nullptr;
  const std::string* best_id = nullptr;
  size_t best_full = 0, best_partial = 0;
  const std::string* partial_id = nullptr;
  for (auto it = entries_.lower_bound({uid, ""}); it != entries_.end() && it->first.first == uid;
       ++it) {
    Entry& e = it->second;
    const size_t shared = SharedLength(e.chain, chain);
    if (shared == 0) continue;
    if (shared == e.chain.size() && !e.busy && shared > best_full) {
      best_full = shared;
      best = &e;
      best_id = &it->first.second;
    } else if (shared > best_partial) {
      best_partial = shared;
      partial_id = &it->first.second;
    }
  }
  if (best != nullptr) {
    take(*best_id, *best);
  } else if (partial_id != nullptr) {
    m.kind = Match::Kind::kFork;
    m.session_id = *partial_id;
    m.shared = best_partial;
  }
  return m;
}

void SessionMatcher::Release(uid_t uid, const std::string& id, const std::string& name,
                             std::vector<uint64_t> chain, int pending_tools, bool pending_text) {
  std::lock_guard<std::mutex> lock(mu_);
  Entry& e = entries_[{uid, id}];
  e.chain = std::move(chain);
  e.busy = false;
  e.open = true;
  e.pending_tools = pending_tools;
  e.pending_text = pending_text;
  e.last_used = ++clock_;
  if (!name.empty()) names_[{uid, name}] = id;
}

void SessionMatcher::Abandon(uid_t uid, const std::string& id) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = entries_.find({uid, id});
  if (it != entries_.end()) it->second.busy = false;
}

void SessionMatcher::Forget(uid_t uid, const std::string& id) {
  std::lock_guard<std::mutex> lock(mu_);
  entries_.erase({uid, id});
  for (auto it = names_.begin(); it != names_.end();) {
    it = it->first.first == uid && it->second == id ? names_.erase(it) : std::next(it);
  }
}

std::optional<std::string> SessionMatcher::EvictionCandidate(uid_t uid) {
  std::lock_guard<std::mutex> lock(mu_);
  const std::string* id = nullptr;
  uint64_t oldest = UINT64_MAX;
  for (auto it = entries_.lower_bound({uid, ""}); it != entries_.end() && it->first.first == uid;
       ++it) {
    if (it->second.open && !it->second.busy && it->second.last_used < oldest) {
      oldest = it->second.last_used;
      id = &it->first.second;
    }
  }
  if (id == nullptr) return std::nullopt;
  return *id;
}

void SessionMatcher::MarkClosed(uid_t uid, const std::string& id) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = entries_.find({uid, id});
  if (it != entries_.end()) it->second.open = false;
}

}  // namespace kvkeep::openai
