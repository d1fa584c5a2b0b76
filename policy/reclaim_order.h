// The TTL policy's reclaim order, as a pure function over plain candidate structs
// (docs/policy.md, "Reclaim order"). When a tier is short of blocks, victims are listed:
//   1. unpinned retained sessions (no pin, not running), by ascending
//      (retention_priority, gdsf_priority, last_use_us): a Greedy-Dual-Size-Frequency
//      priority, H = L + uses * rebuild_cost_s / blocks, where L is an aging clock that
//      rises to the H of each victim (GdsfClock), so long-idle sessions age out while
//      ones that are expensive to rebuild per block stay longer than plain recency says;
//   2. then sessions whose pin has expired, oldest deadline first;
//   3. then, only under hard pressure (ReclaimQuery::allow_live_pins), live pins, least
//      pin benefit per block first; each is a pin violation.
// Running sessions and sessions with no block on the tier are never listed. The list
// stops once its blocks cover the shortfall. Ties break by session id, so the order is
// total and deterministic.
//
// It plugs into the reclaim interface of policy/reclaim_policy.h (SessionReclaimInfo):
// the fields below are that struct's (one tier's blocks) plus gdsf_priority and pin_benefit_s.
//
// Thread-safety: pure functions; GdsfClock is a value owned by one thread.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

namespace kvkeep {

struct ReclaimCandidate {
  uint64_t session = 0;
  bool running = false;           // in the current batch: never a victim
  int64_t blocks = 0;             // blocks it alone holds on the tier being reclaimed
  int64_t last_use_us = 0;        // end of its last turn
  bool pinned = false;            // a pin is set ...
  int64_t pin_deadline_us = 0;    // ... until then (expired when <= now_us)
  double retention_priority = 0;  // from session.retain hints: higher is kept longer
  double gdsf_priority = 0;       // H from GdsfClock::PriorityOnUse at its last use
  double pin_benefit_s = 0;       // a live pin's expected saving, F(remaining) * B
};

enum class ReclaimClass { kUnpinned, kExpiredPin, kLivePin };
const char* ReclaimClassName(ReclaimClass c);

struct ReclaimChoice {
  uint64_t session = 0;
  ReclaimClass reclaim_class = ReclaimClass::kUnpinned;
  int64_t blocks = 0;
  bool is_violation() const { return reclaim_class == ReclaimClass::kLivePin; }
};

struct ReclaimQuery {
  int64_t now_us = 0;
  int64_t shortfall_blocks = 0;
  bool allow_live_pins = false;  // hard pressure: nothing else can cover the shortfall
};

std::vector<ReclaimChoice> OrderReclaimVictims(const ReclaimQuery& query,
                                               std::span<const ReclaimCandidate> candidates);

// The GDSF aging clock L.
class GdsfClock {
 public:
  double value() const { return clock_; }
  // A session's priority after a use: L + uses * rebuild_cost_s / max(blocks, 1).
  double PriorityOnUse(int64_t use_count, double rebuild_cost_s, int64_t blocks) const;
  // A victim was reclaimed: L rises to its priority (never falls).
  void OnReclaim(double victim_priority);

 private:
  double clock_ = 0;
};

}  // namespace kvkeep
