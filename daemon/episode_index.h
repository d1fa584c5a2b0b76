// EpisodeIndex: the daemon's per-session segment index and episodes (issue 13, items 3,
// 4 and 7; docs/episodes.md "In the daemon").
//
// The Service hands it every message a session gains (Append); a worker thread segments
// them (index/segmenter.h), embeds them with the daemon's embedder and adds them to the
// session's FAISS index, off the request path. Once a session's tokens pass its budget,
// the worker clusters its windows into episodes (daemon/episode_state.h UpdateEpisodes).
// Query searches the index; Route picks the episode a new user message is about and
// records the turn. The state is saved in the store (Store::PutEpisodeBlob) every
// save_every_messages indexed messages, after each routed turn and at shutdown, and
// restored by Load at daemon start; a blob that fails to decode is logged and rebuilt
// from the stored messages.
//
// Embedding: "hashed" vectors come from one HashedEmbedder per tenant (uid), whose IDF is
// learned from that tenant's messages and stored with it; "hybrid" concatenates one
// shared BertEncoder's vectors with the tenant's hashed ones (index/embedder.h
// ConcatWeighted); "bert" is the encoder alone.
//
// Memory is bounded: at most max_vectors_per_session segments per session (then the
// session is marked capped) and max_queued_bytes of queued message text (beyond it a
// session's appends are dropped and it is marked behind, rebuilt at the next start).
//
// Thread-safety: all public methods are thread-safe. Locks: queue_mu_, embed_mu_ and
// states_mu_ are never nested (embed_mu_ may take the Store's, a leaf), so callers may
// hold a Session::mu.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "base/clock.h"
#include "base/file.h"
#include "base/status.h"
#include "daemon/config.h"
#include "daemon/episode_state.h"
#include "daemon/store.h"
#include "engine/embedder_factory.h"
#include "index/hashed_embedder.h"
#include "index/segmenter.h"

namespace kvkeep {

struct EpisodeOptions {
  EmbedderSpec embedder;              // --embedder (default: hybrid if installed, else hashed)
  int64_t budget_tokens = 0;          // --episode-budget-tokens: global; 0: episodes off
  EpisodeClusterPolicy clustering;    // E (--episodes), seed, regrow factor
  index::RouterOptions router;        // the measured default: top:1
  index::SegmenterOptions segmenter;  // window_messages w
  index::VectorIndexOptions vectors;  // the approximate-index threshold and kind
  int64_t max_vectors_per_session = 20000;
  int64_t max_queued_bytes = int64_t{64} << 20;
  int64_t save_every_messages = 16;
  // A turn routed before the worker has indexed the messages before it waits for them this
  // long (then routes with what is indexed).
  int64_t route_wait_ms = 5000;
};

// The daemon's knobs (DaemonOptions::episodes) as EpisodeOptions.
EpisodeOptions MakeEpisodeOptions(const DaemonEpisodeOptions& daemon);

// A message as the index sees it; seq is its position in the session.
struct IndexedMessage {
  int64_t seq = 0;
  std::string role;
  std::string content;
};

struct QueryHit {
  int64_t segment = 0;
  SegmentRef ref;
  float score = 0.0f;
};

// The episode that serves a turn: what the KV half needs (daemon/episode_serve.h).
struct EpisodeRoute {
  int32_t episode = 0;
  int32_t num_episodes = 0;
  float score = 0.0f;
  uint64_t version = 0;       // full clusterings so far: a new one changes the episodes
  int64_t budget_tokens = 0;  // the session's budget M
  // The medoid windows' message ranges [first, end), in history order: P_e is their text.
  std::vector<std::pair<int64_t, int64_t>> medoid_messages;
};

class EpisodeIndex {
 public:
  // Resolves and loads the embedder (a missing sentence model is an error for "bert" and
  // "hybrid"; "default" falls back to hashed). store and clock outlive this.
  static Result<std::unique_ptr<EpisodeIndex>> Create(EpisodeOptions options, Env* env,
                                                      Store* store, Clock* clock);
  // Finishes the job in hand, drops queued ones (what they would have indexed is indexed
  // from the stored messages at the next start), saves unsaved state, stops the worker.
  ~EpisodeIndex();
  EpisodeIndex(const EpisodeIndex&) = delete;
  EpisodeIndex& operator=(const EpisodeIndex&) = delete;

  const std::string& embedder_name() const { return embedder_name_; }
  int32_t dim() const { return dim_; }

  // A stored session at daemon start: restores its blob (or rebuilds) and indexes any
  // messages past what the blob covered. messages: all of the session's, in order.
  void Load(uint32_t uid, const std::string& session, std::vector<IndexedMessage> messages,
            int64_t total_tokens);
  // New messages of a session (seq continuing from the last call), total_tokens after them.
  void Append(uint32_t uid, const std::string& session, std::vector<IndexedMessage> messages,
              int64_t total_tokens);
  // This session's budget in tokens (-1: the global one, 0: never episodes).
  void SetBudget(uint32_t uid, const std::string& session, int64_t budget_tokens);
  // The session was deleted: its state goes (the store deletes its row with the session).
  void Forget(uint32_t uid, const std::string& session);
  // The session was closed and kept: its state is saved and leaves memory (Load brings it
  // back when the session is reopened), so only open sessions' indexes are held.
  void Unload(uint32_t uid, const std::string& session);
  // Blocks until the queue is empty and the worker idle (tests, shutdown).
  void WaitIdle();

