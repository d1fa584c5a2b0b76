// EpisodeCacheDirectory: the engine's record of the episode caches it has built (issue 13;
// docs/episodes.md "Serving from episode caches"). The KV itself lives in BlockPool blocks
// registered under a key of their own, so that the pool's tier machinery (demotion to the
// host and disk tiers, promotion, the per-session reclaim order) carries them like any
// other retained KV:
//   - the key is a chain of synthetic blocks of tokens spelling (session, episode,
//     version, generation, block index), in a scope (EpisodeScope) whose model hash no
//     request ever has, so a request's prefix can never match an episode cache, and an
//     episode cache is found only by its identity;
//   - generation is unique per build, also across restarts (it starts at the wall clock
//     in microseconds), so a rebuilt cache never collides with an older one's blocks,
//     which are left unreferenced and go first on every tier.
// The directory holds no blocks: between turns the cache's blocks are cached (ref count
// 0), owned by the session for the lower tiers' reclaim.
//
// Thread-safety: none; the engine thread owns it.
#pragma once

#include <cstdint>
#include <map>
#include <span>
#include <vector>

#include "cache/prefix_hash.h"
#include "engine/episode_cache.h"

namespace kvkeep {

struct EpisodeCacheRecord {
  EpisodeCacheId id;           // session, episode, version
  uint64_t generation = 0;     // unique per build
  int32_t num_kept = 0;        // entries per layer and KV head (EpisodeCache::num_kept)
  int32_t history_tokens = 0;  // tokens of history the cache covers (its next position)
  uint64_t history_hash = 0;   // HistoryHash of those tokens
  uint64_t query_hash = 0;     // HistoryHash of P_e
  int32_t budget_tokens = 0;   // M it was built with
  int32_t block_tokens = 0;    // B it was built with
  int32_t num_blocks = 0;      // pool blocks holding its num_kept entries
  std::vector<int32_t> layer_budget_tokens;  // M_l it was built with (empty: M in all)
  std::vector<int32_t> layer_kept;           // EpisodeCache::layer_kept
};

class EpisodeCacheDirectory {
 public:
  explicit EpisodeCacheDirectory(uint64_t first_generation) : next_generation_(first_generation) {}

  // The session's record for episode, or nullptr.
  const EpisodeCacheRecord* Find(uint64_t session, int32_t episode) const;
  // Records a build (replacing the episode's older record). A record of a newer version
  // drops the session's records of older versions: a re-cluster invalidates them.
  const EpisodeCacheRecord& Add(const EpisodeCacheRecord& record);
  // A closed session: its records go (its blocks are left unreferenced).
  void Forget(uint64_t session);
  uint64_t NextGeneration() { return next_generation_++; }
  int64_t size() const;

  // The key tokens of the record's blocks: num_blocks * block_size tokens.
  // REQUIRES: block_size >= kMinBlockSize.
  static std::vector<int32_t> KeyTokens(const EpisodeCacheRecord& record, int32_t block_size);
  static constexpr int32_t kMinBlockSize = 9;  // the identity's words fit one block
  // The scope episode caches of a request's scope live in (its tenant salt, another model
  // hash).
  static HashScope EpisodeScope(HashScope request_scope);
  static uint64_t HistoryHash(std::span<const int32_t> tokens);

 private:
  std::map<uint64_t, std::map<int32_t, EpisodeCacheRecord>> sessions_;
  uint64_t next_generation_;
};

}  // namespace kvkeep
