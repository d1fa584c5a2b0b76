// The seam between episode routing (daemon/episode_index.h) and the engine's episode
// caches (GenerateRequest::episode, engine/engine_episodes.cc).
//
// When a user message arrives in a session over its episode budget, the Service routes it
// to an episode and, before submitting the turn, calls ServiceDeps::serve_episode with an
// EpisodeTurn. The function may ask for the turn to be decoded from that episode's cache
// (it sets req->episode and returns true); it returns false (or is unset) to leave the
// request as it is. The engine serves an episode request from the cache or, when the cache
// cannot be built or found, from full KV (Usage::from_episode_cache says which). The route
// is recorded in session.info ("episodes.turns"), and its served_by is "episode_cache"
// only once the finished turn reports that it was.
//
// Thread-safety: called on an I/O thread with the session's mutex held; it must not call
// back into the Service.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "base/status.h"
#include "engine/engine.h"

namespace kvkeep {

struct EpisodeTurn {
  uint32_t owner_uid = 0;
  std::string session;
  SessionId engine_session = 0;  // the engine's id of the session (its full-KV sequence)
  int32_t episode = 0;           // which episode of the session serves this turn
  int32_t num_episodes = 0;
  uint64_t version = 0;                // the session's clustering: a new one invalidates caches
  int64_t budget_tokens = 0;           // the session's budget M
  int64_t history_tokens = 0;          // the request's prompt before the new user message
  std::string medoid_prompt;           // P_e: the medoid windows' messages, "role: content"
  std::vector<int32_t> medoid_tokens;  // the same messages' tokens, in history order
  int64_t message_seq = 0;             // the new user message
  std::string new_message;             // its content
  std::vector<int32_t> new_message_tokens;  // its tokens (the generation prompt follows)
};

// REQUIRES: req is the full-KV request the Service built; on true it has been rewritten.
using EpisodeServeFn = std::function<Result<bool>(const EpisodeTurn& turn, GenerateRequest* req)>;

// kvkeepd's knobs for serving from episode caches (docs/configuration.md, "episodes").
struct EpisodeServeOptions {
  int64_t budget_tokens = 0;    // M of each cache; 0: the session's episode budget
  int32_t block_tokens = 2048;  // B of the block-wise build
  // Per-layer budgets M_l (engine/layer_budget.h) from the model's profile s_l; alpha 0 or
  // no profile: M in every layer.
  double layer_alpha = 0;
  std::vector<double> layer_similarity;
};

// The serve function kvkeepd installs: every routed turn with a P_e asks the engine for
// its episode's cache under options. InvalidArgument-free: a turn it cannot describe
// (no P_e, no history before the message) stays a full-KV turn (false).
EpisodeServeFn MakeEpisodeServeFn(const EpisodeServeOptions& options);

}  // namespace kvkeep