  // The k segments nearest text, best first. NotFound for a session never appended;
  // InvalidArgument for k outside [1, 1000] or empty text.
  Result<std::vector<QueryHit>> Query(uint32_t uid, const std::string& session,
                                      const std::string& text, int32_t k);
  // For a new user message (seq message_seq, text) in a session of total_tokens tokens:
  // nullopt when the session is within its budget (full KV serves it, unchanged); else the
  // routed episode, recorded as the turn's route. Clusters first if the worker has not yet.
  // When a budget may apply, first waits (route_wait_ms at most) for the session's queued
  // messages, so a turn that arrives before the worker has indexed its history is routed.
  // REQUIRES: the caller may hold a Session::mu (the worker never takes one).
  Result<std::optional<EpisodeRoute>> Route(uint32_t uid, const std::string& session,
                                            int64_t message_seq, const std::string& text,
                                            int64_t total_tokens);
  // Marks the last recorded turn of the session as served from its episode cache.
  void MarkServedFromEpisode(uint32_t uid, const std::string& session, int64_t message_seq);
  // session.info's "episodes" object.
  nlohmann::json InfoJson(uint32_t uid, const std::string& session);

 private:
  using Key = std::pair<uint32_t, std::string>;
  struct Job {  // one unit of the worker's queue
    enum class Kind { kLoad, kAppend, kBudget, kForget, kUnload, kSave } kind = Kind::kAppend;
    Key key;
    std::vector<IndexedMessage> messages;
    int64_t total_tokens = 0;
    int64_t budget_tokens = -1;
    int64_t bytes = 0;  // queued message bytes (kAppend)
  };
  struct Tenant {  // one uid's hashed embedder (its IDF)
    std::unique_ptr<index::HashedEmbedder> hashed;
    bool dirty = false;  // observed since last saved
  };
  EpisodeIndex(EpisodeOptions options, Store* store, Clock* clock);
  void Enqueue(Job job);
  void WorkerLoop();
  void RunJob(Job& job);
  // A fresh state for this daemon's embedder.
  SessionEpisodes NewState() const;
  // Embeds texts for uid (observing them first when observe). REQUIRES: embed_mu_ not held.
  Result<std::vector<float>> EmbedFor(uint32_t uid, const std::vector<std::string>& texts,
                                      bool observe);
  Tenant& TenantLocked(uint32_t uid);  // REQUIRES: embed_mu_ held
  // Segments and windows messages [from, end) of `messages` into the session's state;
  // observe: the tenant's IDF learns their segments first (not when rebuilding what the
  // stored IDF has already seen).
  Status IndexMessages(const Key& key, const std::vector<IndexedMessage>& messages, size_t from,
                       bool observe);
  void SaveSession(const Key& key, bool force);
  // Waits (at most options_.route_wait_ms) until no job of key is queued or running, so a
  // turn that arrives before its history is indexed is routed on all of it. Returns at once
  // when no budget could apply to the session. REQUIRES: no lock of this object held.
  void WaitForSessionJobs(const Key& key);
  int64_t BudgetOf(const SessionEpisodes& s) const;

  const EpisodeOptions options_;
  Store* const store_;
  Clock* const clock_;
  std::string embedder_name_;
  int32_t dim_ = 0;

  std::mutex embed_mu_;                     // the embedders
  std::unique_ptr<index::Embedder> dense_;  // bert part; null for "hashed"
  float dense_weight_ = 0.0f;               // of dense_ in the concatenation
  std::map<uint32_t, std::unique_ptr<Tenant>> tenants_;

  std::mutex states_mu_;
  std::map<Key, SessionEpisodes> states_;
  std::map<Key, std::vector<IndexedMessage>> open_windows_;  // messages of the partial window

  std::mutex queue_mu_;
  std::condition_variable queue_cv_;
  std::condition_variable idle_cv_;
  std::deque<Job> queue_;
  int64_t queued_bytes_ = 0;
  bool busy_ = false;
  Key busy_key_;                         // the job the worker runs while busy_
  std::condition_variable job_done_cv_;  // after every job
  bool stopping_ = false;
  // Set at shutdown: the job in hand stops between embedding chunks rather than embed
  // minutes of segments; what it left is indexed from the stored messages at the next start.
  std::atomic<bool> abandon_{false};
  std::map<Key, bool> behind_;  // guarded by queue_mu_: appends dropped (queue full)
  std::thread worker_;
};

}  // namespace kvkeep
