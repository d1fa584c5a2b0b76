#include "policy/reclaim_order.h"

#include <algorithm>
#include <tuple>

namespace kvkeep {

const char* ReclaimClassName(ReclaimClass c) {
  switch (c) {
    case ReclaimClass::kUnpinned:
      return "unpinned";
    case ReclaimClass::kExpiredPin:
      return "expired_pin";
    case ReclaimClass::kLivePin:
      return "live_pin";
  }
  return "?";
}

std::vector<ReclaimChoice> OrderReclaimVictims(const ReclaimQuery& query,
                                               std::span<const ReclaimCandidate> candidates) {
  std::vector<const ReclaimCandidate*> unpinned, expired, live;
  for (const ReclaimCandidate& c : candidates) {
    if (c.running || c.blocks <= 0) continue;
    if (!c.pinned) {
      unpinned.push_back(&c);
    } else if (c.pin_deadline_us <= query.now_us) {
      expired.push_back(&c);
    } else {
      live.push_back(&c);
    }
  }
  std::sort(unpinned.begin(), unpinned.end(), [](const auto* a, const auto* b) {
    return std::tie(a->retention_priority, a->gdsf_priority, a->last_use_us, a->session) <
           std::tie(b->retention_priority, b->gdsf_priority, b->last_use_us, b->session);
  });
  std::sort(expired.begin(), expired.end(), [](const auto* a, const auto* b) {
    return std::tie(a->pin_deadline_us, a->session) < std::tie(b->pin_deadline_us, b->session);
  });
  auto per_block = [](const ReclaimCandidate* c) {
    return c->pin_benefit_s / static_cast<double>(c->blocks);
  };
  std::sort(live.begin(), live.end(), [&](const auto* a, const auto* b) {
    const double pa = per_block(a), pb = per_block(b);
    return pa != pb ? pa < pb : a->session < b->session;
  });
  std::vector<ReclaimChoice> out;
  int64_t covered = 0;
  auto take = [&](const std::vector<const ReclaimCandidate*>& list, ReclaimClass cls) {
    for (const ReclaimCandidate* c : list) {
      if (covered >= query.shortfall_blocks) return;
      out.push_back({c->session, cls, c->blocks});
      covered += c->blocks;
    }
  };
  take(unpinned, ReclaimClass::kUnpinned);
  take(expired, ReclaimClass::kExpiredPin);
  if (query.allow_live_pins) take(live, ReclaimClass::kLivePin);
  return out;
}

double GdsfClock::PriorityOnUse(int64_t use_count, double rebuild_cost_s, int64_t blocks) const {
  return clock_ + static_cast<double>(std::max<int64_t>(use_count, 1)) * rebuild_cost_s /
                      static_cast<double>(std::max<int64_t>(blocks, 1));
}

void GdsfClock::OnReclaim(double victim_priority) { clock_ = std::max(clock_, victim_priority); }

}  // namespace kvkeep
