// EngineImpl::Step and what it calls: everything here runs on the thread driving steps.
#include <spdlog/spdlog.h>

#include <algorithm>

#include "cache/remote_staging.h"
#include "engine/engine_impl.h"
#include "policy/cost_model.h"

namespace kvkeep {

Status EngineImpl::Step() {
  const int64_t start_us = clock_->NowMicros();
  DrainInbox();             // 1. inbox: new requests (disk loads planned), cancels
  CollectDiskReads(false);  //    finished disk reads make blocks matchable
  OrderWaiting();           //    program-aware admission order
  const int32_t build_tokens = EpisodeBuildStepTokens();  // charged to the step's budget
  ScheduledBatch batch = scheduler_.Schedule(std::max(build_tokens, 0));  // 2-3. schedule
  StepTiming timing = DescribeStep(batch);   //    for the step log, before it runs
  if (Status t = RunTransfers(); !t.ok()) {  //    transfer phase: swaps, disk I/O
    for (const ScheduledSeq& s : batch.seqs) Finish(s.seq, FinishReason::kError, t);
    batch.seqs.clear();
    pool_.ReleaseCopySources(batch.copies);
    batch.copies.clear();
  }
  for (Sequence* seq : batch.failed) {
    Finish(seq, FinishReason::kError,
           Status::ResourceExhausted("context of " + std::to_string(seq->num_tokens()) +
                                     " tokens can never fit the KV pool"));
  }
  Status status;
  if (!batch.empty()) {
    status = runner_.Run(batch);             // 4-5. plan + run the model (CoW first)
    pool_.ReleaseCopySources(batch.copies);  // CoW sources were held until copied
    if (status.ok()) {
      scheduler_.OnStepDone(batch);  // KV now stored: advance, commit blocks
      if (remote_ != nullptr) WriteThroughRemote(batch);
      SampleAndPostprocess(batch);  // 6-7. sample, stop checks, accounting
    } else {
      for (const ScheduledSeq& s : batch.seqs) Finish(s.seq, FinishReason::kError, status);
    }
  } else if (!building_.empty()) {
    // an episode cache's build step below is this step's work
  } else if (outstanding_disk_reads_ > 0) {
    ++idle_steps_;
    CollectDiskReads(true);  // nothing else to run: wait (bounded) on a read, not a spin
  } else if (scheduler_.has_work() && batch.failed.empty()) {
    ++idle_steps_;
    status = Status::Internal("scheduler made no progress");
  }
  AdvanceEpisodeBuild(build_tokens, batch.build_tokens);  // one step of the oldest build
  EmitEvents();                                           // 8. callbacks
  PolicyTick();                                           // 9. budgeted policy tick
  ++steps_;
  PublishStats();
  if (options_.step_log != nullptr && !batch.empty() && status.ok()) {
    timing.at_s = static_cast<double>(start_us) * 1e-6;
    timing.step_s = static_cast<double>(clock_->NowMicros() - start_us) * 1e-6;
    options_.step_log->Add(timing);
  }
  return status;
}

StepTiming EngineImpl::DescribeStep(const ScheduledBatch& batch) const {
  StepTiming t;
  if (options_.step_log == nullptr) return t;
  for (const ScheduledSeq& s : batch.seqs) {
    const int64_t n = s.num_new_tokens;
    const int64_t cached = s.seq->num_computed();
    if (IsDecodeRun(n, cached)) {
      ++t.decode_sequences;
      t.decode_context_tokens += cached + 1;
    } else {
      ++t.prefill_runs;
      t.prefill_tokens += n;
      t.attention_pairs += AttentionPairs(n, cached);
    }
  }
  for (const BlockTransfer& op : pool_.transfers().ops) {
    if (op.kind == BlockTransfer::Kind::kSwapIn) ++t.swapped_in_blocks;
    if (op.kind == BlockTransfer::Kind::kSwapOut) ++t.swapped_out_blocks;
  }
  return t;
}

void EngineImpl::DrainInbox() {
  std::vector<Pending> inbox;
  std::vector<RequestId> cancels;
  std::vector<SessionHint> hints;
  std::optional<PolicyOptions> policy;
  {
    std::lock_guard<std::mutex> lock(mu_);
    inbox.swap(inbox_);
    cancels.swap(cancels_);
    hints.swap(hints_);
    policy.swap(pending_policy_);
  }
  if (policy) SwitchPolicy(*policy);
  ApplyHints(std::move(hints));
  const std::vector<int32_t>& eos = backend_->config().eos_token_ids;
  for (Pending& p : inbox) {
    HashScope scope = base_scope_;
    scope.tenant_salt = p.request.cache_salt;
    const RequestId id = p.request.id;
    const SessionId session = p.request.session;
    auto owned = std::make_unique<Sequence>(std::move(p.request), pool_.block_size(), scope, eos,
                                            tokenizer_);
    Sequence* seq = owned.get();
    seq->blocks_bound = BlocksBound(seq->request);
    seqs_[id] = std::move(owned);  // in flight from here: the lower tiers spare its session
    if (session != 0) {
      in_flight_sessions_.insert(
          std::upper_bound(in_flight_sessions_.begin(), in_flight_sessions_.end(), session),
          session);
    }
    seq->submit_us = p.submit_us;
    seq->program_arrival_us = p.submit_us;
    // The session's next turn: its retained blocks go back to the cache, where this
    // request's MatchPrefix finds them.
    if (session != 0) BeginTurn(session, seq);
    if (seq->request.episode && ServeFromEpisode(seq)) continue;
    QueueFullKvTurn(seq);
  }
  for (RequestId id : cancels) {
    auto it = seqs_.find(id);
    if (it == seqs_.end()) continue;  // unknown or already finished
    Finish(it->second.get(), FinishReason::kCancelled, Status::Cancelled("cancelled"));
  }
}

void EngineImpl::QueueFullKvTurn(Sequence* seq) {
  const HashScope& scope = seq->table.scope();
  if (disk_worker_ != nullptr) {  // bring the prefix's disk blocks up before admission
    std::span<const int32_t> context(seq->tokens.data(), seq->tokens.size() - 1);
    if (remote_ != nullptr) {  // the part no local tier knows, staged through disk
      seq->remote_blocks_loaded =
          StageRemotePrefix(context, scope, remote_.get(), &pool_, disk_worker_.get());
    }
    const int32_t planned = pool_.PlanDiskLoads(context, scope);
    seq->disk_blocks_loaded += planned;  // plus any tool_end started (BeginTurn)
    outstanding_disk_reads_ += planned;
  }
  if (seq->disk_blocks_loaded > 0) {
    awaiting_disk_.push_back({seq, seq->submit_us + options_.disk_read_deadline_us});
  } else {
    scheduler_.Add(seq);
  }
}

void EngineImpl::SampleAndPostprocess(const ScheduledBatch& batch) {
  const int32_t vocab = backend_->config().vocab_size;
  const float* logits = runner_.logits().data();
  for (const ScheduledSeq& s : batch.seqs) {
    if (!s.sample) continue;
    Sequence* seq = s.seq;
    const float* row = logits;
    logits += vocab;
    const int64_t index = seq->num_generated();  // index of the token chosen now
    int32_t token;
    StopChecker::Outcome outcome;
    if (seq->has_forced()) {
      token = seq->request.forced[index];
      outcome = seq->stop.OnForced(token, index + 1 == std::ssize(seq->request.forced));
    } else {
      token = seq->sampler.Sample(row, vocab);
      outcome = seq->stop.OnSampled(token, index + 1);
    }
    seq->tokens.push_back(token);
    if (outcome.finish == FinishReason::kNone && seq->num_tokens() >= max_context_tokens_) {
      outcome.text += seq->stop.Flush();
      outcome.finish = FinishReason::kLength;
    }
    EmitToken(seq, token, std::move(outcome.text));
    if (outcome.finish != FinishReason::kNone) Finish(seq, outcome.finish);
  }
}

void EngineImpl::EmitToken(Sequence* seq, int32_t token, std::string text) {
  const int64_t now = clock_->NowMicros();
  if (!seq->first_token_us) {
    seq->first_token_us = now;
    seq->usage.ttft_ms = (now - seq->submit_us) / 1000.0;
  }
  seq->usage.decode_ms = (now - *seq->first_token_us) / 1000.0;
  ++seq->usage.generated_tokens;
  GenerateEvent ev;
  ev.kind = GenerateEvent::Kind::kToken;
  ev.token = token;
  ev.text = std::move(text);
  outbox_.push_back({seq, std::move(ev)});
}

void EngineImpl::Finish(Sequence* seq, FinishReason reason, Status error) {
  std::erase_if(awaiting_disk_, [&](const AwaitingDisk& a) { return a.seq == seq; });
  DropEpisodeBuild(seq);
  seq->usage.kv_blocks = seq->table.num_blocks();
  if (!seq->episode_key.empty()) {  // an episode turn: its cache goes back, not retained
    FinishEpisodeTurn(seq);
  } else if (reason == FinishReason::kStop || reason == FinishReason::kLength) {
    Retain(seq);
  }
  scheduler_.Remove(seq);
  seq->usage.prompt_tokens = seq->usage.cached_tokens + seq->usage.recomputed_tokens;
  totals_.prompt_tokens += seq->usage.prompt_tokens;
  totals_.cached_tokens += seq->usage.cached_tokens;
  totals_.cached_device_tokens += seq->usage.cached_device_tokens;
  totals_.cached_host_tokens += seq->usage.cached_host_tokens;
  totals_.cached_disk_tokens += seq->usage.cached_disk_tokens;
  totals_.cached_remote_tokens += seq->usage.cached_remote_tokens;
  totals_.recomputed_tokens += seq->usage.recomputed_tokens;
  totals_.generated_tokens += seq->usage.generated_tokens;
  GenerateEvent ev;
  ev.kind = GenerateEvent::Kind::kFinished;
  ev.finish_reason = reason;
  ev.usage = seq->usage;
  ev.error = std::move(error);
  spdlog::debug(
      "engine: request {} finished ({}), prompt {} = cached {} + recomputed {}, "
      "generated {}",
      seq->id(), FinishReasonName(reason), ev.usage.prompt_tokens, ev.usage.cached_tokens,
      ev.usage.recomputed_tokens, ev.usage.generated_tokens);
  outbox_.push_back({seq, std::move(ev)});
  if (const SessionId session = seq->request.session; session != 0) {
    in_flight_sessions_.erase(
        std::lower_bound(in_flight_sessions_.begin(), in_flight_sessions_.end(), session));
  }
  auto it = seqs_.find(seq->id());
  done_.push_back(std::move(it->second));
  seqs_.erase(it);
}

void EngineImpl::EmitEvents() {
  for (Outgoing& out : outbox_) out.seq->request.on_event(out.event);
  outbox_.clear();
  if (!done_.empty()) {
    std::lock_guard<std::mutex> lock(mu_);
    for (const auto& seq : done_) in_flight_.erase(seq->id());
  }
  done_.clear();
}

void EngineImpl::PublishStats() {
  const BlockPoolStats ps = pool_.stats();
  const RemoteTierStats remote_stats = remote_ != nullptr ? remote_->stats() : RemoteTierStats{};
  if (tool_stats_dirty_) {
    tool_stats_dirty_ = false;
    tool_keys_.clear();
    std::unordered_map<std::string, double> ttls;
    for (const auto& [key, ttl] : reclaim_policy_->LastTtls()) ttls[key] = ttl;
    for (ToolKeySummary& k : tool_stats_.Summaries()) {
      auto it = ttls.find(k.key);
      tool_keys_.push_back({std::move(k), it == ttls.end() ? -1.0 : it->second});
    }
  }
  std::lock_guard<std::mutex> lock(mu_);
  EngineStats& s = stats_;
  s = totals_;
  s.steps = steps_;
  s.running = scheduler_.num_running();
  s.waiting = scheduler_.num_waiting();
  s.blocks_total = ps.num_total;
  s.blocks_used = ps.num_in_use;
  s.blocks_cached = ps.num_cached;
  s.blocks_shared = ps.num_shared;
  s.evicted_blocks = ps.num_evictions;
  s.preemptions = scheduler_.num_preemptions();
  s.host_blocks_total = ps.host_total;
  s.host_blocks_used = ps.host_used;
  s.disk_blocks_total = ps.disk_total;
  s.disk_blocks_used = ps.disk_used;
  s.demoted_blocks = ps.num_demotions;
  s.promoted_blocks = ps.num_promotions;
  s.dropped_blocks = ps.num_dropped;
  s.disk_read_failures = disk_read_failures_;
  s.disk_write_failures = disk_worker_ ? disk_worker_->stats().write_failures : 0;
  s.remote = remote_stats;
  s.retained_sessions = static_cast<int64_t>(retained_.size());
  s.retained_blocks = 0;
  for (const auto& [id, r] : retained_) s.retained_blocks += r.table.num_blocks();
  s.reclaimed_sessions = reclaimed_sessions_;
  s.pin_violations = pin_violations_;
  s.pins_granted = pins_granted_;
  s.pins_used = pins_used_;
  s.pins_expired = pins_expired_;
  s.grace_pins_granted = grace_pins_granted_;
  s.grace_pins_bridged = grace_pins_bridged_;
  s.transfer_us = transfer_us_;
  s.episode_caches = episodes_.size();
  s.episode_builds = episode_builds_;
  s.episode_build_us = episode_build_us_;
  s.episode_turns = episode_turns_;
  s.episode_fallbacks = episode_fallbacks_ + scheduler_.num_episode_fallbacks();
  s.block_bytes = static_cast<int64_t>(backend_->block_bytes());
  s.policy = std::string(reclaim_policy_->name());
  const int64_t now = clock_->NowMicros();
  s.pinned_blocks = 0;
  for (const auto& [id, r] : retained_) {
    if (r.info.pinned && r.info.pin_deadline_us > now) s.pinned_blocks += r.table.num_blocks();
  }
  s.tool_keys = tool_keys_;
  s.tenants = TenantBlockStats();
  s.tenant_cap_releases = tenant_cap_releases_;
  has_work_ = scheduler_.has_work() || !awaiting_disk_.empty() || !building_.empty();
}

}  // namespace kvkeep

