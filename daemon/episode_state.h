// Episode state of one session (issue 13, the daemon half): the FAISS index of its
// segments, the vectors of its windows, its episodes once over budget, and the turns that
// were routed; plus the byte format both it and a tenant's hashed IDF are stored in.
//
//   segments:  sentences of prose, line blocks of tool output (index/segmenter.h), one
//              FAISS id each (its ordinal), searched by session.query;
//   windows:   window_messages consecutive messages, tumbling ([0, w), [w, 2w), ...); a
//              window is embedded once complete, so the last < w messages wait;
//   episodes:  k-means of the window vectors (index/episodes.h), made once the session's
//              tokens pass its budget and redone as it grows (UpdateEpisodes).
//
// The byte format ("KVEP" / "KVID", version 1) carries an FNV-1a checksum of its payload;
// Decode* return Corruption for any damage (bad magic, checksum, length, FAISS bytes), so
// the caller can rebuild from the stored messages. Episodes are not stored: clustering is
// deterministic (a fixed seed) and is redone after a restart.
//
// Thread-safety: plain data and pure functions; the owner (EpisodeIndex) serialises.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "base/status.h"
#include "index/episodes.h"
#include "index/vector_index.h"

namespace kvkeep {

struct SegmentRef {
  int32_t first_message = 0;  // message seq in the session
  int32_t end_message = 0;    // one past the last
  int64_t begin_byte = 0;     // span inside first_message's content
  int64_t end_byte = 0;
};

// One session.generate in an over-budget session: which episode served it.
struct TurnRoute {
  int64_t message_seq = 0;          // the user message the turn answers
  int32_t episode = -1;             // -1: over budget, but no window to cluster yet
  int32_t num_episodes = 0;         // E at the time
  float score = 0.0f;               // the router's score of the chosen episode
  bool from_episode_cache = false;  // false: the KV half was not wired; full KV served it
  int64_t at_us = 0;                // wall clock
};

struct SessionEpisodes {
  std::string embedder;  // resolved name ("hashed", "hybrid", ...)
  int32_t dim = 0;
  int32_t window_messages = 4;
  int64_t indexed_messages = 0;  // messages [0, n) are segmented (and windowed up to n / w * w)
  int64_t budget_tokens = -1;    // this session's budget; -1: the daemon's global one
  std::vector<SegmentRef> segments;
  std::unique_ptr<index::VectorIndex> segment_index;
  std::vector<float> window_vectors;  // num_windows() x dim
  std::vector<TurnRoute> turns;
  bool capped = false;  // max_vectors_per_session reached: later segments are not indexed

  // Not stored.
  int64_t total_tokens = 0;  // the session's tokens as last reported
  index::EpisodeSet episodes;
  int32_t clustered_windows = 0;  // windows when last clustered in full (0: never)
  int64_t num_reclusters = 0;
  double last_cluster_ms = 0;
  int64_t unsaved_messages = 0;  // indexed since the last save
  bool dirty = false;

  int32_t num_windows() const {
    return dim > 0 ? static_cast<int32_t>(window_vectors.size() / static_cast<size_t>(dim)) : 0;
  }
};

std::string EncodeSessionEpisodes(const SessionEpisodes& state);
Result<SessionEpisodes> DecodeSessionEpisodes(const std::string& bytes,
                                              const index::VectorIndexOptions& options);

struct IdfState {
  int64_t num_observed = 0;
  std::vector<int64_t> doc_freq;
};
std::string EncodeIdf(const IdfState& idf);
Result<IdfState> DecodeIdf(const std::string& bytes);

struct EpisodeClusterPolicy {
  index::ClusterOptions cluster;
  double regrow_factor = 1.25;  // re-cluster in full once windows >= this x last clustered
};

// Brings state->episodes up to date with its windows, if the session is over budget_tokens
// (> 0): clusters in full the first time and whenever the windows have grown by
// regrow_factor since; in between, assigns each new window to its nearest centroid (the
// centroids and medoids stay). A session at or under budget keeps no episodes. Returns
// whether a full clustering ran.
Result<bool> UpdateEpisodes(SessionEpisodes* state, int64_t budget_tokens,
                            const EpisodeClusterPolicy& policy);

// The same decision and clustering in three steps, so the caller can cluster without its
// lock (the worker is the only writer of window vectors): FullClusteringDue under the
// lock, ClusterWindows on a copy of the vectors without it, InstallEpisodes under it again
// (then UpdateEpisodes assigns any window added since, and clears episodes if the session
// fell under budget meanwhile).
struct ClusteredWindows {
  index::EpisodeSet episodes;
  int32_t num_windows = 0;
  double cluster_ms = 0.0;
};
bool FullClusteringDue(const SessionEpisodes& state, int64_t budget_tokens,
                       const EpisodeClusterPolicy& policy);
Result<ClusteredWindows> ClusterWindows(std::vector<float> window_vectors, int32_t dim,
                                        const EpisodeClusterPolicy& policy);
void InstallEpisodes(SessionEpisodes* state, ClusteredWindows clustered);

}  // namespace kvkeep
