// EpisodeIndex: embedding, indexing, saving, and the query / route / info side.
#include <spdlog/spdlog.h>

#include <algorithm>

#include "daemon/episode_index.h"
#include "index/embedder.h"

namespace kvkeep {

namespace {
constexpr size_t kEmbedChunk = 8;  // texts embedded per hold of embed_mu_
}  // namespace

EpisodeIndex::Tenant& EpisodeIndex::TenantLocked(uint32_t uid) {
  auto& slot = tenants_[uid];
  if (slot) return *slot;
  slot = std::make_unique<Tenant>();
  slot->hashed = std::make_unique<index::HashedEmbedder>(options_.embedder.hashed);
  auto blob = store_->GetEpisodeBlob(uid, "");
  if (!blob.ok()) {
    spdlog::error("episodes: uid {}: reading the stored IDF: {}", uid, blob.status().ToString());
  } else if (*blob) {
    auto idf = DecodeIdf(**blob);
    Status st = idf.ok() ? slot->hashed->SetIdfState(idf->num_observed, std::move(idf->doc_freq))
                         : idf.status();
    if (!st.ok()) {
      spdlog::error("episodes: uid {}: stored IDF unusable ({}); learning it afresh", uid,
                    st.ToString());
    }
  }
  return *slot;
}

Result<std::vector<float>> EpisodeIndex::EmbedFor(uint32_t uid,
                                                  const std::vector<std::string>& texts,
                                                  bool observe) {
  std::vector<float> out;
  out.reserve(texts.size() * static_cast<size_t>(dim_));
  if (observe && embedder_name_ != "bert") {  // all of them first: one IDF for the batch
    std::lock_guard<std::mutex> lock(embed_mu_);
    Tenant& t = TenantLocked(uid);
    t.hashed->Observe(texts);
    t.dirty = true;
  }
  for (size_t at = 0; at < texts.size(); at += kEmbedChunk) {
    if (abandon_.load(std::memory_order_relaxed)) {
      return Status::Cancelled("shutting down; indexed from the stored messages at the next start");
    }
    std::vector<std::string> chunk(
        texts.begin() + static_cast<ptrdiff_t>(at),
        texts.begin() + static_cast<ptrdiff_t>(std::min(texts.size(), at + kEmbedChunk)));
    std::lock_guard<std::mutex> lock(embed_mu_);
    std::vector<float> rows;
    if (embedder_name_ == "bert") {
      ASSIGN_OR_RETURN(rows, dense_->Embed(chunk));
    } else {
      Tenant& t = TenantLocked(uid);
      ASSIGN_OR_RETURN(std::vector<float> lexical, t.hashed->Embed(chunk));
      if (!dense_) {
        rows = std::move(lexical);
      } else {
        ASSIGN_OR_RETURN(std::vector<float> dense, dense_->Embed(chunk));
        rows = index::ConcatWeighted({&dense, &lexical}, {dense_->dim(), t.hashed->dim()},
                                     {dense_weight_, 1.0f - dense_weight_},
                                     static_cast<int64_t>(chunk.size()));
      }
    }
    out.insert(out.end(), rows.begin(), rows.end());
  }
  return out;
}

Status EpisodeIndex::IndexMessages(const Key& key, const std::vector<IndexedMessage>& messages,
                                   size_t from, bool observe) {
  int64_t next_seq = 0;
  int64_t room = 0;
  std::vector<IndexedMessage> window_buf;
  int32_t w = 4;
  {
    std::lock_guard<std::mutex> lock(states_mu_);
    auto it = states_.find(key);
    if (it == states_.end()) return Status::OK();  // forgotten meanwhile
    next_seq = it->second.indexed_messages;
    room = it->second.capped ? 0
                             : options_.max_vectors_per_session -
                                   static_cast<int64_t>(it->second.segments.size());
    window_buf = open_windows_[key];
    w = it->second.window_messages;
  }
  std::vector<index::Message> fresh;
  std::vector<int64_t> fresh_seq;
  std::vector<std::string> window_texts;
  for (size_t i = from; i < messages.size(); ++i) {
    const IndexedMessage& m = messages[i];
    if (m.seq < next_seq) continue;  // already indexed
    if (m.seq > next_seq) {
      return Status::Internal("message " + std::to_string(m.seq) + " arrived before " +
                              std::to_string(next_seq) + "; the rest is indexed at restart");
    }
    ++next_seq;
    fresh.push_back(
        {m.role, m.content,
         m.role == "tool" ? index::MessageKind::kToolOutput : index::MessageKind::kProse});
    fresh_seq.push_back(m.seq);
    window_buf.push_back(m);
    if (static_cast<int32_t>(window_buf.size()) == w) {
      std::vector<index::Message> wm;
      for (const auto& x : window_buf) wm.push_back({x.role, x.content});
      index::SegmenterOptions so = options_.segmenter;
      so.window_messages = w;
      for (auto& seg : index::MakeWindows(wm, so)) window_texts.push_back(std::move(seg.text));
      window_buf.clear();
    }
  }
  if (fresh.empty()) {  // nothing new, but the budget or the tokens may have moved
    std::lock_guard<std::mutex> lock(states_mu_);
    auto it = states_.find(key);
    if (it == states_.end()) return Status::OK();
    return UpdateEpisodes(&it->second, BudgetOf(it->second), options_.clustering).status();
  }
  std::vector<index::Segment> segs = index::SegmentMessages(fresh, options_.segmenter);
  bool capped = false;
  if (static_cast<int64_t>(segs.size()) > room) {
    segs.resize(static_cast<size_t>(std::max<int64_t>(room, 0)));
    capped = true;
  }
  std::vector<std::string> texts;
  for (const auto& seg : segs) texts.push_back(seg.text);
  ASSIGN_OR_RETURN(std::vector<float> seg_vectors, EmbedFor(key.first, texts, observe));
  ASSIGN_OR_RETURN(std::vector<float> win_vectors, EmbedFor(key.first, window_texts, false));

  // The worker is the only writer of a session's segments and index, so they cannot move
  // between the two locked sections below. When this add passes the approximate-index threshold,
  // the one-time rebuild (seconds to minutes: bench/RESULTS.md) runs on a copy without the lock,
  // and queries use the flat index meanwhile.
  std::vector<int64_t> ids;
  std::unique_ptr<index::VectorIndex> switched;
  if (!segs.empty()) {
    std::string flat_bytes;
    {
      std::lock_guard<std::mutex> lock(states_mu_);
      auto it = states_.find(key);
      if (it == states_.end()) return Status::OK();
      const index::VectorIndex& vi = *it->second.segment_index;
      for (size_t i = 0; i < segs.size(); ++i) ids.push_back(vi.size() + static_cast<int64_t>(i));
      if (!vi.is_approximate() &&
          vi.size() + static_cast<int64_t>(ids.size()) > options_.vectors.ann_threshold) {
        ASSIGN_OR_RETURN(flat_bytes, vi.Serialize());
      }
    }
    if (!flat_bytes.empty()) {
      ASSIGN_OR_RETURN(switched, index::VectorIndex::Restore(flat_bytes, options_.vectors));
      RETURN_IF_ERROR(switched->Add(ids, seg_vectors));
      spdlog::info("episodes: session '{}' switched to {} at {} segments", key.second,
                   switched->kind_name(), switched->size());
    }
  }

  std::unique_lock<std::mutex> lock(states_mu_);
  auto it = states_.find(key);
  if (it == states_.end()) return Status::OK();
  SessionEpisodes& s = it->second;
  if (switched) {
    s.segment_index = std::move(switched);
  } else if (!ids.empty()) {
    RETURN_IF_ERROR(s.segment_index->Add(ids, seg_vectors));
  }
  for (const auto& seg : segs) {  // only once their vectors are in
    s.segments.push_back({static_cast<int32_t>(fresh_seq[seg.first_message]),
                          static_cast<int32_t>(fresh_seq[seg.end_message - 1] + 1), seg.begin_byte,
                          seg.end_byte});
  }
  s.window_vectors.insert(s.window_vectors.end(), win_vectors.begin(), win_vectors.end());
  if (capped && !s.capped) {
    spdlog::warn("episodes: session '{}' reached {} indexed segments; later ones are not indexed",
                 key.second, options_.max_vectors_per_session);
  }
  s.capped = s.capped || capped;
  s.indexed_messages = next_seq;
  s.unsaved_messages += static_cast<int64_t>(fresh.size());
  s.dirty = true;
  open_windows_[key] = std::move(window_buf);
  if (!FullClusteringDue(s, BudgetOf(s), options_.clustering)) {
    return UpdateEpisodes(&s, BudgetOf(s), options_.clustering).status();
  }
  // A full clustering (seconds on a long session: bench/RESULTS.md) runs on a copy of the
  // window vectors without the lock, so queries and routes do not wait for it.
  std::vector<float> vectors = s.window_vectors;
  const int32_t dim = s.dim;
  lock.unlock();
  ASSIGN_OR_RETURN(ClusteredWindows clustered,
                   ClusterWindows(std::move(vectors), dim, options_.clustering));
  lock.lock();
  it = states_.find(key);
  if (it == states_.end()) return Status::OK();
  InstallEpisodes(&it->second, std::move(clustered));
  RETURN_IF_ERROR(UpdateEpisodes(&it->second, BudgetOf(it->second), options_.clustering).status());
  spdlog::info("episodes: session '{}': {} windows into {} episodes in {:.1f} ms", key.second,
               it->second.num_windows(), it->second.episodes.episodes.size(),
               it->second.last_cluster_ms);
  return Status::OK();
}

void EpisodeIndex::SaveSession(const Key& key, bool force) {
  std::string blob;
  {
    std::lock_guard<std::mutex> lock(states_mu_);
    auto it = states_.find(key);
    if (it == states_.end() || !it->second.dirty) return;
    if (!force && it->second.unsaved_messages < options_.save_every_messages) return;
    blob = EncodeSessionEpisodes(it->second);
    it->second.dirty = false;
    it->second.unsaved_messages = 0;
  }
  const int64_t now = clock_->WallMicros();
  if (Status st = store_->PutEpisodeBlob(key.first, key.second, blob, now); !st.ok()) {
    spdlog::error("episodes: saving session '{}': {}", key.second, st.ToString());
    std::lock_guard<std::mutex> lock(states_mu_);
    if (auto it = states_.find(key); it != states_.end()) it->second.dirty = true;
  }
  std::string idf;
  {
    std::lock_guard<std::mutex> lock(embed_mu_);
    auto it = tenants_.find(key.first);
    if (it == tenants_.end() || !it->second->dirty) return;
    idf = EncodeIdf({it->second->hashed->num_observed(), it->second->hashed->doc_freq()});
    it->second->dirty = false;
  }
  if (Status st = store_->PutEpisodeBlob(key.first, "", idf, now); !st.ok()) {
    spdlog::error("episodes: saving uid {}'s IDF: {}", key.first, st.ToString());
  }
}

Result<std::vector<QueryHit>> EpisodeIndex::Query(uint32_t uid, const std::string& session,
                                                  const std::string& text, int32_t k) {
  if (k < 1 || k > 1000) return Status::InvalidArgument("'k' must be in [1, 1000]");
  if (text.empty()) return Status::InvalidArgument("'text' must not be empty");
  {
    std::lock_guard<std::mutex> lock(states_mu_);
    if (!states_.count({uid, session})) {
      return Status::NotFound("session '" + session + "' has no indexed messages yet");
    }
  }
  ASSIGN_OR_RETURN(std::vector<float> q, EmbedFor(uid, {text}, /*observe=*/false));
  std::lock_guard<std::mutex> lock(states_mu_);
  auto it = states_.find({uid, session});
  if (it == states_.end()) return Status::NotFound("session '" + session + "' is gone");
  ASSIGN_OR_RETURN(auto found, it->second.segment_index->Search(q, k));
  std::vector<QueryHit> hits;
  for (const auto& h : found) {
    if (h.id < 0 || h.id >= static_cast<int64_t>(it->second.segments.size())) continue;
    hits.push_back({h.id, it->second.segments[static_cast<size_t>(h.id)], h.score});
  }
  return hits;
}

Result<std::optional<EpisodeRoute>> EpisodeIndex::Route(uint32_t uid, const std::string& session,
                                                        int64_t message_seq,
                                                        const std::string& text,
                                                        int64_t total_tokens) {
  const Key key{uid, session};
  WaitForSessionJobs(key);  // a turn racing the worker is routed on its whole history
  {
    std::lock_guard<std::mutex> lock(states_mu_);
    auto [it, fresh] = states_.try_emplace(key);
    if (fresh) it->second = NewState();
    it->second.total_tokens = total_tokens;
    const int64_t budget = BudgetOf(it->second);
    if (budget <= 0 || total_tokens <= budget) return std::optional<EpisodeRoute>();
  }
  ASSIGN_OR_RETURN(std::vector<float> q, EmbedFor(uid, {text}, /*observe=*/false));
  EpisodeRoute route;
  {
    std::lock_guard<std::mutex> lock(states_mu_);
    auto it = states_.find(key);
    if (it == states_.end()) return Status::NotFound("session '" + session + "' is gone");
    SessionEpisodes& s = it->second;
    RETURN_IF_ERROR(UpdateEpisodes(&s, BudgetOf(s), options_.clustering).status());
    TurnRoute turn;
    turn.message_seq = message_seq;
    turn.at_us = clock_->WallMicros();
    route.episode = -1;
    if (!s.episodes.episodes.empty()) {
      const index::EpisodeSet& set = s.episodes;
      std::vector<float> scores(set.assignment.size());
      for (size_t w = 0; w < scores.size(); ++w) {
        scores[w] = index::Dot(q.data(), s.window_vectors.data() + w * s.dim, s.dim);
      }
      ASSIGN_OR_RETURN(route.episode, index::RouteQuery(set, q, scores, options_.router));
      const index::Episode& e = set.episodes[static_cast<size_t>(route.episode)];
      route.score = -2.0f;
      for (int32_t w : e.members) route.score = std::max(route.score, scores[w]);
      route.num_episodes = static_cast<int32_t>(set.episodes.size());
      route.version = static_cast<uint64_t>(s.num_reclusters);
      route.budget_tokens = BudgetOf(s);
      const int64_t wm = s.window_messages;
      for (int32_t w : e.medoid_windows) route.medoid_messages.push_back({w * wm, (w + 1) * wm});
    }
    turn.episode = route.episode;
    turn.num_episodes = route.num_episodes;
    turn.score = route.score;
    s.turns.push_back(turn);
    s.dirty = true;
  }
  Enqueue(Job{Job::Kind::kSave, key});
  return std::optional<EpisodeRoute>(std::move(route));
}

void EpisodeIndex::MarkServedFromEpisode(uint32_t uid, const std::string& session,
                                         int64_t message_seq) {
  std::lock_guard<std::mutex> lock(states_mu_);
  auto it = states_.find({uid, session});
  if (it == states_.end() || it->second.turns.empty()) return;
  TurnRoute& t = it->second.turns.back();
  if (t.message_seq == message_seq) t.from_episode_cache = true;
  it->second.dirty = true;
}

nlohmann::json EpisodeIndex::InfoJson(uint32_t uid, const std::string& session) {
  bool behind = false;
  {
    std::lock_guard<std::mutex> lock(queue_mu_);
    auto it = behind_.find({uid, session});
    behind = it != behind_.end() && it->second;
  }
  std::lock_guard<std::mutex> lock(states_mu_);
  auto it = states_.find({uid, session});
  if (it == states_.end()) return {{"embedder", embedder_name_}, {"indexed_messages", 0}};
  const SessionEpisodes& s = it->second;
  const int64_t budget = BudgetOf(s);
  nlohmann::json episodes = nlohmann::json::array();
  for (size_t e = 0; e < s.episodes.episodes.size(); ++e) {
    const index::Episode& ep = s.episodes.episodes[e];
    nlohmann::json medoids = nlohmann::json::array();
    for (int32_t w : ep.medoid_windows) {
      medoids.push_back({w * s.window_messages, (w + 1) * s.window_messages});
    }
    episodes.push_back(
        {{"episode", e}, {"windows", ep.members.size()}, {"medoid_messages", medoids}});
  }
  nlohmann::json turns = nlohmann::json::array();
  for (const TurnRoute& t : s.turns) {
    turns.push_back({{"message_seq", t.message_seq},
                     {"episode", t.episode >= 0 ? nlohmann::json(t.episode) : nlohmann::json()},
                     {"num_episodes", t.num_episodes},
                     {"score", t.score},
                     {"served_by", t.from_episode_cache ? "episode_cache" : "full_kv"}});
  }
  return {{"embedder", s.embedder},
          {"dim", s.dim},
          {"indexed_messages", s.indexed_messages},
          {"segments", s.segments.size()},
          {"vector_index", s.segment_index ? s.segment_index->kind_name() : "flat"},
          {"windows", s.num_windows()},
          {"capped", s.capped},
          {"behind", behind},
          {"budget_tokens", budget},
          {"over_budget", budget > 0 && s.total_tokens > budget},
          {"num_episodes", s.episodes.episodes.size()},
          {"clustered_windows", s.clustered_windows},
          {"reclusters", s.num_reclusters},
          {"last_cluster_ms", s.last_cluster_ms},
          {"episodes", std::move(episodes)},
          {"turns", std::move(turns)}};
}

}  // namespace kvkeep
