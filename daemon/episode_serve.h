// The seam between episode routing (daemon/episode_index.h) and the KV half of issue 13
// (an engine entry point that decodes from an episode's compressed cache).
//
// When a user message arrives in a session over its episode budget, the Service routes it
// to an episode and, before submitting the turn, calls ServiceDeps::serve_episode with an
// EpisodeTurn. The function may rewrite the request to decode from that episode's cache
// (the new message prefilled on top) and returns true; it returns false (or is unset) to
// leave the request as it is: the turn is then served from full KV, as today. Either way
// the route is recorded in session.info ("episodes.turns", served_by).
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
  std::string medoid_prompt;                // P_e: the medoid windows' messages, "role: content"
  std::vector<int32_t> medoid_tokens;       // the same messages' tokens, in history order
  int64_t message_seq = 0;                  // the new user message
  std::string new_message;                  // its content
  std::vector<int32_t> new_message_tokens;  // its tokens (the generation prompt follows)
};

// REQUIRES: req is the full-KV request the Service built; on true it has been rewritten.
using EpisodeServeFn = std::function<Result<bool>(const EpisodeTurn& turn, GenerateRequest* req)>;

}  // namespace kvkeep
