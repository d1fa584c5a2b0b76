// EngineImpl: the Engine of engine/engine.h. One engine thread (Start) or the caller
// (RunUntilIdle) runs Step() repeatedly; Step() is the table of contents:
//   drain inbox (disk loads planned for new requests) -> collect finished disk reads ->
//   schedule -> reserve blocks (CoW copies; evictions demote) -> transfer phase (swaps,
//   disk I/O queued) -> build batch + run model -> sample -> postprocess (stop checks,
//   accounting) -> emit events -> policy tick.
// Everything below the mutex line is owned by the thread running steps.
//
// Thread-safety: Submit, Cancel, GetStats, Stop are thread-safe. Without Start(), the
// caller drives the engine with RunUntilIdle() and must not call it from two threads.
// Stop() joins the engine thread, so it must not be called from an event callback; the
// kCancelled events it produces run on the thread calling Stop().
#pragma once

#include <condition_variable>
#include <deque>
#include <memory>
#include <mutex>
#include <optional>
#include <thread>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include "cache/block_pool.h"
#include "cache/disk_tier.h"
#include "cache/disk_worker.h"
#include "engine/engine.h"
#include "engine/episode_cache.h"
#include "engine/episode_cache_directory.h"
#include "engine/model_runner.h"
#include "engine/scheduler.h"
#include "engine/sequence.h"

namespace kvkeep {

class EngineImpl final : public Engine, private TierVictimChooser {
 public:
  // disk_store: the opened disk tier (nullptr: none) holding up to num_disk_blocks.
  EngineImpl(const EngineOptions& options, std::unique_ptr<Backend> backend,
             const Tokenizer* tokenizer, Clock* clock, std::unique_ptr<DiskBlockStore> disk_store,
             int32_t num_disk_blocks);
  ~EngineImpl() override;

  Status Start() override;
  void Stop() override;
  Status Submit(GenerateRequest request) override;
  void Cancel(RequestId id) override;
  void Hint(const SessionHint& hint) override;
  EngineStats GetStats() const override;
  int64_t RetainedBlocks(SessionId session) const override;
  Status RunUntilIdle() override;
  const ModelConfig& config() const override { return backend_->config(); }

  // One engine step. Returns Internal if work remains but nothing could be scheduled.
  Status Step();

  // The longest context a request may reach: min(max_position_embeddings, pool tokens).
  int64_t max_context_tokens() const { return max_context_tokens_; }

  // Adopts the blocks a scan of the disk tier found (before Start); deletes the rest.
  void AdoptDiskBlocks(const std::vector<DiskBlockHeader>& headers);
  // Steps that ran no forward pass while work remained (waiting on memory or a transfer).
  int64_t idle_steps() const { return idle_steps_; }
  // Tests: the pool's invariant check (engine thread only).
  Status TEST_CheckPool() const { return pool_.TEST_CheckInvariants(); }
  const BlockPool& TEST_pool() const { return pool_; }
  int64_t TEST_disk_read_timeouts() const { return disk_read_timeouts_; }
  // Blocks until the disk tier's queued writes are on disk (they are asynchronous).
  void TEST_WaitForDiskWrites() {
    if (disk_worker_ != nullptr) disk_worker_->WaitIdle();
  }

 private:
  struct Pending {
    GenerateRequest request;
    int64_t submit_us = 0;
  };
  struct Outgoing {
    Sequence* seq;
    GenerateEvent event;
  };

