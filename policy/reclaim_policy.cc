#include "policy/reclaim_policy.h"

#include <algorithm>
#include <string>

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

void OrderByClass(const ReclaimRequest& request, std::span<const SessionReclaimInfo> candidates,
                  std::vector<ReclaimVictim>* victims) {
  const int tier = static_cast<int>(request.tier);
  struct Ranked {
    VictimClass victim_class;
    double key0;
    int64_t key1;
    const SessionReclaimInfo* info;
  };
  std::vector<Ranked> ranked;
  ranked.reserve(candidates.size());
  for (const SessionReclaimInfo& c : candidates) {
    if (c.running || c.blocks_on_tier[tier] <= 0) continue;
    if (!c.pinned) {
      ranked.push_back({VictimClass::kUnpinned, c.retention_priority, c.last_use_us, &c});
    } else {
      const bool expired = c.pin_deadline_us <= request.now_us;
      ranked.push_back({expired ? VictimClass::kExpiredPin : VictimClass::kLivePin,
                        static_cast<double>(c.pin_deadline_us), c.last_use_us, &c});
    }
  }
  std::stable_sort(ranked.begin(), ranked.end(), [](const Ranked& a, const Ranked& b) {
    if (a.victim_class != b.victim_class) return a.victim_class < b.victim_class;
    if (a.key0 != b.key0) return a.key0 < b.key0;
    return a.key1 < b.key1;
  });
  int64_t covered = 0;
  for (const Ranked& r : ranked) {
    if (covered >= request.shortfall_blocks) break;
    victims->push_back({r.info->session, r.victim_class});
    covered += r.info->blocks_on_tier[tier];
  }
}

namespace {

class LruReclaimPolicy final : public ReclaimPolicy {
 public:
  std::string_view name() const override { return "lru"; }
  bool reuses_across_requests() const override { return true; }
  bool retains_sessions() const override { return true; }
  void OnHint(const SessionHint& hint, SessionReclaimInfo* info) override {
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
    }
    OrderByClass(request, plain, victims);
  }
};

class NoneReclaimPolicy final : public ReclaimPolicy {
 public:
  std::string_view name() const override { return "none"; }
  bool reuses_across_requests() const override { return false; }
  bool retains_sessions() const override { return false; }
  void OnHint(const SessionHint&, SessionReclaimInfo*) override {}
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

Result<std::unique_ptr<ReclaimPolicy>> NewReclaimPolicy(std::string_view name) {
  if (name == "lru") return NewLruReclaimPolicy();
  if (name == "none") return NewNoneReclaimPolicy();
  return Status::InvalidArgument("unknown reclaim policy '" + std::string(name) +
                                 "' (expected lru or none)");
}

}  // namespace kvkeep