namespace kvkeep {

Status EngineImpl::RunTransfers() {
  if (pool_.transfers().empty()) return Status::OK();
  const int64_t start_us = clock_->NowMicros();
  Status st = RunTransferPlan();
  transfer_us_ += clock_->NowMicros() - start_us;
  return st;
}

Status EngineImpl::RunTransferPlan() {
  const TransferPlan& plan = pool_.transfers();
  using Kind = BlockTransfer::Kind;
  std::vector<std::pair<int32_t, int32_t>> run;  // consecutive swaps of one kind
  Kind run_kind = Kind::kSwapOut;
  // Both may be from an earlier step's plan: the forward pass orders itself after the swaps
  // it needs (Backend::SwapIn), so only the disk tier's host-side access waits on them.
  TransferFence& last_out = swap_out_fence_;
  TransferFence& last_in = swap_in_fence_;
  auto flush = [&]() -> Status {
    if (run.empty()) return Status::OK();
    if (run_kind == Kind::kSwapOut) {
      ASSIGN_OR_RETURN(last_out, backend_->SwapOut(run));
    } else {
      ASSIGN_OR_RETURN(last_in, backend_->SwapIn(run));
    }
    run.clear();
    return Status::OK();
  };
  for (const BlockTransfer& op : plan.ops) {
    if (op.kind == Kind::kSwapOut || op.kind == Kind::kSwapIn) {
      if (op.kind != run_kind) RETURN_IF_ERROR(flush());
      run_kind = op.kind;
      run.emplace_back(op.kind == Kind::kSwapOut ? op.device_block : op.host_slot,
                       op.kind == Kind::kSwapOut ? op.host_slot : op.device_block);
      continue;
    }
    RETURN_IF_ERROR(flush());
    // A host slot the disk touches may still be filling from a swap-out, or be read by a
    // swap-in whose slot was freed (this step's or, on an asynchronous backend, an earlier
    // one's).
    RETURN_IF_ERROR(backend_->WaitFence(last_out));
    RETURN_IF_ERROR(backend_->WaitFence(last_in));
    last_out = last_in = TransferFence{};
    if (op.kind == Kind::kDiskWrite) {
      const DiskWrite& w = plan.disk_writes[op.write];
      const uint8_t* bytes = backend_->host_block(op.host_slot);
      if (remote_ != nullptr) remote_->Put({w.hash, w.parent_hash, w.scope, w.tokens}, bytes);
      disk_worker_->Write({w.hash, w.parent_hash, w.scope, w.tokens},
                          std::vector<uint8_t>(bytes, bytes + backend_->block_bytes()));
    } else if (op.kind == Kind::kDiskRead) {
      disk_worker_->Read(op.hash, backend_->host_block(op.host_slot));
    } else {
      disk_worker_->Remove(op.hash);
    }
  }
  RETURN_IF_ERROR(flush());
  // The host slots swap-ins read are free for the next plan without a wait: the backend
  // orders a later swap into one after them (CUDA: CudaSwapQueue waits across its two
  // streams on a shared slot), and disk I/O waits on last_in first.
  pool_.FinishTransfers();
  return Status::OK();
}

void EngineImpl::CollectDiskReads(bool wait) {
  if (disk_worker_ == nullptr) return;
  if (wait) disk_worker_->WaitForCompletedRead(std::chrono::microseconds(kDiskPollUs));
  for (auto [hash, ok] : disk_worker_->TakeCompletedReads()) {
    pool_.FinishDiskRead(hash, ok);
    --outstanding_disk_reads_;
    if (!ok) ++disk_read_failures_;
  }
  if (awaiting_disk_.empty()) return;
  const int64_t now_us = clock_->NowMicros();
  std::erase_if(awaiting_disk_, [&](const AwaitingDisk& a) {
    Sequence* seq = a.seq;
    const bool episode = !seq->episode_key.empty();  // its cache's blocks, not its context
    const std::span<const int32_t> context =
        episode ? std::span<const int32_t>(seq->episode_key)
                : std::span<const int32_t>(seq->tokens.data(), seq->tokens.size() - 1);
    const int32_t loading = pool_.CountLoadingPrefix(
        context,
        episode ? EpisodeCacheDirectory::EpisodeScope(seq->table.scope()) : seq->table.scope());
    if (loading > 0 && now_us < a.deadline_us) return false;  // keep waiting, not recomputing
    if (loading > 0) {
      spdlog::debug("engine: request {}: {} disk blocks not read after {} us; recomputing them",
                    seq->id(), loading, now_us - seq->submit_us);
      ++disk_read_timeouts_;
    }
    if (episode) {
      const Status st = AdmitEpisodeTurn(seq);
      if (st.ok()) return true;
      spdlog::warn("engine: request {}: {}; full KV serves it", seq->id(), st.ToString());
      ++episode_fallbacks_;
      seq->episode_key.clear();
    }
    scheduler_.Add(seq);
    return true;
  });
}

// Write-through: a block is in the remote tier as soon as it is committed, so another
// instance can continue the session even while this one still holds it (or has died).
// Blocks the sequence matched when admitted are not sent again.
void EngineImpl::WriteThroughRemote(const ScheduledBatch& batch) {
  const int32_t bs = pool_.block_size();
  std::vector<uint8_t> bytes(backend_->block_bytes());
  for (const ScheduledSeq& s : batch.seqs) {
    Sequence* seq = s.seq;
    const BlockTable& t = seq->table;
    if (seq->remote_blocks_put < 0) {
      seq->remote_blocks_put = static_cast<int32_t>(
          std::min<int64_t>(seq->usage.cached_tokens / bs, t.num_hashed_blocks()));
    }
    const std::span<const BlockHash> hashes = t.block_hashes();
    for (int32_t i = seq->remote_blocks_put; i < t.num_hashed_blocks(); ++i) {
      if (!backend_->ReadBlock(t.block_ids()[i], bytes.data()).ok()) break;
      DiskBlockHeader h;
      h.hash = hashes[i];
      h.parent_hash = i == 0 ? kRootParentHash : hashes[i - 1];
      h.scope = t.scope();
      h.tokens.assign(seq->tokens.begin() + int64_t{i} * bs,
                      seq->tokens.begin() + int64_t{i + 1} * bs);
      remote_->Put(h, bytes.data());
      seq->remote_blocks_put = i + 1;
    }
  }
}

}  // namespace kvkeep