  Status Validate(const GenerateRequest& request) const;
  bool HasWorkLocked() const;
  void DrainInbox();
  void SampleAndPostprocess(const ScheduledBatch& batch);
  void EmitToken(Sequence* seq, int32_t token, std::string text);
  void Finish(Sequence* seq, FinishReason reason, Status error = Status::OK());
  void EmitEvents();
  void PolicyTick() {}  // pins expire lazily: an expired pin is reclaim class 2
  // The transfer phase: runs the pool's planned swaps and hands disk I/O to the worker.
  Status RunTransfers();
  // The step's work for the step log (its times are set once it has run); empty when off.
  StepTiming DescribeStep(const ScheduledBatch& batch) const;
  Status RunTransferPlan();
  // Disk reads the worker finished: tells the pool; admits each waiting sequence whose own
  // prefix is no longer loading, or whose deadline has passed. wait: first block for a
  // completed read, at most kDiskPollUs (the engine thread never waits on file I/O longer).
  void CollectDiskReads(bool wait);
  static constexpr int64_t kDiskPollUs = 5000;
  // Sessions: keep a finished turn's table; release a session's table; the scheduler's
  // reclaimer (frees retained sessions in the policy's order; returns blocks freed).
  void Retain(Sequence* seq);
  // evict_first: its blocks go to the head of the pool's LRU list (a reclaim victim, or a
  // session a uid's device block cap gives up).
  void ReleaseSession(SessionId session, bool evict_first = false);
  // A new turn of session arrived: marks seq's admission class, ends a learned (or grace)
  // pin and hands the retained blocks back to the cache.
  void BeginTurn(SessionId session, Sequence* seq);
  // break_live_pins false: live pins are not reclaimed (Scheduler::Reclaimer).
  int32_t ReclaimSessions(int32_t shortfall_blocks, bool break_live_pins);
  // Per-tenant device blocks (engine_tenants.cc; EngineOptions::max_device_blocks_per_tenant).
  // The most blocks a request can come to hold: prompt + max_tokens (or its forced
  // tokens), within the context limit.
  int64_t BlocksBound(const GenerateRequest& r) const;
  // Releases tenant's retained sessions (unpinned first, each the least recently used)
  // while the blocks_bound of its sequences (but `leaving`) plus its retained blocks
  // exceed the cap.
  void TrimTenant(uint64_t tenant, const Sequence* leaving = nullptr);
  std::vector<EngineStats::TenantBlocks> TenantBlockStats() const;
  // The host and disk tiers' victims (engine_tiers.cc): sessions the engine no longer
  // knows (closed) first, then the policy's order; a session with a turn in flight never.
  void ChooseTierVictims(const ReclaimRequest& request, std::span<const TierHolder> holders,
                         std::vector<SessionId>* victims) override;
  void ApplyHints(std::vector<SessionHint> hints);
  void SetRetainedBlocks(SessionId session, int64_t blocks);  // 0: none
  void ApplyHint(const SessionHint& hint, const EngineLoad& load);
  // tool_end: plans disk -> host reads of the session's demoted blocks (issue 10, item 3).
  void PromoteOnToolEnd(SessionId session);
  EngineLoad CurrentLoad() const;
  // Program-aware admission order (ttl, fixed-ttl): reorders the waiting queue.
  void OrderWaiting();
  void SwitchPolicy(const PolicyOptions& options);
  Status SetPolicy(const PolicyOptions& options) override;
  void PublishStats();
  // Copies each sequence's newly committed full blocks to the remote tier (write-through).
  void WriteThroughRemote(const ScheduledBatch& batch);
  void ThreadMain();
  // Episode turns (engine_episodes.cc). ServeFromEpisode: false leaves seq a full-KV turn
  // (logged); true: it is queued (or waits for its cache's disk reads) as an episode turn.
  bool ServeFromEpisode(Sequence* seq);
  // Matches the cache's blocks, rewrites seq to decode on top of them, queues it.
  Status AdmitEpisodeTurn(Sequence* seq);
  // A cache build in steps: Start takes its blocks and queues it; each engine step
  // advances the oldest one step (AdvanceEpisodeBuild); a finished build is registered
  // (FinishEpisodeBuild) and its turn admitted, a failed one's turn goes to full KV.
  struct EpisodeBuild {
    Sequence* seq = nullptr;
    BlockTable table;
    std::unique_ptr<EpisodeCompressor> compressor;
    int64_t work_us = 0;  // time spent in its steps
  };
  Status StartEpisodeBuild(Sequence* seq, HashScope scope);
  // The tokens the oldest build's next step forwards (-1: no build), which the scheduler
  // charges to the step's budget; AdvanceEpisodeBuild runs that step with the tokens the
  // scheduler granted (none granted: it waits a step).
  int32_t EpisodeBuildStepTokens() const;
  void AdvanceEpisodeBuild(int32_t wanted_tokens, int32_t granted_tokens);
  Status FinishEpisodeBuild(EpisodeBuild* build);
  void DropEpisodeBuild(Sequence* seq);   // a turn finished (cancelled) while its cache builds
  void FinishEpisodeTurn(Sequence* seq);  // before its table is freed
  // Queues a full-KV turn: reads its prefix's disk (and remote) blocks up first, if any.
  void QueueFullKvTurn(Sequence* seq);

  const EngineOptions options_;
  const Tokenizer* tokenizer_;
  Clock* clock_;
  std::unique_ptr<Backend> backend_;
  int64_t max_context_tokens_ = 0;
  HashScope base_scope_;

