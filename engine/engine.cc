#include <spdlog/spdlog.h>

#include <algorithm>
#include <climits>

#include "engine/engine_impl.h"

namespace kvkeep {

std::string_view FinishReasonName(FinishReason reason) {
  switch (reason) {
    case FinishReason::kNone:
      return "none";
    case FinishReason::kStop:
      return "stop";
    case FinishReason::kLength:
      return "length";
    case FinishReason::kCancelled:
      return "cancelled";
    case FinishReason::kError:
      return "error";
  }
  return "unknown";
}

namespace {

BlockPoolOptions PoolOptions(const Backend& backend, const EngineOptions& e,
                             int32_t num_disk_blocks) {
  BlockPoolOptions o;
  o.num_blocks = backend.kv_shape().num_blocks;
  o.block_size = backend.kv_shape().block_size;
  o.enable_prefix_caching = PolicyReusesKv(e.policy.name);
  o.num_host_blocks = e.num_host_blocks;
  o.num_disk_blocks = num_disk_blocks;
  o.max_host_blocks_per_tenant = e.max_host_blocks_per_tenant;
  o.max_disk_blocks_per_tenant = e.max_disk_blocks_per_tenant;
  return o;
}

SchedulerOptions SchedOptions(const EngineOptions& e, const Backend& backend) {
  SchedulerOptions o;
  o.defer_promoted_admissions = backend.SwapsOverlapCompute();
  o.max_batch_tokens = e.max_batch_tokens;
  o.prefill_chunk_tokens = e.prefill_chunk_tokens;
  o.max_running = e.max_running;
  o.max_blocks_per_tenant = e.max_device_blocks_per_tenant;
  return o;
}

}  // namespace

Result<std::unique_ptr<Engine>> Engine::Create(const EngineOptions& options,
                                               std::unique_ptr<Backend> backend,
                                               const Tokenizer* tokenizer, Clock* clock) {
  if (backend == nullptr) return Status::InvalidArgument("engine: no backend");
  if (clock == nullptr) return Status::InvalidArgument("engine: no clock");
  if (options.max_batch_tokens <= 0 || options.prefill_chunk_tokens <= 0 ||
      options.max_running <= 0) {
    return Status::InvalidArgument(
        "engine: max_batch_tokens, prefill_chunk_tokens and max_running must be positive");
  }
  if (backend->kv_shape().num_blocks <= 0) return Status::InvalidArgument("engine: empty pool");
  if (options.num_host_blocks < 0 || options.disk_bytes < 0) {
    return Status::InvalidArgument("engine: negative host or disk tier size");
  }
  if (options.disk_bytes > 0 && (options.num_host_blocks == 0 || options.disk_dir.empty())) {
    return Status::InvalidArgument("engine: a disk tier needs a host tier and a directory");
  }
  if (options.remote_tier && options.disk_bytes == 0) {
    return Status::InvalidArgument(
        "engine: a remote tier needs a disk tier (it stages through it)");
  }
  RETURN_IF_ERROR(ValidatePolicyName(options.policy.name));
  // The tier probe (MeasureTierBandwidths) may have allocated it already.
  if (options.num_host_blocks > 0 && backend->num_host_blocks() != options.num_host_blocks) {
    RETURN_IF_ERROR(backend->AllocateHostTier(options.num_host_blocks));
  }
  std::unique_ptr<DiskBlockStore> store;
  std::vector<DiskBlockHeader> found;
  int32_t num_disk_blocks = 0;
  if (options.disk_bytes > 0 && PolicyReusesKv(options.policy.name)) {
    store =
        std::make_unique<DiskBlockStore>(options.env ? options.env : DefaultEnv(), options.disk_dir,
                                         backend->kv_shape().block_size, backend->block_bytes());
    RETURN_IF_ERROR(store->Open().WithContext("disk tier"));
    num_disk_blocks = static_cast<int32_t>(std::min<int64_t>(
        options.disk_bytes / static_cast<int64_t>(store->file_bytes()), int64_t{1} << 30));
    int32_t num_bad = 0;
    ASSIGN_OR_RETURN(found, store->Scan(&num_bad));
    spdlog::info("disk tier {}: {} blocks found, {} bad dropped, room for {}", options.disk_dir,
                 found.size(), num_bad, num_disk_blocks);
  }
  auto engine = std::make_unique<EngineImpl>(options, std::move(backend), tokenizer, clock,
                                             std::move(store), num_disk_blocks);
  engine->AdoptDiskBlocks(found);
  return std::unique_ptr<Engine>(std::move(engine));
}

EngineImpl::EngineImpl(const EngineOptions& options, std::unique_ptr<Backend> backend,
                       const Tokenizer* tokenizer, Clock* clock,
                       std::unique_ptr<DiskBlockStore> disk_store, int32_t num_disk_blocks)
    : options_(options),
      tokenizer_(tokenizer),
      clock_(clock),
      backend_(std::move(backend)),
      pool_(PoolOptions(*backend_, options, num_disk_blocks)),
      scheduler_(SchedOptions(options, *backend_), &pool_),
      runner_(backend_.get()),
      disk_store_(std::move(disk_store)),
      tool_stats_(options.policy.tool_stats, clock),
      episodes_(static_cast<uint64_t>(clock->WallMicros())) {
  if (disk_store_ != nullptr) disk_worker_ = std::make_unique<DiskWorker>(disk_store_.get());
  if (disk_store_ != nullptr && options.remote_tier) {
    remote_ = std::make_unique<RemoteBlockStore>(*options.remote_tier, disk_store_.get());
  }
  tool_stats_.Load(options.tool_samples);
  SwitchPolicy(options.policy);
  scheduler_.set_reclaimer([this](int32_t shortfall, bool break_live_pins) {
    return ReclaimSessions(shortfall, break_live_pins);
  });
  pool_.SetTierVictimChooser(this);
  const KvPoolShape& shape = backend_->kv_shape();
  const int32_t max_pos = backend_->config().max_position_embeddings;
  max_context_tokens_ = int64_t{shape.num_blocks} * shape.block_size;
  if (max_pos > 0) max_context_tokens_ = std::min<int64_t>(max_context_tokens_, max_pos);
  base_scope_.model_id_hash = HashModelId(options.model_id);
  stats_.blocks_total = shape.num_blocks;
  PublishStats();  // the policy's name and the loaded tool statistics, before any step
}

EngineImpl::~EngineImpl() {
  Stop();
  if (disk_worker_ != nullptr) disk_worker_->WaitIdle();  // write-back finishes
}

void EngineImpl::AdoptDiskBlocks(const std::vector<DiskBlockHeader>& headers) {
  if (disk_store_ == nullptr) return;
  const std::vector<BlockHash> rejected = kvkeep::AdoptDiskBlocks(headers, &pool_);
  for (BlockHash h : rejected) disk_worker_->Remove(h);
  if (!headers.empty()) {
    spdlog::info("disk tier: adopted {} blocks, dropped {}", headers.size() - rejected.size(),
                 rejected.size());
  }
  PublishStats();
}

// ---- thread-safe entry points ---------------------------------------------------------

Status EngineImpl::Validate(const GenerateRequest& r) const {
  const int32_t vocab = backend_->config().vocab_size;
  if (r.prompt.empty()) return Status::InvalidArgument("empty prompt");
  auto out_of_vocab = [&](const std::vector<int32_t>& ids) {
    return std::any_of(ids.begin(), ids.end(), [&](int32_t t) { return t < 0 || t >= vocab; });
  };
  if (out_of_vocab(r.prompt) || out_of_vocab(r.forced)) {
    return Status::InvalidArgument("token id outside the vocabulary of " + std::to_string(vocab));
  }
  if (static_cast<int64_t>(r.prompt.size()) > max_context_tokens_) {
    const std::string what = "context of " + std::to_string(r.prompt.size()) +
                             " tokens exceeds the limit of " + std::to_string(max_context_tokens_);
    const int32_t max_pos = backend_->config().max_position_embeddings;
    // Larger than the device pool can ever hold: a resource limit, not a malformed request.
    if (max_pos <= 0 || static_cast<int64_t>(r.prompt.size()) <= max_pos) {
      return Status::ResourceExhausted(what + " (the KV pool)");
    }
    return Status::InvalidArgument(what + " (the model's positions)");
  }
  if (r.forced.empty() && r.stop.max_tokens < 1) {
    return Status::InvalidArgument("max_tokens must be at least 1");
  }
  if (const int64_t cap = options_.max_device_blocks_per_tenant; cap > 0) {
    if (const int64_t need = BlocksBound(r); need > cap) {
      return Status::ResourceExhausted("the request may hold " + std::to_string(need) +
                                       " KV blocks (prompt + max_tokens), over the cap of " +
                                       std::to_string(cap) + " device blocks per tenant");
    }
  }
  if (r.sampling.temperature < 0 || r.sampling.top_k < 0 || !(r.sampling.top_p > 0) ||
      r.sampling.top_p > 1) {
    return Status::InvalidArgument("sampling: need temperature >= 0, top_k >= 0, 0 < top_p <= 1");
  }
  if (tokenizer_ == nullptr && !r.stop.stop_strings.empty()) {
    return Status::InvalidArgument("stop strings need a tokenizer");
  }
  if (!r.on_event) return Status::InvalidArgument("request has no event callback");
  return Status::OK();
}

Status EngineImpl::Submit(GenerateRequest request) {
  RETURN_IF_ERROR(Validate(request));
  std::lock_guard<std::mutex> lock(mu_);
  if (stopped_) return Status::Unavailable("engine stopped");
  if (!in_flight_.insert(request.id).second) {
    return Status::InvalidArgument("request id " + std::to_string(request.id) + " is in flight");
  }
  inbox_.push_back(Pending{std::move(request), clock_->NowMicros()});
  cv_.notify_one();
  return Status::OK();
}

void EngineImpl::Hint(const SessionHint& hint) {
  std::lock_guard<std::mutex> lock(mu_);
  hints_.push_back(hint);
  cv_.notify_one();
}

Status EngineImpl::SetPolicy(const PolicyOptions& options) {
  RETURN_IF_ERROR(ValidatePolicyName(options.name));
  if (PolicyReusesKv(options.name) != PolicyReusesKv(options_.policy.name)) {
    return Status::InvalidArgument("switching the policy to or from 'none' needs a restart");
  }
  std::lock_guard<std::mutex> lock(mu_);
  pending_policy_ = options;
  cv_.notify_one();
  return Status::OK();
}

void EngineImpl::Cancel(RequestId id) {
  std::lock_guard<std::mutex> lock(mu_);
  cancels_.push_back(id);
  cv_.notify_one();
}

EngineStats EngineImpl::GetStats() const {
  std::lock_guard<std::mutex> lock(mu_);
  return stats_;
}

Status EngineImpl::Start() {
  std::lock_guard<std::mutex> lock(mu_);
  if (stopped_) return Status::Unavailable("engine stopped");
  if (thread_.joinable()) return Status::InvalidArgument("engine already started");
  thread_ = std::thread([this] { ThreadMain(); });
  return Status::OK();
}

void EngineImpl::Stop() {
  std::lock_guard<std::mutex> stop_lock(stop_mu_);
  {
    std::lock_guard<std::mutex> lock(mu_);
    stopped_ = true;
    cv_.notify_all();
  }
  if (thread_.joinable()) thread_.join();
  // The engine thread is gone (or never ran): finish everything here.
  DrainInbox();
  std::vector<Sequence*> all;
  for (auto& [id, seq] : seqs_) all.push_back(seq.get());
  for (Sequence* seq : all)
    Finish(seq, FinishReason::kCancelled, Status::Cancelled("engine stopped"));
  EmitEvents();
  PublishStats();
}

bool EngineImpl::HasWorkLocked() const {
  return !inbox_.empty() || !cancels_.empty() || !hints_.empty() || pending_policy_.has_value() ||
         has_work_;
}

void EngineImpl::ThreadMain() {
  spdlog::debug("engine: thread started");
  while (true) {
    {
      std::unique_lock<std::mutex> lock(mu_);
      cv_.wait(lock, [&] { return stopped_ || HasWorkLocked(); });
      if (stopped_) break;
    }
    if (Status st = Step(); !st.ok()) spdlog::error("engine step: {}", st.ToString());
  }
  spdlog::debug("engine: thread stopped");
}

Status EngineImpl::RunUntilIdle() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (thread_.joinable()) return Status::InvalidArgument("engine thread running; use events");
  }
  while (true) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (!HasWorkLocked()) return Status::OK();
    }
    RETURN_IF_ERROR(Step());
  }
}

}  // namespace kvkeep
