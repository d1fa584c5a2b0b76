// EngineImpl as the lower tiers' TierVictimChooser: the host and disk tiers reclaim whole
// sessions in the order the device tier uses (the policy's Order, i.e. OrderByClass).
// Engine thread only (the pool calls it from Allocate and PlanDiskLoads).
#include <algorithm>

#include "engine/engine_impl.h"

namespace kvkeep {

void EngineImpl::ChooseTierVictims(const ReclaimRequest& request,
                                   std::span<const TierHolder> holders,
                                   std::vector<SessionId>* victims) {
  // A turn waiting, loading or running, or tool_end reads being planned.
  auto running = [this](SessionId s) {
    return (planning_session_ != 0 && s == planning_session_) ||
           std::binary_search(in_flight_sessions_.begin(), in_flight_sessions_.end(), s);
  };
  const int tier = static_cast<int>(request.tier);
  std::vector<SessionReclaimInfo> known;
  known.reserve(holders.size());
  for (const TierHolder& h : holders) {
    const SessionReclaimInfo* info = nullptr;
    if (auto r = retained_.find(h.session); r != retained_.end()) {
      info = &r->second.info;
    } else if (auto s = session_info_.find(h.session); s != session_info_.end()) {
      info = &s->second;
    }
    if (info == nullptr) {  // closed: nobody will ask for it again
      if (!running(h.session)) victims->push_back(h.session);
      continue;
    }
    SessionReclaimInfo c = *info;
    c.session = h.session;
    c.running = running(h.session);
    for (int32_t& b : c.blocks_on_tier) b = 0;
    c.blocks_on_tier[tier] = h.blocks;
    known.push_back(c);
  }
  std::vector<ReclaimVictim> ordered;
  reclaim_policy_->Order({request.tier, request.shortfall_blocks, clock_->NowMicros()}, known,
                         &ordered);
  for (const ReclaimVictim& v : ordered) victims->push_back(v.session);
}

}  // namespace kvkeep
