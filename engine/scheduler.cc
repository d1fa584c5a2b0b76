#include "engine/scheduler.h"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <map>

namespace kvkeep {

namespace {

// Orders sequences so that each tenant's oldest comes first, then each tenant's second
// oldest, and so on (admission order within a tenant and within a round).
std::vector<Sequence*> RoundRobinByTenantImpl(const std::vector<Sequence*>& seqs) {
  std::map<uint64_t, int32_t> seen;
  std::vector<std::pair<int32_t, Sequence*>> ranked;
  for (Sequence* s : seqs) ranked.push_back({seen[Scheduler::TenantOf(s)]++, s});
  std::stable_sort(ranked.begin(), ranked.end(),
                   [](const auto& a, const auto& b) { return a.first < b.first; });
  std::vector<Sequence*> out;
  for (const auto& r : ranked) out.push_back(r.second);
  return out;
}

}  // namespace

std::vector<Sequence*> Scheduler::RoundRobinByTenant(const std::vector<Sequence*>& seqs) {
  return RoundRobinByTenantImpl(seqs);
}

Scheduler::Scheduler(const SchedulerOptions& options, BlockPool* pool)
    : options_(options), pool_(pool) {}

void Scheduler::Add(Sequence* seq) {
  seq->status = SequenceStatus::kWaiting;
  waiting_.push_back(seq);
}

bool Scheduler::IsScheduled(const Sequence* seq, const ScheduledBatch& batch) const {
  return std::any_of(batch.seqs.begin(), batch.seqs.end(),
                     [&](const ScheduledSeq& s) { return s.seq == seq; });
}

void Scheduler::Schedule(Sequence* seq, int32_t n, ScheduledBatch* batch) {
  ScheduledSeq s;
  s.seq = seq;
  s.num_new_tokens = n;
  s.sample = seq->num_computed() + n == seq->num_tokens();
  batch->seqs.push_back(s);
  batch->num_tokens += n;
}

void Scheduler::Preempt(Sequence* seq) {
  spdlog::debug("scheduler: preempting request {} at {} tokens", seq->id(), seq->num_tokens());
  FreeBlocks(seq);
  running_.erase(std::find(running_.begin(), running_.end(), seq));
  seq->status = SequenceStatus::kWaiting;
  ++seq->num_preemptions;
  ++num_preemptions_;
  waiting_.push_front(seq);
}

void Scheduler::FreeBlocks(Sequence* seq) {
  pool_->Free(&seq->table);
  if (seq->is_episode_turn()) {  // its cache's entries are gone from its table
    seq->FallBackToFullKv();
    ++num_episode_fallbacks_;
  }
}

bool Scheduler::Reclaim(const BlockTable& table, int64_t n, bool break_live_pins) {
  const int32_t need = table.NumNewBlocksFor(n) + 1;  // + a possible copy-on-write block
  return ReclaimBlocks(std::max(1, need - pool_->num_allocatable()), break_live_pins);
}

bool Scheduler::ReclaimBlocks(int64_t shortfall_blocks, bool break_live_pins) {
  if (!reclaimer_) return false;
  const int64_t capped = std::min<int64_t>(shortfall_blocks, pool_->num_blocks());
  return reclaimer_(static_cast<int32_t>(std::max<int64_t>(1, capped)), break_live_pins) > 0;
}

int64_t Scheduler::PrefillBlocksStillNeeded() const {
  int64_t n = 0;
  for (const Sequence* s : running_) {
    if (!s->is_prefilling()) continue;
    n += std::max<int64_t>(0, BlockTable::NumBlocksForTokens(s->prefill_end, pool_->block_size()) -
                                  s->table.num_blocks());
  }
  return n;
}

bool Scheduler::PromotionFits(const Sequence* seq, std::span<const int32_t> context,
                              bool break_live_pins) {
  // Without host hits a match takes nothing a failed admission would not hand back as it
  // was. With them, promoting a prefix for a turn that then cannot be admitted swaps it in
  // for nothing, and the device blocks it then sits in as cached are evicted (demoted
  // again) before the turn's next try, which recomputes it: so promote only when the
  // whole admission fits (the check below, made before the match).
  const BlockPool::MatchPlan plan = pool_->PlanMatch(context, seq->table.scope());
  // PlanMatch, like MatchPrefix, takes a host block only while a device slot is free: on a
  // full pool it plans no promotion, and the match then stops at the first host block and
  // recomputes the rest. The host run ProbePrefix sees is what room is made for.
  const TierCounts probe = pool_->ProbePrefix(context, seq->table.scope());
  const int64_t host = std::max(plan.tiers.host, probe.host);
  if (host == 0 || break_live_pins) return true;  // alone: try as before
  const int64_t device = std::max(plan.tiers.device, probe.device);
  const int64_t cached_device_slots = plan.slots_taken - plan.tiers.host;
  const int64_t new_blocks =
      BlockTable::NumBlocksForTokens(seq->num_tokens(), pool_->block_size()) - device - host;
  const int64_t must_fit = new_blocks + cached_device_slots + host + PrefillBlocksStillNeeded();
  while (pool_->num_allocatable() < must_fit) {
    if (!ReclaimBlocks(must_fit - pool_->num_allocatable(), /*break_live_pins=*/false)) {
      return false;
    }
  }
  return true;
}

bool Scheduler::ReserveForRunning(Sequence* seq, int32_t n, ScheduledBatch* batch) {
  while (!pool_->PrepareAppend(&seq->table, n, &batch->copies).ok()) {
    // Unpinned retained sessions go before running sequences; live pins after them.
    if (Reclaim(seq->table, n, /*break_live_pins=*/false)) continue;
    // The newest running sequence that is neither seq nor already scheduled this step.
    Sequence* victim = nullptr;
    for (auto it = running_.rbegin(); it != running_.rend(); ++it) {
      if (*it != seq && !IsScheduled(*it, *batch)) {
        victim = *it;
        break;
      }
    }
    if (victim != nullptr) {
      Preempt(victim);
      ++batch->num_preempted;
      continue;
    }
    if (!batch->seqs.empty()) {  // others hold the blocks this step: wait for them
      Preempt(seq);
      ++batch->num_preempted;
      return false;
    }
    // Alone: nothing else can make progress, so pins give way (each a violation).
    if (Reclaim(seq->table, n, /*break_live_pins=*/true)) continue;
    // Alone with the whole pool and still short: this context can never fit.
    Remove(seq);
    batch->failed.push_back(seq);
    return false;
  }
  return true;
}

bool Scheduler::TryAdmit(Sequence* seq, int32_t budget, ScheduledBatch* batch) {
  // Live pins are broken for an admission only when nothing else would run this step.
  const bool others_run = !running_.empty() || !batch->seqs.empty();
  const bool break_live_pins = !others_run;
  if (seq->table.empty() && pool_->prefix_caching_enabled()) {
    std::span<const int32_t> context(seq->tokens.data(), seq->tokens.size() - 1);
    if (!PromotionFits(seq, context, break_live_pins)) return false;
    seq->table = pool_->MatchPrefix(context, seq->table.scope(), &seq->matched_tiers);
  }
  const int64_t cached = seq->num_computed();
  const int32_t n = static_cast<int32_t>(
      std::min<int64_t>({seq->num_pending(), options_.prefill_chunk_tokens, budget}));
  // The whole prefill must fit beside what the running prefills still need, so that no
  // admission preempts a turn admitted before it (vLLM's can_allocate on the whole prompt).
  // Only the first chunk's blocks are taken now; the rest stay allocatable, counted here.
  const int64_t must_fit =
      int64_t{seq->table.NumNewBlocksFor(seq->num_pending())} + PrefillBlocksStillNeeded();
  bool reserved = true;
  while (reserved && pool_->num_allocatable() < must_fit) {
    reserved = ReclaimBlocks(must_fit - pool_->num_allocatable(), break_live_pins);
  }
  // A promotion the step's other sequences can run beside: this turn computes from the
  // next step, its first chunk then reserved as a running prefill's.
  const bool deferred =
      reserved && others_run && options_.defer_promoted_admissions && seq->matched_tiers.host > 0;
  if (reserved && !deferred) {
    reserved = pool_->PrepareAppend(&seq->table, n, &batch->copies).ok();
    while (!reserved && Reclaim(seq->table, n, break_live_pins)) {
      reserved = pool_->PrepareAppend(&seq->table, n, &batch->copies).ok();
    }
  }
  if (!reserved) {
    FreeBlocks(seq);  // hand the matched prefix (or episode cache) back
    if (!others_run && BlockTable::NumBlocksForTokens(seq->num_tokens(), pool_->block_size()) >
                           pool_->num_blocks()) {
      waiting_.erase(std::find(waiting_.begin(), waiting_.end(), seq));
      seq->status = SequenceStatus::kFinished;
      batch->failed.push_back(seq);
    }
    return false;
  }
  waiting_.erase(std::find(waiting_.begin(), waiting_.end(), seq));
  running_.push_back(seq);
  seq->status = SequenceStatus::kRunning;
  seq->prefill_end = seq->num_tokens();
  seq->usage.cached_tokens += cached;
  // Where the matched prefix came from. Blocks read up from disk for this sequence were
  // promoted from the host tier, so they count as disk.
  const int32_t bs = pool_->block_size();
  const int32_t from_disk = std::min(seq->disk_blocks_loaded, seq->matched_tiers.host);
  seq->usage.cached_device_tokens += int64_t{seq->matched_tiers.device} * bs;
  seq->usage.cached_host_tokens += int64_t{seq->matched_tiers.host - from_disk} * bs;
  const int32_t from_remote = std::min(seq->remote_blocks_loaded, from_disk);
  seq->usage.cached_disk_tokens += int64_t{from_disk - from_remote} * bs;
  seq->usage.cached_remote_tokens += int64_t{from_remote} * bs;
  seq->matched_tiers = {};
  if (deferred) {
    promoting_.push_back(seq);
    spdlog::debug("scheduler: request {} admitted; its {} cached tokens come up first", seq->id(),
                  cached);
  } else {
    Schedule(seq, n, batch);
  }
  return true;
}

int32_t Scheduler::RunningOf(uint64_t tenant) const {
  return static_cast<int32_t>(std::count_if(running_.begin(), running_.end(),
                                            [&](Sequence* s) { return TenantOf(s) == tenant; }));
}

bool Scheduler::WithinTenantCap(const Sequence* seq) const {
  if (options_.max_blocks_per_tenant <= 0) return true;
  const uint64_t tenant = TenantOf(seq);
  int64_t bound = seq->blocks_bound;
  for (const Sequence* s : running_) {
    if (TenantOf(s) == tenant) bound += s->blocks_bound;
  }
  return bound == seq->blocks_bound || bound <= options_.max_blocks_per_tenant;
}

Sequence* Scheduler::NextToAdmit(bool only_idle_tenants) const {
  Sequence* best = nullptr;
  int32_t best_running = 0;
  for (Sequence* seq : waiting_) {  // queue order breaks ties
    const int32_t r = RunningOf(TenantOf(seq));
    if (only_idle_tenants && r > 0) continue;
    if (!WithinTenantCap(seq)) continue;  // waits for its tenant's running ones
    if (best == nullptr || r < best_running) {
      best = seq;
      best_running = r;
    }
    if (r == 0) break;
  }
  return best;
}

void Scheduler::MakeRoomForIdleTenant() {
  if (num_running() < options_.max_running || NextToAdmit(true) == nullptr) return;
  // The tenant running the most sequences gives up its newest one (recomputed later).
  std::map<uint64_t, int32_t> counts;
  for (Sequence* s : running_) ++counts[TenantOf(s)];
  auto most = std::max_element(counts.begin(), counts.end(),
                               [](const auto& a, const auto& b) { return a.second < b.second; });
  if (most->second < 2) return;  // every tenant runs one: nothing fairer to do
  for (auto it = running_.rbegin(); it != running_.rend(); ++it) {
    if (TenantOf(*it) == most->first) {
      Preempt(*it);
      return;
    }
  }
}

bool Scheduler::AdmitOne(bool only_idle_tenants, int32_t* budget, ScheduledBatch* batch) {
  while (*budget > 0 && batch->num_preempted == 0 && num_running() < options_.max_running) {
    Sequence* seq = NextToAdmit(only_idle_tenants);
    if (seq == nullptr) return false;
    const size_t failed_before = batch->failed.size();
    const int32_t tokens_before = batch->num_tokens;
    if (TryAdmit(seq, *budget, batch)) {
      *budget -= batch->num_tokens - tokens_before;
      return true;
    }
    if (batch->failed.size() == failed_before) return false;  // no blocks: wait
  }
  return false;
}

ScheduledBatch Scheduler::Schedule(int32_t build_tokens) {
  ScheduledBatch batch;
  int32_t budget = options_.max_batch_tokens;
  promoting_.clear();
  MakeRoomForIdleTenant();
  // 1. decodes, then 2. prefill chunks of running sequences. Iterate over a snapshot:
  // preemption edits running_. Between the two, tenants with nothing running are admitted
  // first, so another tenant's long prefills cannot hold them back.
  for (bool decode_pass : {true, false}) {
    std::vector<Sequence*> snapshot = running_;
    if (!decode_pass) {
      // The build's step is charged after the decodes, before prefills and admissions.
      batch.build_tokens = std::clamp(build_tokens, 0, std::max(budget, 0));
      budget -= batch.build_tokens;
      while (AdmitOne(/*only_idle_tenants=*/true, &budget, &batch)) {
      }
      snapshot = RoundRobinByTenant(running_);
    }
    for (Sequence* seq : snapshot) {
      if (budget <= 0) break;
      if (seq->status != SequenceStatus::kRunning || IsScheduled(seq, batch)) continue;
      if (std::find(promoting_.begin(), promoting_.end(), seq) != promoting_.end()) continue;
      if (seq->is_prefilling() == decode_pass) continue;
      const int32_t n = static_cast<int32_t>(std::min<int64_t>(
          {seq->num_pending(), decode_pass ? 1 : options_.prefill_chunk_tokens, budget}));
      if (n <= 0) continue;
      if (!ReserveForRunning(seq, n, &batch)) continue;
      Schedule(seq, n, &batch);
      budget -= n;
    }
  }
  // 3. admission: the tenant with the fewest running sequences first, then queue order.
  while (AdmitOne(/*only_idle_tenants=*/false, &budget, &batch)) {
  }
  if (!batch.empty()) {
    spdlog::debug(
        "scheduler: step of {} tokens over {} seqs ({} running, {} waiting, {} "
        "preempted, {} copies)",
        batch.num_tokens, batch.seqs.size(), running_.size(), waiting_.size(), batch.num_preempted,
        batch.copies.size());
  }
  return batch;
}

void Scheduler::OnStepDone(const ScheduledBatch& batch) {
  for (const ScheduledSeq& s : batch.seqs) {
    Sequence* seq = s.seq;
    const int64_t start = seq->num_computed();
    const int64_t prefill_tokens =
        std::clamp<int64_t>(seq->prefill_end - start, 0, s.num_new_tokens);
    seq->usage.recomputed_tokens += prefill_tokens;
    seq->table.AdvanceTokens(s.num_new_tokens);
    // An episode turn's tokens do not describe its restored entries: nothing to share.
    if (seq->kv_view.num_restored == 0) pool_->CommitFullBlocks(&seq->table, seq->tokens);
  }
}

void Scheduler::SortWaiting(const std::function<bool(const Sequence*, const Sequence*)>& before) {
  std::stable_sort(waiting_.begin(), waiting_.end(), before);
}

int64_t Scheduler::waiting_tokens() const {
  int64_t n = 0;
  for (const Sequence* seq : waiting_) n += seq->num_pending();
  return n;
}

void Scheduler::Remove(Sequence* seq) {
  if (auto it = std::find(running_.begin(), running_.end(), seq); it != running_.end()) {
    running_.erase(it);
  }
  if (auto it = std::find(waiting_.begin(), waiting_.end(), seq); it != waiting_.end()) {
    waiting_.erase(it);
  }
  pool_->Free(&seq->table);
  seq->status = SequenceStatus::kFinished;
}

}  // namespace kvkeep
