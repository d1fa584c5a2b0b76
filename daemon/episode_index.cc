#include "daemon/episode_index.h"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <chrono>

#include "index/embedder.h"

namespace kvkeep {

namespace {

int64_t BytesOf(const std::vector<IndexedMessage>& messages) {
  int64_t n = 0;
  for (const auto& m : messages) n += static_cast<int64_t>(m.content.size() + m.role.size() + 32);
  return n;
}

}  // namespace

Result<std::unique_ptr<EpisodeIndex>> EpisodeIndex::Create(EpisodeOptions options, Env* env,
                                                           Store* store, Clock* clock) {
  std::unique_ptr<EpisodeIndex> idx(new EpisodeIndex(options, store, clock));
  std::string resolved = options.embedder.name;
  if (resolved == "default") {  // as MakeEmbedder resolves it, without loading twice
    const std::string dir = options.embedder.model_dir.empty() ? DefaultSentenceModelDir(env)
                                                               : options.embedder.model_dir;
    resolved = env->FileExists(JoinPath(dir, "model.safetensors")) ? "hybrid" : "hashed";
  }
  if (resolved != "hashed" && resolved != "bert" && resolved != "hybrid") {
    return Status::InvalidArgument("unknown embedder '" + options.embedder.name +
                                   "' (hashed, bert, hybrid, default)");
  }
  if (resolved == "hybrid" &&
      !(options.embedder.dense_weight > 0.0f && options.embedder.dense_weight < 1.0f)) {
    return Status::InvalidArgument("hybrid: dense weight must be in (0, 1)");
  }
  idx->embedder_name_ = resolved;
  const int32_t hashed_dim = options.embedder.hashed.dim;
  if (resolved == "hashed") {
    idx->dim_ = hashed_dim;
  } else {
    EmbedderSpec bert = options.embedder;
    bert.name = "bert";
    ASSIGN_OR_RETURN(idx->dense_, MakeEmbedder(env, bert));
    if (resolved == "bert") {
      idx->dim_ = idx->dense_->dim();
    } else {
      idx->dense_weight_ = options.embedder.dense_weight;
      idx->dim_ = idx->dense_->dim() + hashed_dim;
    }
  }
  idx->worker_ = std::thread([p = idx.get()] { p->WorkerLoop(); });
  spdlog::info("episodes: embedder {} ({} dimensions), budget {} tokens", resolved, idx->dim_,
               options.budget_tokens);
  return idx;
}

EpisodeIndex::EpisodeIndex(EpisodeOptions options, Store* store, Clock* clock)
    : options_(std::move(options)), store_(store), clock_(clock) {}

EpisodeOptions MakeEpisodeOptions(const DaemonEpisodeOptions& daemon) {
  EpisodeOptions o;
  o.embedder.name = daemon.embedder;
  o.budget_tokens = daemon.budget_tokens;
  o.clustering.cluster.num_episodes = daemon.num_episodes;
  o.route_wait_ms = daemon.route_wait_ms;
  return o;
}

EpisodeIndex::~EpisodeIndex() {
  {
    std::lock_guard<std::mutex> lock(queue_mu_);
    stopping_ = true;
    abandon_.store(true, std::memory_order_relaxed);
    if (!queue_.empty()) {
      spdlog::info("episodes: {} queued jobs dropped at shutdown; indexed at the next start",
                   queue_.size());
    }
    queue_.clear();
    queued_bytes_ = 0;
  }
  queue_cv_.notify_all();
  if (worker_.joinable()) worker_.join();
  std::vector<Key> keys;
  {
    std::lock_guard<std::mutex> lock(states_mu_);
    for (const auto& [key, s] : states_) keys.push_back(key);
  }
  for (const Key& key : keys) SaveSession(key, /*force=*/true);  // only the dirty ones
}

SessionEpisodes EpisodeIndex::NewState() const {
  SessionEpisodes s;
  s.embedder = embedder_name_;
  s.dim = dim_;
  s.window_messages = std::max(options_.segmenter.window_messages, 1);
  auto created = index::VectorIndex::Create(dim_, options_.vectors);
  if (created.ok()) s.segment_index = std::move(created).value();
  return s;
}

int64_t EpisodeIndex::BudgetOf(const SessionEpisodes& s) const {
  return s.budget_tokens >= 0 ? s.budget_tokens : options_.budget_tokens;
}

void EpisodeIndex::Enqueue(Job job) {
  {
    std::lock_guard<std::mutex> lock(queue_mu_);
    if (job.kind == Job::Kind::kAppend) {
      bool& behind = behind_[job.key];
      if (behind || queued_bytes_ + job.bytes > options_.max_queued_bytes) {
        if (!behind) {
          spdlog::warn("episodes: queue full ({} bytes); session '{}' falls behind until restart",
                       queued_bytes_, job.key.second);
        }
        behind = true;
        return;
      }
    }
    queued_bytes_ += job.bytes;
    queue_.push_back(std::move(job));
  }
  queue_cv_.notify_one();
}

void EpisodeIndex::Load(uint32_t uid, const std::string& session,
                        std::vector<IndexedMessage> messages, int64_t total_tokens) {
  Job job{Job::Kind::kLoad, {uid, session}, std::move(messages), total_tokens};
  Enqueue(std::move(job));
}

void EpisodeIndex::Append(uint32_t uid, const std::string& session,
                          std::vector<IndexedMessage> messages, int64_t total_tokens) {
  const int64_t bytes = BytesOf(messages);
  Job job{Job::Kind::kAppend, {uid, session}, std::move(messages), total_tokens, -1, bytes};
  Enqueue(std::move(job));
}

void EpisodeIndex::SetBudget(uint32_t uid, const std::string& session, int64_t budget_tokens) {
  Job job{Job::Kind::kBudget, {uid, session}};
  job.budget_tokens = budget_tokens;
  Enqueue(std::move(job));
}

void EpisodeIndex::Forget(uint32_t uid, const std::string& session) {
  Enqueue(Job{Job::Kind::kForget, {uid, session}});
}

void EpisodeIndex::Unload(uint32_t uid, const std::string& session) {
  Enqueue(Job{Job::Kind::kUnload, {uid, session}});
}

void EpisodeIndex::WaitIdle() {
  std::unique_lock<std::mutex> lock(queue_mu_);
  idle_cv_.wait(lock, [&] { return queue_.empty() && !busy_; });
}

void EpisodeIndex::WorkerLoop() {
  std::unique_lock<std::mutex> lock(queue_mu_);
  for (;;) {
    queue_cv_.wait(lock, [&] { return stopping_ || !queue_.empty(); });
    if (queue_.empty()) return;  // stopping, and drained
    Job job = std::move(queue_.front());
    queue_.pop_front();
    busy_ = true;
    busy_key_ = job.key;
    lock.unlock();
    RunJob(job);
    lock.lock();
    if (!stopping_) queued_bytes_ -= job.bytes;
    busy_ = false;
    job_done_cv_.notify_all();
    if (queue_.empty()) idle_cv_.notify_all();
  }
}

void EpisodeIndex::RunJob(Job& job) {
  const Key& key = job.key;
  switch (job.kind) {
    case Job::Kind::kForget: {
      std::lock_guard<std::mutex> lock(states_mu_);
      states_.erase(key);
      open_windows_.erase(key);
      return;
    }
    case Job::Kind::kUnload: {
      SaveSession(key, /*force=*/true);
      std::lock_guard<std::mutex> lock(states_mu_);
      states_.erase(key);
      open_windows_.erase(key);
      return;
    }
    case Job::Kind::kBudget: {
      {
        std::lock_guard<std::mutex> lock(states_mu_);
        auto [it, fresh] = states_.try_emplace(key);
        if (fresh) it->second = NewState();
        it->second.budget_tokens = job.budget_tokens;
        it->second.dirty = true;
      }
      SaveSession(key, /*force=*/true);
      return;
    }
    case Job::Kind::kSave:
      SaveSession(key, /*force=*/true);
      return;
    case Job::Kind::kLoad: {
      SessionEpisodes restored = NewState();
      auto blob = store_->GetEpisodeBlob(key.first, key.second);
      std::string why;
      if (!blob.ok()) {
        why = blob.status().ToString();
      } else if (*blob) {
        auto decoded = DecodeSessionEpisodes(**blob, options_.vectors);
        if (!decoded.ok()) {
          why = decoded.status().ToString();
        } else if (decoded->embedder != embedder_name_ || decoded->dim != dim_ ||
                   decoded->window_messages != restored.window_messages) {
          why = "made with embedder " + decoded->embedder + " (" + std::to_string(decoded->dim) +
                " dimensions); this daemon uses " + embedder_name_;
        } else if (decoded->indexed_messages > static_cast<int64_t>(job.messages.size())) {
          why = "covers more messages than the session holds";
        } else {
          restored = std::move(decoded).value();
        }
      }
      if (!why.empty()) {
        spdlog::error(
            "episodes: session '{}' (uid {}): stored index unusable ({}); rebuilding "
            "from its {} stored messages",
            key.second, key.first, why, job.messages.size());
      }
      const auto from = static_cast<size_t>(restored.indexed_messages);
      {
        std::lock_guard<std::mutex> lock(states_mu_);
        restored.total_tokens = job.total_tokens;
        restored.dirty = !why.empty();
        // The partial window's messages come from the stored history.
        const size_t w = static_cast<size_t>(restored.window_messages);
        const size_t windowed = static_cast<size_t>(restored.num_windows()) * w;
        std::vector<IndexedMessage> open(
            job.messages.begin() + static_cast<ptrdiff_t>(std::min(windowed, from)),
            job.messages.begin() + static_cast<ptrdiff_t>(from));
        open_windows_[key] = std::move(open);
        states_[key] = std::move(restored);
      }
      // A rebuild does not observe again: the tenant's stored IDF has seen these messages.
      if (Status st = IndexMessages(key, job.messages, from, /*observe=*/why.empty()); !st.ok()) {
        spdlog::error("episodes: session '{}': {}", key.second, st.ToString());
      }
      SaveSession(key, /*force=*/!why.empty());
      return;
    }
    case Job::Kind::kAppend: {
      {
        std::lock_guard<std::mutex> lock(states_mu_);
        auto [it, fresh] = states_.try_emplace(key);
        if (fresh) it->second = NewState();
        it->second.total_tokens = job.total_tokens;
      }
      if (Status st = IndexMessages(key, job.messages, 0, /*observe=*/true); !st.ok()) {
        spdlog::error("episodes: session '{}': {}", key.second, st.ToString());
      }
      SaveSession(key, /*force=*/false);
      return;
    }
  }
}

void EpisodeIndex::WaitForSessionJobs(const Key& key) {
  bool own_budget = false;
  {
    std::lock_guard<std::mutex> lock(states_mu_);
    auto it = states_.find(key);
    own_budget = it != states_.end() && it->second.budget_tokens > 0;
  }
  std::unique_lock<std::mutex> lock(queue_mu_);
  auto of_key = [&](const Job& j) { return j.key == key; };
  const bool budget_queued = std::any_of(queue_.begin(), queue_.end(), [&](const Job& j) {
    return j.key == key && j.kind == Job::Kind::kBudget;
  });
  // No budget anywhere: the turn is not routed, whatever the index says.
  if (options_.budget_tokens <= 0 && !own_budget && !budget_queued) return;
  auto pending = [&] {
    return (busy_ && busy_key_ == key) || std::any_of(queue_.begin(), queue_.end(), of_key);
  };
  if (!pending()) return;
  const auto start = std::chrono::steady_clock::now();
  const bool done = job_done_cv_.wait_for(lock, std::chrono::milliseconds(options_.route_wait_ms),
                                          [&] { return stopping_ || !pending(); });
  const double waited_ms =
      std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count();
  if (!done) {
    spdlog::warn(
        "episodes: session '{}': its messages are not indexed after {:.0f} ms; routing "
        "with what is",
        key.second, waited_ms);
  } else {
    spdlog::debug("episodes: session '{}': waited {:.1f} ms for indexing before routing",
                  key.second, waited_ms);
  }
}

}  // namespace kvkeep
