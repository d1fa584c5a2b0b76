// ReclaimPolicy: the order in which the cache reclaims KV when a tier runs short. The
// mechanism lives in cache/ and engine/ (a pool reports a shortfall of k blocks; the
// reclaimer releases the victims it is given, and each released block is demoted one tier
// down before its slot is reused, dropped only at the bottom). This interface only
// decides *who* goes first, over plain structs, so a policy is unit-tested with a fake
// clock and no cache at all. docs/policy.md ("Reclaim policies") describes it.
//
// Vocabulary:
//   session    a conversation whose block table the engine retains between turns.
//   running    a session with a sequence in the current batch: never a victim (the engine
//              preempts whole sequences instead; that is not a reclaim decision).
//   pin        a retention promise with a deadline (a tool wait the TTL policy expects to
//              end before pin_deadline_us). A live pin is reclaimed only as a last resort
//              and each such victim is reported as a violation.
//   priority   an unpinned session's order: retention_priority (session.retain hints,
//              higher is kept longer), then gdsf_priority (a Greedy-Dual-Size-Frequency H
//              value, GdsfClock), then last use; lower goes first.
//
// The victim order every policy uses is OrderByClass() (docs/policy.md, "Reclaim order"):
//   1. unpinned retained sessions by (retention_priority, gdsf_priority, last_use_us);
//   2. expired pins, oldest deadline first;
//   3. live pins, least pin_benefit_s per block per second left to the deadline first
//      (then deadline): each a violation.
// Ties break by session id, so the order is total. Policies differ only in the fields
// they fill in (lru clears pins and priorities; ttl sets pins, benefits and H values).
//
// Thread-safety: implementations are called by the engine thread only; none is shared.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "base/status.h"

namespace kvkeep {

// Where a block's bytes live. Demotion moves a block to the next larger value.
enum class Tier : uint8_t { kDevice = 0, kHost = 1, kDisk = 2 };
inline constexpr int kNumTiers = 3;
std::string_view TierName(Tier tier);

using SessionId = uint64_t;

// What the engine knows about one retained (or running) session when it asks for victims.
struct SessionReclaimInfo {
  SessionId session = 0;
  bool running = false;               // in the current batch: never a victim
  int32_t blocks_on_tier[kNumTiers];  // blocks the session alone holds, per tier
  int64_t last_use_us = 0;            // end of its last turn (Clock::NowMicros)
  bool pinned = false;                // a retention pin is set ...
  int64_t pin_deadline_us = 0;        // ... until this time (expired when <= now_us)
  double retention_priority = 0;      // higher = keep longer; set by the policy's hints
  double rebuild_cost_us = 0;         // estimated time to recompute its KV
  double gdsf_priority = 0;           // H from GdsfClock at its last use (0: plain recency)
  double pin_benefit_s = 0;           // a live pin's expected saving, F(ttl) * B
  int64_t context_tokens = 0;         // KV tokens the session holds (prices a rebuild)
  int64_t use_count = 0;              // turns it has finished (GDSF frequency)
  bool pin_from_hint = false;         // the pin came from session.retain: a learned pin
                                      // does not replace it while it is live
  bool pin_is_grace = false;          // the pin is a turn-end grace pin (until tool_begin)
  int64_t tool_calls = 0;             // tool_begin hints seen (a session that uses tools)
};

// One reclaim question: tier `tier` needs `shortfall_blocks` more free blocks at now_us.
struct ReclaimRequest {
  Tier tier = Tier::kDevice;
  int32_t shortfall_blocks = 0;
  int64_t now_us = 0;
};

// Why a session was chosen; the engine counts kLivePin victims as pin violations.
enum class VictimClass : uint8_t { kUnpinned = 0, kExpiredPin = 1, kLivePin = 2 };

struct ReclaimVictim {
  SessionId session = 0;
  VictimClass victim_class = VictimClass::kUnpinned;
};

// Retention hints from the daemon, drained on the engine thread.
struct SessionHint {
  enum class Kind : uint8_t { kToolBegin, kToolEnd, kClose, kRetain };
  Kind kind = Kind::kToolBegin;
  SessionId session = 0;
  int64_t at_us = 0;
  int64_t retain_until_us = 0;  // kRetain: pin until this time; kToolBegin: expected end
  double priority = 0;          // kRetain: retention priority
  std::string tool_key;         // kToolBegin, kToolEnd: policy/tool_key.h ToolKey
  int64_t duration_us = -1;     // kToolEnd: how long the tool ran (< 0: unknown)
};

// The engine's load as a policy sees it when a hint arrives.
struct EngineLoad {
  int64_t device_total_blocks = 0;
  int64_t device_free_blocks = 0;  // free or cached (allocatable) device blocks
  bool host_has_room = false;      // the engine has a host tier ...
  bool disk_has_room = false;      // ... a disk tier
  // Free slots on each tier (< 0: unknown). A session is priced as reloadable from a tier
  // only if its blocks fit there without pushing other sessions' KV down.
  int64_t host_free_blocks = -1;
  int64_t disk_free_blocks = -1;
  int64_t queued_prefill_tokens = 0;  // prefill tokens waiting for admission now
};

class ReclaimPolicy {
 public:
  virtual ~ReclaimPolicy() = default;
  virtual std::string_view name() const = 0;
  // False for "none": nothing is matched, committed or retained across requests.
  virtual bool reuses_across_requests() const = 0;
  // Whether a session's table is kept after its turn (the cache may still reclaim it).
  virtual bool retains_sessions() const = 0;

