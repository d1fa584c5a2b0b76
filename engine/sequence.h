// Sequence: one request's state inside the engine — its tokens, its KV blocks, its
// sampler and stop checker, and its accounting. Plain bookkeeping owned by the engine
// thread (EngineImpl owns the object; the Scheduler holds pointers in its queues).
//
// Token bookkeeping:
//   tokens            prompt followed by every generated (sampled or forced) token
//   table.num_tokens  tokens whose KV is in the pool ("computed"); the rest are pending
//   prefill_end       tokens.size() when the sequence was last admitted: tokens before it
//                     are computed as prefill (counted as cached or recomputed), tokens
//                     after it are decode steps
// A step computes a run of pending tokens; logits are sampled only when the run reaches
// the last token (a finished prefill, or a decode step).
#pragma once

#include <cstdint>
#include <optional>
#include <vector>

#include "cache/block_table.h"
#include "engine/engine.h"
#include "engine/kv_view.h"
#include "engine/sampler.h"
#include "engine/stop_checker.h"

namespace kvkeep {

enum class SequenceStatus { kWaiting, kRunning, kFinished };

struct Sequence {
  Sequence(GenerateRequest req, int32_t block_size, HashScope scope,
           const std::vector<int32_t>& model_eos_ids, const Tokenizer* tokenizer)
      : request(std::move(req)),
        tokens(request.prompt),
        num_prompt_tokens(static_cast<int64_t>(request.prompt.size())),
        table(block_size, scope),
        sampler(request.sampling),
        stop(request.stop, model_eos_ids, tokenizer) {}

  RequestId id() const { return request.id; }
  int64_t num_tokens() const { return static_cast<int64_t>(tokens.size()); }
  int64_t num_computed() const { return table.num_tokens(); }
  int64_t num_pending() const { return num_tokens() - num_computed(); }
  int64_t num_generated() const { return num_tokens() - num_prompt_tokens; }
  bool is_prefilling() const { return num_computed() < prefill_end; }
  bool has_forced() const { return !request.forced.empty(); }
  bool is_episode_turn() const { return !episode_key.empty(); }

  // An episode turn that lost its blocks (preempted) becomes the full-KV request it came
  // from: its restored entries cannot be recomputed from tokens, but the request carries
  // the whole prompt. Tokens generated so far stay (they were emitted) and are recomputed
  // on top of the prompt when it is admitted again. REQUIRES: an empty table.
  void FallBackToFullKv() {
    std::vector<int32_t> full = request.prompt;
    full.insert(full.end(), tokens.begin() + num_prompt_tokens, tokens.end());
    tokens = std::move(full);
    num_prompt_tokens = static_cast<int64_t>(request.prompt.size());
    kv_view = KvView{};
    episode_key.clear();
    episode_view = KvView{};
    usage.from_episode_cache = false;  // full KV finishes it (served_by: full_kv)
  }

  GenerateRequest request;
  std::vector<int32_t> tokens;
  int64_t num_prompt_tokens = 0;
  BlockTable table;
  KvView kv_view;  // RoPE positions of computed tokens (identity for full KV)
  // An episode turn (engine/engine_episodes.cc): its cache's key in the pool, and the view
  // it decodes with once admitted (kv_view then equals it). Empty key: a full-KV turn.
  std::vector<int32_t> episode_key;
  KvView episode_view;
  SequenceStatus status = SequenceStatus::kWaiting;
  int64_t prefill_end = 0;
  int32_t num_preemptions = 0;
  int32_t disk_blocks_loaded = 0;    // blocks of its prefix read up from disk for it
  int32_t remote_blocks_loaded = 0;  // of those, first fetched from the remote tier
  int32_t remote_blocks_put = -1;    // leading hashed blocks already in (or sent to) the
                                     // remote tier; -1 until its first step
  TierCounts matched_tiers;          // of the last MatchPrefix, until admission accounts it
  // The most device blocks it can come to hold (prompt + max_tokens, within the context
  // limit): what it counts against EngineOptions::max_device_blocks_per_tenant.
  int64_t blocks_bound = 0;

  Sampler sampler;
  StopChecker stop;
  Usage usage;
  int64_t submit_us = 0;
  int64_t program_arrival_us = 0;  // its session's first submit (admission order)
  bool returning_pinned = false;   // its session held a live pin when it arrived
  std::optional<int64_t> first_token_us;
};

}  // namespace kvkeep