  std::mutex stop_mu_;  // serialises Stop() callers (join once)
  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::vector<Pending> inbox_;               // guarded by mu_
  std::vector<RequestId> cancels_;           // guarded by mu_
  std::unordered_set<RequestId> in_flight_;  // guarded by mu_
  EngineStats stats_;                        // guarded by mu_
  bool stopped_ = false;                     // guarded by mu_
  bool has_work_ = false;                    // guarded by mu_ (mirror of the scheduler)
  std::thread thread_;

  // --- owned by the thread running steps ---
  BlockPool pool_;
  Scheduler scheduler_;
  ModelRunner runner_;
  std::unordered_map<RequestId, std::unique_ptr<Sequence>> seqs_;
  // The sessions (!= 0) of seqs_, sorted, one entry per sequence: ChooseTierVictims asks
  // for them once per block the lower tiers free, too often to walk seqs_.
  std::vector<SessionId> in_flight_sessions_;
  std::vector<Outgoing> outbox_;
  std::vector<std::unique_ptr<Sequence>> done_;  // finished this step, freed after emit
  EngineStats totals_;                           // accumulated usage of finished requests
  int64_t steps_ = 0;
  int64_t idle_steps_ = 0;
  // Disk tier (null without one): the files and the I/O thread.
  std::unique_ptr<DiskBlockStore> disk_store_;
  std::unique_ptr<DiskWorker> disk_worker_;
  // Remote tier (null without one); declared after disk_store_, its codec, so it goes first.
  std::unique_ptr<RemoteBlockStore> remote_;
  int32_t outstanding_disk_reads_ = 0;
  TransferFence swap_out_fence_;  // the last swap-out not yet waited for
  TransferFence swap_in_fence_;   // the last swap-in not yet waited for
  int64_t disk_read_failures_ = 0;
  int64_t disk_read_timeouts_ = 0;  // turns admitted with disk reads still in flight
  // New sequences whose prefix is being read up from disk, until their reads are in or
  // their deadline (EngineOptions::disk_read_deadline_us) passes.
  struct AwaitingDisk {
    Sequence* seq;
    int64_t deadline_us;
  };
  std::vector<AwaitingDisk> awaiting_disk_;
  // Sessions retained between turns, and the policy that orders their reclaim.
  struct RetainedSession {
    BlockTable table;
    SessionReclaimInfo info{};
  };
  ToolLatencyStats tool_stats_;
  std::unique_ptr<ReclaimPolicy> reclaim_policy_;
  std::optional<PolicyOptions> pending_policy_;                // guarded by mu_: SetPolicy's switch
  std::unordered_map<SessionId, int64_t> program_arrival_us_;  // a session's first submit
  // A retained session's last context (tokens whose KV it had, and its scope), so that
  // tool_end can read its disk blocks back up before its next turn (PromoteOnToolEnd).
  struct LastContext {
    std::vector<int32_t> tokens;
    HashScope scope;
  };
  std::unordered_map<SessionId, LastContext> last_context_;
  std::unordered_map<SessionId, int32_t> promoting_;  // disk reads tool_end planned
  SessionId planning_session_ = 0;                    // PromoteOnToolEnd is planning its reads
  bool tool_stats_dirty_ = true;                      // tool_keys in the stats need recomputing
  std::vector<EngineStats::ToolKeyStats> tool_keys_;
  int64_t pins_granted_ = 0, pins_used_ = 0, pins_expired_ = 0, transfer_us_ = 0;
  int64_t grace_pins_granted_ = 0, grace_pins_bridged_ = 0;
  std::unordered_map<SessionId, RetainedSession> retained_;
  // For RetainedBlocks: each session's retained device blocks, set by Retain, kept across
  // BeginTurn, erased on reclaim and close.
  mutable std::mutex retained_blocks_mu_;
  std::unordered_map<SessionId, int64_t> retained_blocks_;  // guarded by retained_blocks_mu_
  std::unordered_map<SessionId, SessionReclaimInfo> session_info_;  // hints before a turn ends
  std::vector<SessionHint> hints_;                                  // guarded by mu_
  int64_t reclaimed_sessions_ = 0, pin_violations_ = 0;
  int64_t tenant_cap_releases_ = 0;
  EpisodeCacheDirectory episodes_;
  std::deque<EpisodeBuild> building_;  // cache builds in progress, oldest first
  int64_t episode_builds_ = 0, episode_build_us_ = 0, episode_turns_ = 0, episode_fallbacks_ = 0;
};

}  // namespace kvkeep
