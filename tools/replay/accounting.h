// Per-turn token accounting that is comparable across policies (docs/policy.md, "Replay
// accounting"). The engine's usage.prompt_tokens is cached + recomputed and counts a
// re-prefill after preemption again, so it differs between policies for the same turn.
// A turn is instead reported as:
//   context_tokens        the session's tokens before the turn (identical across policies)
//   cached_tokens         served from cache (all tiers), at most context_tokens
//   first_prefill_tokens  tokens the engine had never computed for this session: those
//                         appended since the previous reply
//   reprefill_tokens      everything else recomputed: evicted history, re-prefill after
//                         preemption, and the partial last block a prefix match cannot reuse
//   hit ratio             cached_tokens / context_tokens
// When the engine reports usage.context_tokens, usage.first_prefill_tokens and
// usage.reprefill_tokens (not yet: see docs/policy.md), they are used as they are.
//
// Thread-safety: pure function.
#pragma once

#include <cstdint>
#include <nlohmann/json.hpp>

namespace kvkeep::replay {

struct TurnTokens {
  int64_t context_tokens = 0;
  int64_t cached_tokens = 0;
  int64_t first_prefill_tokens = 0;
  int64_t reprefill_tokens = 0;
  bool from_engine = false;  // the split came from the engine, not from this estimate
};

// usage: the generate reply's usage object. context_before: the session's num_tokens
// before the generate call; after_previous_reply: its num_tokens after the previous
// reply (0 for the first turn).
TurnTokens AccountTurn(const nlohmann::json& usage, int64_t context_before,
                       int64_t after_previous_reply);

}  // namespace kvkeep::replay
