// Scheduler: continuous batching with block-wise (chunked) prefill. Pure bookkeeping over
// a cache/BlockPool: it decides which sequences run how many tokens in the next step and
// reserves their blocks; it never touches KV bytes or the model.
//
// Policy of one Schedule() call, under a budget of max_batch_tokens tokens:
//   1. decode: every running sequence past its prefill gets its one pending token, in
//      admission order (oldest first); then the step of an episode cache build, if the
//      engine has one, gets its tokens from what is left (Schedule's build_tokens);
//   2. prefill chunks of running sequences still prefilling, at most
//      prefill_chunk_tokens each, oldest first;
//   3. admission: waiting sequences while the budget lasts and fewer than max_running
//      run, the tenant with the fewest running sequences first, then queue order.
// Fairness between tenants (told apart by their cache salt, one per uid): a tenant with
// nothing running is admitted before the prefill chunks of step 2 (after the decodes),
// prefill chunks go round-robin over tenants, and when max_running sequences run, the
// tenant running the most gives up its newest (preempted, recomputed later) for a tenant
// with none. So another tenant's short request starts within one step of arriving, as
// long as the pool has blocks for it, however many long requests one tenant runs. With
// max_blocks_per_tenant, a tenant already running something is admitted another sequence
// only while its running sequences' blocks_bound stay within it. An admitted
// sequence first takes the longest cached prefix
//      of its context (BlockPool::MatchPrefix over all tokens but the last, so at least
//      one token is computed and yields logits); its first chunk follows.
// So a long prefill is split across steps and never stalls decoding.
//
// Blocks: each scheduled run reserves its blocks with BlockPool::PrepareAppend (check,
// then act: a failed reservation changes nothing). Copy-on-write pairs from it are
// returned in ScheduledBatch::copies for Backend::CopyBlocks before the forward step.
// When the pool runs dry for a running sequence, the reclaimer first frees retained
// sessions that hold no live pin; then the newest running sequence not yet scheduled this
// step is preempted: its blocks are released (full, committed blocks stay cached and can
// be matched again on resume) and it goes back to the front of the waiting queue, to be
// recomputed from its whole context (prompt + generated tokens) when re-admitted. With no
// one left to preempt, the sequence preempts itself if others hold blocks this step;
// only when it runs alone are live pins broken (each a violation), and if that is still
// not enough its context can never fit and it is returned in `failed`. A preempted
// episode turn (engine/engine_episodes.cc) cannot recompute its cache's entries from
// tokens: it falls back to its full-KV request (Sequence::FallBackToFullKv) and is
// recomputed from the whole prompt like any other; so does an episode turn that waits
// for blocks after its cache was matched (the matched blocks are handed back).
// Pinned blocks count as taken at admission too: a waiting sequence is admitted only with
// blocks the pool has or that unpinned retained sessions give up, unless nothing runs and
// nothing is scheduled (then a pin is all that stands in the way, and it is broken). A
// sequence that cannot get blocks is simply not admitted this step (its matched prefix is
// handed back). An admission needs room for its whole prefill, not just its first chunk,
// beside the blocks the running prefills still need (vLLM-style), so a turn admitted
// later never preempts one still prefilling; only the growth of running work can. No
// admission happens in a step that preempted.
//
// After the forward step, OnStepDone advances each table and commits newly full blocks to
// the prefix cache (their chained hashes are computed by the pool under the table's
// scope: model id hash + the request's cache salt).
//
// Thread-safety: none; engine thread only.
#pragma once

#include <cstdint>
#include <deque>
#include <functional>
#include <span>
#include <vector>

#include "cache/block_pool.h"
#include "engine/sequence.h"

namespace kvkeep {

struct SchedulerOptions {
  int32_t max_batch_tokens = 512;      // tokens per step (prefill + decode); > 0
  int32_t prefill_chunk_tokens = 256;  // largest prefill run per sequence per step; > 0
  int32_t max_running = 64;            // sequences admitted at once; > 0
  // A tenant running something is admitted another sequence only while the blocks_bound
  // of its running sequences plus the new one's stays within this. 0: no cap.
  int64_t max_blocks_per_tenant = 0;
  // Backend::SwapsOverlapCompute: an admission that promotes host-tier blocks, in a step
  // where other sequences run, is admitted without tokens; its first chunk runs in the
  // next step, after its swap-in has overlapped this one.
  bool defer_promoted_admissions = false;
};

struct ScheduledSeq {
  Sequence* seq = nullptr;
  int32_t num_new_tokens = 0;  // tokens computed this step, from seq->num_computed()
  bool sample = false;         // the run ends at the last token: its logits are sampled
};

struct ScheduledBatch {
  std::vector<ScheduledSeq> seqs;
  std::vector<BlockCopy> copies;  // Backend::CopyBlocks before the forward step
  std::vector<Sequence*> failed;  // context can never fit the pool; already removed
  int32_t num_tokens = 0;
  int32_t build_tokens = 0;  // granted to the episode cache build beside the batch
  int32_t num_preempted = 0;
  bool empty() const { return seqs.empty(); }
};

class Scheduler {
 public:
  // REQUIRES: pool outlives the scheduler.
  Scheduler(const SchedulerOptions& options, BlockPool* pool);

