// EngineImpl's sessions and policy: retained tables between turns, hints, pins, the
// reclaimer the scheduler calls, program-aware admission and policy switches. Engine
// thread only (docs/policy.md, "In the engine").
#include <spdlog/spdlog.h>

#include <algorithm>

#include "engine/engine_impl.h"

namespace kvkeep {

void EngineImpl::SwitchPolicy(const PolicyOptions& options) {
  Result<std::unique_ptr<ReclaimPolicy>> policy = NewReclaimPolicy(options, &tool_stats_);
  if (!policy.ok()) {  // SetPolicy and Create validated the name: keep the running one
    spdlog::error("engine: policy {} not applied: {}", options.name, policy.status().ToString());
    return;
  }
  if (reclaim_policy_ != nullptr) {
    spdlog::info("engine: policy {} -> {}; {} retained sessions keep their pins",
                 reclaim_policy_->name(), options.name, retained_.size());
  }
  // Retained sessions, their pins and priorities live in the engine's SessionReclaimInfo
  // records, not in the policy, so they carry over unchanged. The samples stay; the tool
  // statistics' knobs (prior, min samples, window) are the new options'.
  reclaim_policy_ = std::move(*policy);
  tool_stats_.SetOptions(options.tool_stats);
  tool_stats_dirty_ = true;
}

EngineLoad EngineImpl::CurrentLoad() const {
  EngineLoad load;
  load.device_total_blocks = pool_.num_blocks();
  load.device_free_blocks = pool_.num_allocatable();
  load.host_has_room = options_.num_host_blocks > 0;
  load.disk_has_room = disk_store_ != nullptr;
  const BlockPoolStats pool = pool_.stats();
  load.host_free_blocks = pool.host_total - pool.host_used;
  load.disk_free_blocks = pool.disk_total - pool.disk_used;
  load.queued_prefill_tokens = scheduler_.waiting_tokens();
  return load;
}

void EngineImpl::Retain(Sequence* seq) {
  const SessionId session = seq->request.session;
  if (session == 0 || !reclaim_policy_->retains_sessions() || !seq->table.num_blocks()) return;
  ReleaseSession(session);  // a turn that raced another of the same session
  if (disk_worker_ != nullptr) {
    const int64_t kv_tokens = seq->table.num_tokens();
    last_context_[session] = {
        std::vector<int32_t>(seq->tokens.begin(), seq->tokens.begin() + kv_tokens),
        seq->table.scope()};
  }
  RetainedSession r;
  r.table = std::move(seq->table);
  seq->table = BlockTable(pool_.block_size(), r.table.scope());
  auto it = session_info_.find(session);
  if (it != session_info_.end()) r.info = it->second;
  r.info.session = session;
  r.info.last_use_us = clock_->NowMicros();
  r.info.blocks_on_tier[0] = r.table.num_blocks();
  r.info.context_tokens = r.table.num_tokens();
  ++r.info.use_count;
  reclaim_policy_->OnRetain(&r.info);
  if (r.info.pinned && r.info.pin_is_grace) ++grace_pins_granted_;
  const uint64_t tenant = r.table.scope().tenant_salt;
  SetRetainedBlocks(session, r.table.num_blocks());
  retained_.emplace(session, std::move(r));
  TrimTenant(tenant, /*leaving=*/seq);
}

void EngineImpl::SetRetainedBlocks(SessionId session, int64_t blocks) {
  std::lock_guard<std::mutex> lock(retained_blocks_mu_);
  if (blocks > 0) {
    retained_blocks_[session] = blocks;
  } else {
    retained_blocks_.erase(session);
  }
}

int64_t EngineImpl::RetainedBlocks(SessionId session) const {
  std::lock_guard<std::mutex> lock(retained_blocks_mu_);
  const auto it = retained_blocks_.find(session);
  return it == retained_blocks_.end() ? 0 : it->second;
}

void EngineImpl::ReleaseSession(SessionId session, bool evict_first) {
  auto it = retained_.find(session);
  if (it == retained_.end()) return;
  pool_.SetOwner(it->second.table, session);  // lower tiers reclaim it as one
  // Its blocks become cached (and demotable).
  if (evict_first) {
    pool_.FreeAsLeastRecentlyUsed(&it->second.table);
  } else {
    pool_.Free(&it->second.table);
  }
  session_info_[session] = it->second.info;
  retained_.erase(it);
}

void EngineImpl::BeginTurn(SessionId session, Sequence* seq) {
  auto [arrival, first] = program_arrival_us_.try_emplace(session, seq->submit_us);
  seq->program_arrival_us = arrival->second;
  ReleaseSession(session);
  TrimTenant(seq->table.scope().tenant_salt);  // room for this turn's bound
  // Disk reads tool_end started for this session: the turn waits for them like its own.
  if (auto p = promoting_.find(session); p != promoting_.end()) {
    if (outstanding_disk_reads_ > 0) seq->disk_blocks_loaded += p->second;
    promoting_.erase(p);
  }
  auto it = session_info_.find(session);
  if (it == session_info_.end()) return;
  SessionReclaimInfo& info = it->second;
  seq->returning_pinned =
      info.pinned && !info.pin_is_grace && info.pin_deadline_us > seq->submit_us;
  // A learned (or grace) pin covers one tool wait; a session.retain pin lasts until its
  // deadline.
  if (info.pinned && !info.pin_from_hint) info.pinned = info.pin_is_grace = false;
}

void EngineImpl::ApplyHints(std::vector<SessionHint> hints) {
  if (hints.empty()) return;
  const EngineLoad load = CurrentLoad();
  for (const SessionHint& h : hints) ApplyHint(h, load);
}

void EngineImpl::ApplyHint(const SessionHint& h, const EngineLoad& load) {
  if (h.kind == SessionHint::Kind::kClose) {
    ReleaseSession(h.session);
    SetRetainedBlocks(h.session, 0);
    session_info_.erase(h.session);
    program_arrival_us_.erase(h.session);
    last_context_.erase(h.session);
    promoting_.erase(h.session);
    episodes_.Forget(h.session);
    return;
  }
  auto it = retained_.find(h.session);
  const bool held = it != retained_.end();
  SessionReclaimInfo* info = held ? &it->second.info : &session_info_[h.session];
  info->session = h.session;
  if (held) {
    info->blocks_on_tier[0] = it->second.table.num_blocks();
    info->context_tokens = it->second.table.num_tokens();
  }
  if (h.kind == SessionHint::Kind::kToolEnd) {
    if (h.duration_us >= 0 && !h.tool_key.empty()) {
      tool_stats_.AddSample(h.tool_key, h.duration_us);
      tool_stats_dirty_ = true;
    }
    if (!held) PromoteOnToolEnd(h.session);
    if (info->pinned && !info->pin_from_hint && !info->pin_is_grace) {
      if (info->pin_deadline_us <= h.at_us) {
        ++pins_expired_;
      } else if (held) {
        ++pins_used_;
      }
    }
  }
  if (h.kind == SessionHint::Kind::kToolBegin && held && info->pinned && info->pin_is_grace &&
      info->pin_deadline_us > h.at_us) {
    ++grace_pins_bridged_;
  }
  reclaim_policy_->OnHint(h, load, info);
  if (h.kind == SessionHint::Kind::kToolBegin) {
    tool_stats_dirty_ = true;  // the policy's TTL for the key changed
    if (info->pinned && !info->pin_from_hint) ++pins_granted_;
  }
}

void EngineImpl::PromoteOnToolEnd(SessionId session) {
  auto it = last_context_.find(session);
  if (it == last_context_.end() || disk_worker_ == nullptr) return;
  planning_session_ = session;  // the lower tiers spare it while its reads are planned
  const int32_t planned = pool_.PlanDiskLoads(it->second.tokens, it->second.scope);
  planning_session_ = 0;
  if (planned == 0) return;
  outstanding_disk_reads_ += planned;
  promoting_[session] += planned;
  spdlog::debug("engine: tool_end of session {:x}: reading {} blocks up from disk", session,
                planned);
}

void EngineImpl::OrderWaiting() {
  if (!reclaim_policy_->program_aware_admission() || scheduler_.num_waiting() < 2) return;
  const int64_t now = clock_->NowMicros();
  AdmissionOptions options = options_.policy.admission;
  options.program_aware = true;
  auto candidate = [](const Sequence* s) {
    AdmissionCandidate c;
    c.request_id = s->id();
    c.preempted = s->num_preemptions > 0;
    c.returning_pinned = s->returning_pinned;
    c.program_arrival_us = s->program_arrival_us;
    c.enqueued_us = s->submit_us;
    c.program = s->request.session;
    return c;
  };
  scheduler_.SortWaiting([&](const Sequence* a, const Sequence* b) {
    return AdmitsBefore(candidate(a), candidate(b), now, options);
  });
}

int32_t EngineImpl::ReclaimSessions(int32_t shortfall_blocks, bool break_live_pins) {
  if (retained_.empty()) return 0;
  std::vector<SessionReclaimInfo> candidates;
  candidates.reserve(retained_.size());
  for (auto& [id, r] : retained_) {
    r.info.blocks_on_tier[0] = r.table.num_blocks();
    r.info.blocks_on_tier[1] = r.info.blocks_on_tier[2] = 0;
    candidates.push_back(r.info);
  }
  std::vector<ReclaimVictim> victims;
  reclaim_policy_->Order({Tier::kDevice, shortfall_blocks, clock_->NowMicros()}, candidates,
                         &victims);
  const int32_t before = pool_.num_allocatable();
  for (const ReclaimVictim& v : victims) {
    if (pool_.num_allocatable() - before >= shortfall_blocks) break;
    if (v.victim_class == VictimClass::kLivePin) {
      if (!break_live_pins) break;  // the order lists live pins last: none is left before
      ++pin_violations_;
    }
    auto it = retained_.find(v.session);
    if (it == retained_.end()) continue;
    if (v.victim_class == VictimClass::kLivePin) {
      const SessionReclaimInfo& info = it->second.info;
      spdlog::debug(
          "engine: breaking the live pin of session {:x} ({} blocks, {:.2f} s before its "
          "deadline): nothing else can run",
          v.session, it->second.table.num_blocks(),
          static_cast<double>(info.pin_deadline_us - clock_->NowMicros()) / 1e6);
    }
    reclaim_policy_->OnReclaimed(it->second.info);
    // The policy chose it to make room: its blocks are the next evicted, before those of
    // turns that wait for admission (their tables were handed to the cache on arrival).
    ReleaseSession(v.session, /*evict_first=*/true);
    SetRetainedBlocks(v.session, 0);  // its blocks are cached now: anyone's to take
    ++reclaimed_sessions_;
  }
  return pool_.num_allocatable() - before;
}

}  // namespace kvkeep
