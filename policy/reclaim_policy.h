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
//   priority   retention priority of an unpinned session: lower goes first. LRU uses the
//              last use time; a Greedy-Dual-Size-Frequency policy uses its H value, which
//              can fold in rebuild_cost_us and the session's size.
//
// The canonical victim order, which ReclaimPolicy::Order must produce for a policy that
// pins ("unpinned retained sessions by priority, then expired pins, then live pins"), is
// provided as OrderByClass() so policies share one implementation of it.
//
// Thread-safety: implementations are called by the engine thread only; none is shared.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>
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
  // to Order. *info is the session's current state; REQUIRES: info->session == hint.session.
  virtual void OnHint(const SessionHint& hint, SessionReclaimInfo* info) = 0;

  // Appends to *victims the candidates in the order they should be reclaimed, until their
  // blocks on request.tier cover request.shortfall_blocks (or all are listed). Running
  // sessions and sessions with no block on the tier are never listed. The engine releases
  // victims in this order and stops as soon as the shortfall is covered.
  virtual void Order(const ReclaimRequest& request, std::span<const SessionReclaimInfo> candidates,
                     std::vector<ReclaimVictim>* victims) const = 0;
};

// The shared ordering: unpinned sessions by ascending (retention_priority, last_use_us),
// then expired pins by ascending deadline, then live pins by ascending deadline (each
// marked kLivePin). Stops once the listed blocks on request.tier cover the shortfall.
void OrderByClass(const ReclaimRequest& request, std::span<const SessionReclaimInfo> candidates,
                  std::vector<ReclaimVictim>* victims);

// "lru": retains sessions, ignores pins and priorities (every pin counts as unpinned), and
// reclaims the least recently used session first. Blocks outside any session are
// reclaimed by the pool in block LRU order before any session is asked for.
std::unique_ptr<ReclaimPolicy> NewLruReclaimPolicy();
// "none": no reuse across requests; nothing is retained, so Order never lists anyone.
std::unique_ptr<ReclaimPolicy> NewNoneReclaimPolicy();
// "lru" or "none"; InvalidArgument otherwise.
Result<std::unique_ptr<ReclaimPolicy>> NewReclaimPolicy(std::string_view name);

}  // namespace kvkeep
