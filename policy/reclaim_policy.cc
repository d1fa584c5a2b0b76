#include "policy/reclaim_policy.h"

#include <algorithm>
#include <string>
#include <tuple>

namespace kvkeep {

std::string_view TierName(Tier tier) {
  switch (tier) {
    case Tier::kDevice:
      return "device";
    case Tier::kHost:
      return "host";
    case Tier::kDisk:
      return "disk";
  }
  return "unknown";
}

const char* VictimClassName(VictimClass c) {
  switch (c) {
    case VictimClass::kUnpinned:
      return "unpinned";
    case VictimClass::kExpiredPin:
      return "expired_pin";
    case VictimClass::kLivePin:
      return "live_pin";
  }
  return "unknown";
}

void OrderByClass(const ReclaimRequest& request, std::span<const SessionReclaimInfo> candidates,
                  std::vector<ReclaimVictim>* victims) {
  const int tier = static_cast<int>(request.tier);
  // One sort key per candidate: (class, k1, k2, k3, session).
  //   unpinned:    retention_priority, gdsf_priority, last_use_us
  //   expired pin: deadline
  //   live pin:    benefit per block per second to its deadline, deadline
  struct Ranked {
    std::tuple<VictimClass, double, double, int64_t, SessionId> key;
    int32_t blocks;
  };
  std::vector<Ranked> ranked;
  ranked.reserve(candidates.size());
  for (const SessionReclaimInfo& c : candidates) {
    const int32_t blocks = c.blocks_on_tier[tier];
    if (c.running || blocks <= 0) continue;
    if (!c.pinned) {
      ranked.push_back({{VictimClass::kUnpinned, c.retention_priority, c.gdsf_priority,
                         c.last_use_us, c.session},
                        blocks});
    } else if (c.pin_deadline_us <= request.now_us) {
      ranked.push_back({{VictimClass::kExpiredPin, 0, 0, c.pin_deadline_us, c.session}, blocks});
    } else {
      // What keeping the pin saves per block-second still held: a pin near its deadline
      // costs few more block-seconds, one far from it many.
      const double remaining_s =
          std::max(1e-3, static_cast<double>(c.pin_deadline_us - request.now_us) / 1e6);
      ranked.push_back({{VictimClass::kLivePin, c.pin_benefit_s / blocks / remaining_s, 0,
                         c.pin_deadline_us, c.session},
                        blocks});
    }
  }
  std::sort(ranked.begin(), ranked.end(),
            [](const Ranked& a, const Ranked& b) { return a.key < b.key; });
  int64_t covered = 0;
  for (const Ranked& r : ranked) {
    if (covered >= request.shortfall_blocks) break;
    victims->push_back({std::get<4>(r.key), std::get<0>(r.key)});
    covered += r.blocks;
  }
}

double GdsfClock::PriorityOnUse(int64_t use_count, double rebuild_cost_s, int64_t blocks) const {
  return clock_ + static_cast<double>(std::max<int64_t>(use_count, 1)) * rebuild_cost_s /
                      static_cast<double>(std::max<int64_t>(blocks, 1));
}

void GdsfClock::OnReclaim(double victim_priority) { clock_ = std::max(clock_, victim_priority); }

namespace {

class LruReclaimPolicy final : public ReclaimPolicy {
 public:
  std::string_view name() const override { return "lru"; }
  bool reuses_across_requests() const override { return true; }
  bool retains_sessions() const override { return true; }
  void OnHint(const SessionHint& hint, const EngineLoad&, SessionReclaimInfo* info) override {
    if (hint.kind == SessionHint::Kind::kToolEnd || hint.kind == SessionHint::Kind::kToolBegin) {
      info->last_use_us = std::max(info->last_use_us, hint.at_us);  // activity is a use
    }
  }
  void Order(const ReclaimRequest& request, std::span<const SessionReclaimInfo> candidates,
             std::vector<ReclaimVictim>* victims) const override {
    // LRU ignores pins and priorities: rank everyone as unpinned by last use.
    std::vector<SessionReclaimInfo> plain(candidates.begin(), candidates.end());
    for (SessionReclaimInfo& c : plain) {
      c.pinned = false;
      c.retention_priority = 0;
      c.gdsf_priority = 0;
    }
    OrderByClass(request, plain, victims);
  }
};

class NoneReclaimPolicy final : public ReclaimPolicy {
 public:
  std::string_view name() const override { return "none"; }
  bool reuses_across_requests() const override { return false; }
  bool retains_sessions() const override { return false; }
  void OnHint(const SessionHint&, const EngineLoad&, SessionReclaimInfo*) override {}
  void Order(const ReclaimRequest&, std::span<const SessionReclaimInfo>,
             std::vector<ReclaimVictim>*) const override {}
};

}  // namespace

std::unique_ptr<ReclaimPolicy> NewLruReclaimPolicy() {
  return std::make_unique<LruReclaimPolicy>();
}
std::unique_ptr<ReclaimPolicy> NewNoneReclaimPolicy() {
  return std::make_unique<NoneReclaimPolicy>();
}

}  // namespace kvkeep