  // Called once per hint, in arrival order, on the engine thread. The policy may record
  // pins or priorities; the engine stores the outcome in the SessionReclaimInfo it passes
  // to Order. *info is the session's current state (blocks_on_tier and context_tokens
  // filled in); load is the engine's now. REQUIRES: info->session == hint.session.
  virtual void OnHint(const SessionHint& hint, const EngineLoad& load,
                      SessionReclaimInfo* info) = 0;
  // A turn of the session finished and its table is retained (info->use_count, blocks and
  // last_use_us already updated). Default: nothing.
  virtual void OnRetain(SessionReclaimInfo* info) { (void)info; }
  // A victim of Order was released. Default: nothing.
  virtual void OnReclaimed(const SessionReclaimInfo& info) { (void)info; }
  // Whether waiting turns are admitted in program order (policy/admission_order.h) rather
  // than FCFS.
  virtual bool program_aware_admission() const { return false; }
  // The TTL the policy last chose per tool key (empty for policies that do not pin).
  virtual std::vector<std::pair<std::string, double>> LastTtls() const { return {}; }

  // Appends to *victims the candidates in the order they should be reclaimed, until their
  // blocks on request.tier cover request.shortfall_blocks (or all are listed). Running
  // sessions and sessions with no block on the tier are never listed. The engine releases
  // victims in this order and stops as soon as the shortfall is covered.
  virtual void Order(const ReclaimRequest& request, std::span<const SessionReclaimInfo> candidates,
                     std::vector<ReclaimVictim>* victims) const = 0;
};

// The one victim order (above). Stops once the listed blocks on request.tier cover the
// shortfall.
void OrderByClass(const ReclaimRequest& request, std::span<const SessionReclaimInfo> candidates,
                  std::vector<ReclaimVictim>* victims);
const char* VictimClassName(VictimClass c);

// The GDSF aging clock L: H = L + uses * rebuild_cost_s / blocks. L rises to the H of each
// victim, so long-idle sessions age out while ones expensive to rebuild per block stay
// longer than plain recency says. A value owned by one policy (engine thread).
class GdsfClock {
 public:
  double value() const { return clock_; }
  // A session's priority after a use: L + max(uses, 1) * rebuild_cost_s / max(blocks, 1).
  double PriorityOnUse(int64_t use_count, double rebuild_cost_s, int64_t blocks) const;
  // A victim was reclaimed: L rises to its priority (never falls).
  void OnReclaim(double victim_priority);

 private:
  double clock_ = 0;
};

// "lru": retains sessions, ignores pins and priorities (every pin counts as unpinned), and
// reclaims the least recently used session first. Blocks outside any session are
// reclaimed by the pool in block LRU order before any session is asked for.
std::unique_ptr<ReclaimPolicy> NewLruReclaimPolicy();
// "none": no reuse across requests; nothing is retained, so Order never lists anyone.
std::unique_ptr<ReclaimPolicy> NewNoneReclaimPolicy();
// The factory for every policy (lru, none, ttl, ttl-fcfs, fixed-ttl) is in
// policy/policy_factory.h.

}  // namespace kvkeep
