// RetentionBook: the pins a session holds, learned (the TTL rule on tool_begin) or asked
// for (`session.retain {session, ttl_s, priority?}`), and the per-uid quota on blocks
// pinned by hints (docs/policy.md, "Retention hints").
//
//   - A hint pins the session for ttl_s with its priority; it overrides a learned pin and
//     is not replaced by one until it ends.
//   - ttl_s 0 releases the session's pin, whatever set it.
//   - Blocks pinned by hints count against the owner uid's quota; a hint that would pass
//     it fails with ResourceExhausted naming the quota, and changes nothing. The caller
//     gives the blocks a pin holds (kvkeepd: the engine's retained blocks, refreshed with
//     RefreshHintBlocks before each hint); a pin is not cut when its session grows past
//     the quota later, but the growth counts against the uid's next hints.
//   - A session is owned by the uid that first pinned it; another uid gets NotFound.
// Expired pins stay in the book (the reclaimer takes them after unpinned sessions) until
// Release or Forget.
//
// Thread-safety: not thread-safe; the engine thread owns it.
// Ownership: does not own the clock.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <optional>
#include <string>

#include "base/clock.h"
#include "base/status.h"

namespace kvkeep {

struct RetentionOptions {
  int64_t max_hint_pinned_blocks_per_uid = 1 << 20;  // --retain-quota-blocks
  double max_hint_ttl_s = 3600;                      // longer hints are refused
};

struct Pin {
  enum class Source { kLearned, kHint };
  uint32_t owner_uid = 0;
  Source source = Source::kLearned;
  int64_t deadline_us = 0;
  double priority = 0;
  int64_t blocks = 0;
};

class RetentionBook {
 public:
  RetentionBook(const RetentionOptions& options, const Clock* clock);

  // session.retain. ttl_s 0 releases. InvalidArgument for a negative, non-finite or too
  // long ttl_s; ResourceExhausted past the quota; NotFound for another uid's session.
  Status Retain(uint32_t uid, const std::string& session, double ttl_s, double priority,
                int64_t blocks);
  // The TTL rule's pin on tool_begin; a live hint pin wins (returns false, nothing changes).
  bool PinLearned(uint32_t uid, const std::string& session, double ttl_s, int64_t blocks);
  // tool_end within the pin, or ttl_s 0: the pin is gone.
  void Release(const std::string& session);
  // The session's blocks changed (a turn grew it).
  void UpdateBlocks(const std::string& session, int64_t blocks);
  // Sets the blocks of each of uid's live hint pins to held(session): what the pin holds
  // now (the engine's count), so the quota counts real blocks, not the blocks of the
  // session's size when it was pinned.
  void RefreshHintBlocks(uint32_t uid, const std::function<int64_t(const std::string&)>& held);

  std::optional<Pin> Get(const std::string& session) const;
  bool IsLive(const std::string& session) const;
  int64_t HintPinnedBlocks(uint32_t uid) const;
  int64_t PinnedBlocks() const;  // all live pins
  const RetentionOptions& options() const { return options_; }

 private:
  RetentionOptions options_;
  const Clock* clock_;
  std::map<std::string, Pin> pins_;
};

}  // namespace kvkeep