  // Called when the pool is short of `shortfall` blocks: frees blocks held outside the
  // scheduler (retained sessions) and returns how many it freed. With break_live_pins
  // false it must leave live pins alone: a pinned session's blocks count as taken, so
  // neither admission nor the growth of running work reclaims them. The scheduler passes
  // true only when nothing else can make progress (see the class comment).
  using Reclaimer = std::function<int32_t(int32_t shortfall_blocks, bool break_live_pins)>;
  void set_reclaimer(Reclaimer reclaimer) { reclaimer_ = std::move(reclaimer); }

  // Appends a new sequence to the waiting queue. REQUIRES: status kWaiting, empty table.
  void Add(Sequence* seq);
  // build_tokens: the tokens an episode cache build wants to run beside the batch this
  // step (engine/engine_episodes.cc). They are charged to the step's max_batch_tokens after
  // the decodes and before any prefill chunk or admission; ScheduledBatch::build_tokens
  // says how many the build may run (0 when the decodes took the whole budget). So the
  // batch and the build together stay within max_batch_tokens.
  ScheduledBatch Schedule(int32_t build_tokens = 0);
  // After the forward step of `batch`: records the computed tokens and commits full blocks.
  // Sampled tokens are appended by the caller afterwards.
  void OnStepDone(const ScheduledBatch& batch);
  // Takes a sequence out of whichever queue holds it and frees its blocks.
  void Remove(Sequence* seq);

  // The tenant of a sequence: its cache salt (daemon: one per uid; 0 for tests' default).
  static uint64_t TenantOf(const Sequence* seq) { return seq->table.scope().tenant_salt; }
  // Each tenant's oldest first, then each tenant's second oldest, ...
  static std::vector<Sequence*> RoundRobinByTenant(const std::vector<Sequence*>& seqs);
  // Reorders the waiting queue (stable) by `before` (program-aware admission).
  void SortWaiting(const std::function<bool(const Sequence*, const Sequence*)>& before);
  // Prefill tokens the waiting sequences still need (the policy's queueing estimate).
  int64_t waiting_tokens() const;

  bool has_work() const { return !waiting_.empty() || !running_.empty(); }
  int32_t num_waiting() const { return static_cast<int32_t>(waiting_.size()); }
  int32_t num_running() const { return static_cast<int32_t>(running_.size()); }
  int64_t num_preemptions() const { return num_preemptions_; }
  // Preempted episode turns that fell back to full KV.
  int64_t num_episode_fallbacks() const { return num_episode_fallbacks_; }
  // All sequences holding blocks (for accounting).
  const std::vector<Sequence*>& running() const { return running_; }

 private:
  // Reserves room for n more tokens of seq, preempting others if needed. Returns false if
  // seq itself was preempted or failed (then it is no longer running).
  bool ReserveForRunning(Sequence* seq, int32_t n, ScheduledBatch* batch);
  bool TryAdmit(Sequence* seq, int32_t budget, ScheduledBatch* batch);
  // Admits the next waiting sequence (NextToAdmit) if budget and blocks allow.
  bool AdmitOne(bool only_idle_tenants, int32_t* budget, ScheduledBatch* batch);
  // The waiting sequence whose tenant runs the fewest sequences (queue order on ties);
  // only_idle_tenants: only one whose tenant runs none. nullptr when there is none.
  Sequence* NextToAdmit(bool only_idle_tenants) const;
  int32_t RunningOf(uint64_t tenant) const;
  // Whether admitting seq keeps its tenant within max_blocks_per_tenant (always, for a
  // tenant with nothing running: a request alone over the cap is refused before).
  bool WithinTenantCap(const Sequence* seq) const;
  // At max_running, preempts the newest sequence of the tenant running the most (if it
  // runs two or more) when a tenant with nothing running waits.
  void MakeRoomForIdleTenant();
  void Preempt(Sequence* seq);
  // Frees seq's blocks; an episode turn falls back to its full-KV request.
  void FreeBlocks(Sequence* seq);
  void Schedule(Sequence* seq, int32_t n, ScheduledBatch* batch);
  bool IsScheduled(const Sequence* seq, const ScheduledBatch& batch) const;

  SchedulerOptions options_;
  BlockPool* pool_;
  std::deque<Sequence*> waiting_;
  std::vector<Sequence*> running_;  // admission order, oldest first
  // Admitted this step without tokens while their prefixes come up from the host tier
  // (defer_promoted_admissions); scheduled from the next step.
  std::vector<Sequence*> promoting_;
  int64_t num_preemptions_ = 0;
  int64_t num_episode_fallbacks_ = 0;
  Reclaimer reclaimer_;
  // Asks the reclaimer for room for n more tokens of table (false: nothing freed).
  bool Reclaim(const BlockTable& table, int64_t n, bool break_live_pins);
  // Asks the reclaimer for shortfall_blocks more allocatable blocks (false: nothing freed).
  bool ReclaimBlocks(int64_t shortfall_blocks, bool break_live_pins);
  // Blocks the running sequences still need to reach the end of their prefill: the part
  // of each admission's whole-prefill reservation not yet in its table.
  int64_t PrefillBlocksStillNeeded() const;
  // Whether seq's whole admission fits once its prefix is matched, reclaiming for it if
  // needed; checked before a match that would promote host blocks (TryAdmit).
  bool PromotionFits(const Sequence* seq, std::span<const int32_t> context, bool break_live_pins);
};

}  // namespace kvkeep
