// EngineImpl's episode turns (issue 13; docs/episodes.md "Serving from episode caches"):
// a request with GenerateRequest::episode is decoded on top of its episode's compressed
// KV. Engine thread only.
//
// Life of a cache: built here (EpisodeCompressor into BlockPool blocks) when a routed turn
// finds no usable one. The build is engine work done in steps: each engine step runs one
// step of the oldest build (a prefill run of at most a prefill chunk, or a run of a
// block's scoring, then its compaction) beside the scheduled batch, so other sequences
// keep decoding; the step's tokens are charged to max_batch_tokens after the decodes
// (Scheduler::Schedule), so batch and build together stay within it. The turn waits until
// its cache is built. The cache is registered in the pool under its
// own key (engine/episode_cache_directory.h) and released, so its blocks are cached
// and owned by the session: the device keeps them while it has room, eviction demotes
// them to the host tier and then to disk, and a routed turn promotes them back
// (MatchPrefix swaps host blocks in; disk blocks are read up first, PlanDiskLoads). A
// turn's sequence holds the cache's blocks with the cache's entries as its computed
// tokens and KvView {num_kept, history, layer_kept}; the cache's partial last block is
// copied on write (PrepareAppend), so turns never change the cache.
#include <spdlog/spdlog.h>

#include <algorithm>

#include "engine/engine_impl.h"

namespace kvkeep {
namespace {

Status ValidateEpisode(const GenerateRequest& r, int32_t block_size, bool prefix_caching,
                       int32_t vocab) {
  const EpisodeServeRequest& e = *r.episode;
  if (r.session == 0) return Status::InvalidArgument("an episode turn needs a session");
  if (!prefix_caching) {
    return Status::NotSupported("episode caches need prefix caching (the policy is none)");
  }
  if (block_size < EpisodeCacheDirectory::kMinBlockSize) {
    return Status::NotSupported("episode caches need blocks of at least 9 tokens");
  }
  if (e.history_tokens <= 0 || e.history_tokens >= static_cast<int64_t>(r.prompt.size())) {
    return Status::InvalidArgument("episode turn: history_tokens outside the prompt");
  }
  if (e.query.empty() || e.budget_tokens < 1 || e.block_tokens < 1) {
    return Status::InvalidArgument("episode turn: empty P_e, or budget or block below 1");
  }
  if (std::any_of(e.query.begin(), e.query.end(), [&](int32_t t) { return t < 0 || t >= vocab; })) {
    return Status::InvalidArgument("episode turn: P_e has a token outside the vocabulary");
  }
  return Status::OK();
}

}  // namespace

bool EngineImpl::ServeFromEpisode(Sequence* seq) {
  const GenerateRequest& r = seq->request;
  const EpisodeServeRequest& e = *r.episode;
  const int32_t bs = pool_.block_size();
  const HashScope scope = EpisodeCacheDirectory::EpisodeScope(seq->table.scope());
  Status st = [&]() -> Status {
    RETURN_IF_ERROR(
        ValidateEpisode(r, bs, pool_.prefix_caching_enabled(), backend_->config().vocab_size));
    const int64_t tail_limit = e.rebuild_tail_tokens >= 0 ? e.rebuild_tail_tokens : e.block_tokens;
    const EpisodeCacheRecord* rec = episodes_.Find(r.session, e.episode);
    bool usable = rec != nullptr && rec->id.version == e.version &&
                  rec->budget_tokens == e.budget_tokens && rec->block_tokens == e.block_tokens &&
                  rec->layer_budget_tokens == e.layer_budget_tokens &&
                  rec->history_tokens <= e.history_tokens &&
                  e.history_tokens - rec->history_tokens <= tail_limit &&
                  rec->query_hash == EpisodeCacheDirectory::HistoryHash(e.query) &&
                  rec->history_hash == EpisodeCacheDirectory::HistoryHash(std::span<const int32_t>(
                                           r.prompt.data(), rec->history_tokens));
    TierCounts where;
    if (usable) {
      where = pool_.ProbePrefix(EpisodeCacheDirectory::KeyTokens(*rec, bs), scope);
      usable = where.total() == rec->num_blocks;  // else partly dropped: rebuild
    }
    if (!usable) return StartEpisodeBuild(seq, scope);  // the turn waits for its build
    seq->episode_key = EpisodeCacheDirectory::KeyTokens(*rec, bs);
    seq->episode_view = KvView{rec->num_kept, rec->history_tokens, rec->layer_kept};
    if (where.disk > 0 && disk_worker_ != nullptr) {  // read up first, like a prefix
      const int32_t planned = pool_.PlanDiskLoads(seq->episode_key, scope);
      seq->disk_blocks_loaded += planned;
      outstanding_disk_reads_ += planned;
      if (planned > 0) {
        awaiting_disk_.push_back({seq, seq->submit_us + options_.disk_read_deadline_us});
        return Status::OK();
      }
    }
    return AdmitEpisodeTurn(seq);
  }();
  if (st.ok()) return true;
  spdlog::warn(
      "engine: request {} of session {}: episode {} not served from its cache ({}); full KV "
      "serves it",
      r.id, r.session, e.episode, st.ToString());
  ++episode_fallbacks_;
  seq->episode_key.clear();
  return false;
}

Status EngineImpl::AdmitEpisodeTurn(Sequence* seq) {
  const std::vector<int32_t>& key = seq->episode_key;
  const KvView view = seq->episode_view;
  const int32_t num_blocks =
      BlockTable::NumBlocksForTokens(static_cast<int64_t>(key.size()), pool_.block_size());
  if (num_blocks > pool_.num_allocatable()) {  // room to promote: retained sessions give way
    ReclaimSessions(num_blocks - pool_.num_allocatable(), /*break_live_pins=*/false);
  }
  TierCounts tiers;
  BlockTable table =
      pool_.MatchPrefix(key, EpisodeCacheDirectory::EpisodeScope(seq->table.scope()), &tiers);
  if (table.num_tokens() != static_cast<int64_t>(key.size())) {
    pool_.Free(&table);
    return Status::Unavailable("the episode cache's blocks are gone (dropped or no device room)");
  }
  pool_.Release(table.Truncate(view.num_restored));  // the partial last block stays (CoW)
  const std::vector<int32_t>& prompt = seq->request.prompt;
  std::vector<int32_t> tokens(key.begin(), key.begin() + view.num_restored);
  tokens.insert(tokens.end(), prompt.begin() + view.next_position, prompt.end());
  seq->tokens = std::move(tokens);
  seq->num_prompt_tokens = seq->num_tokens();
  seq->table = std::move(table);
  seq->kv_view = view;
  seq->matched_tiers = tiers;
  seq->usage.from_episode_cache = true;
  ++episode_turns_;
  scheduler_.Add(seq);
  return Status::OK();
}

Status EngineImpl::StartEpisodeBuild(Sequence* seq, HashScope scope) {
  const GenerateRequest& r = seq->request;
  const EpisodeServeRequest& e = *r.episode;
  const int32_t bs = pool_.block_size();
  CompressOptions options;
  options.budget_tokens = e.budget_tokens;
  options.block_tokens = e.block_tokens;
  options.step_tokens = options_.prefill_chunk_tokens;  // a step stalls others like a chunk
  options.layer_budget_tokens = e.layer_budget_tokens;
  const int32_t needed = CompressBlocksNeeded(options, static_cast<int32_t>(e.query.size()), bs);
  if (needed > pool_.num_allocatable()) {
    ReclaimSessions(needed - pool_.num_allocatable(), /*break_live_pins=*/false);
  }
  EpisodeBuild build{.seq = seq,
                     .table = BlockTable(bs, scope),
                     .compressor = std::make_unique<EpisodeCompressor>(backend_.get())};
  std::vector<BlockCopy> copies;  // none: the table is empty
  RETURN_IF_ERROR(pool_.PrepareAppend(&build.table, int64_t{needed} * bs, &copies)
                      .WithContext("episode cache of " + std::to_string(needed) + " blocks"));
  Status st = RunTransfers();  // blocks taken from the cache are demoted before reuse
  if (st.ok()) {
    std::span<const int32_t> history(r.prompt.data(), static_cast<size_t>(e.history_tokens));
    st = build.compressor->Start(
        history, e.query, options,
        std::vector<int32_t>(build.table.block_ids().begin(), build.table.block_ids().end()),
        EpisodeCacheId{r.session, e.episode, e.version});
  }
  if (!st.ok()) {
    pool_.Free(&build.table);
    return st;
  }
  building_.push_back(std::move(build));
  return Status::OK();
}

int32_t EngineImpl::EpisodeBuildStepTokens() const {
  return building_.empty() ? -1 : building_.front().compressor->NextStepTokens();
}

void EngineImpl::AdvanceEpisodeBuild(int32_t wanted_tokens, int32_t granted_tokens) {
  if (building_.empty() || wanted_tokens < 0) return;   // (a build started after Schedule)
  if (wanted_tokens > 0 && granted_tokens < 1) return;  // the decodes took the whole step
  EpisodeBuild& build = building_.front();
  const int64_t start_us = clock_->NowMicros();
  Status st = build.compressor->Advance(std::max(granted_tokens, 1));
  build.work_us += clock_->NowMicros() - start_us;
  if (st.ok() && !build.compressor->done()) return;
  Sequence* seq = build.seq;
  if (st.ok()) st = FinishEpisodeBuild(&build);
  pool_.Free(&build.table);  // (after a registration: already free, the cache is cached)
  building_.pop_front();
  if (st.ok()) st = AdmitEpisodeTurn(seq);
  if (st.ok()) return;
  spdlog::warn(
      "engine: request {} of session {}: episode {} not served from its cache ({}); full KV "
      "serves it",
      seq->id(), seq->request.session, seq->request.episode->episode, st.ToString());
  ++episode_fallbacks_;
  seq->episode_key.clear();
  QueueFullKvTurn(seq);
}

Status EngineImpl::FinishEpisodeBuild(EpisodeBuild* build) {
  Sequence* seq = build->seq;
  const GenerateRequest& r = seq->request;
  const EpisodeServeRequest& e = *r.episode;
  const int32_t bs = pool_.block_size();
  BlockTable& table = build->table;
  const EpisodeCache cache = build->compressor->TakeCache();
  EpisodeCacheRecord rec;
  rec.id = cache.id;
  rec.generation = episodes_.NextGeneration();
  rec.num_kept = cache.num_kept;
  rec.history_tokens = cache.history_tokens;
  rec.history_hash = EpisodeCacheDirectory::HistoryHash(
      std::span<const int32_t>(r.prompt.data(), rec.history_tokens));
  rec.query_hash = EpisodeCacheDirectory::HistoryHash(e.query);
  rec.budget_tokens = e.budget_tokens;
  rec.block_tokens = e.block_tokens;
  rec.layer_budget_tokens = e.layer_budget_tokens;
  rec.layer_kept = cache.layer_kept;
  rec.num_blocks = BlockTable::NumBlocksForTokens(rec.num_kept, bs);
  table.AdvanceTokens(table.capacity_tokens());
  pool_.Release(table.Truncate(int64_t{rec.num_blocks} * bs));
  pool_.CommitFullBlocks(&table, EpisodeCacheDirectory::KeyTokens(rec, bs));
  const bool registered = table.num_hashed_blocks() == rec.num_blocks;
  pool_.SetOwner(table, r.session);  // the lower tiers reclaim it with its session
  pool_.Free(&table);                // cached: demotable, found by its key
  if (!registered) return Status::Internal("episode cache key already registered");
  ++episode_builds_;
  episode_build_us_ += build->work_us;
  spdlog::info(
      "engine: session {} episode {} v{}: cache of {} entries from {} history tokens (M {}, B "
      "{}, |P_e| {}) built in {} steps, {:.1f} ms of work",
      r.session, e.episode, e.version, rec.num_kept, rec.history_tokens, e.budget_tokens,
      e.block_tokens, e.query.size(), build->compressor->steps(), build->work_us / 1000.0);
  const EpisodeCacheRecord& added = episodes_.Add(rec);
  seq->episode_key = EpisodeCacheDirectory::KeyTokens(added, bs);
  seq->episode_view = KvView{added.num_kept, added.history_tokens, added.layer_kept};
  return Status::OK();
}

void EngineImpl::DropEpisodeBuild(Sequence* seq) {
  for (auto it = building_.begin(); it != building_.end(); ++it) {
    if (it->seq != seq) continue;
    pool_.Free(&it->table);
    building_.erase(it);
    return;
  }
}

void EngineImpl::FinishEpisodeTurn(Sequence* seq) {
  const SessionId session = seq->request.session;
  pool_.SetOwner(seq->table, session);  // its cache's blocks go back, owned by the session
  // Known to the tiers' reclaim (ChooseTierVictims) like a released retained session, so
  // its cache is not taken for a closed session's.
  SessionReclaimInfo& info = session_info_[session];
  info.session = session;
  info.last_use_us = clock_->NowMicros();
  info.context_tokens = seq->table.num_tokens();
  ++info.use_count;
}

}  // namespace kvkeep
