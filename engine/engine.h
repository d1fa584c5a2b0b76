// Engine: the serving loop for one device. Requests come in through Submit() from any
// thread; one engine thread owns the backend, the block pool and the scheduler and runs
// continuous batching: each Step() mixes prefill chunks of some requests with decode
// tokens of others, so a long prefill never stalls other sessions' decoding.
//
// KV reuse across turns: a request carries the whole context (the conversation so far).
// Full blocks are content-addressed (cache/prefix_hash.h); with prefix caching on, a new
// request reuses the longest cached prefix and prefills only the rest. When a request
// finishes, its full blocks stay cached (evictable, LRU) until memory is needed.
//
// Thread-safety: Submit, Cancel, GetStats and Stop are thread-safe. Event callbacks run
// on the engine thread and must not block.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "base/clock.h"
#include "base/file.h"
#include "base/status.h"
#include "cache/remote_tier.h"
#include "engine/backend.h"
#include "engine/tokenizer.h"
#include "policy/policy_factory.h"
#include "policy/reclaim_policy.h"
#include "policy/step_log.h"
#include "policy/tool_stats.h"

namespace kvkeep {

struct SamplingParams {
  float temperature = 0.0f;  // 0: greedy
  int32_t top_k = 0;         // 0: off
  float top_p = 1.0f;        // 1: off
  uint64_t seed = 0;
};

struct StopConditions {
  int32_t max_tokens = 256;
  bool use_model_eos = true;            // stop on the model's EOS ids
  std::vector<int32_t> stop_token_ids;  // extra stop ids
  std::vector<std::string> stop_strings;
};

struct Usage {
  int64_t prompt_tokens = 0;         // context tokens of the request
  int64_t cached_tokens = 0;         // of those, served from cached KV, split by tier below
  int64_t cached_device_tokens = 0;  // found in device memory
  int64_t cached_host_tokens = 0;    // swapped in from the host tier
  int64_t cached_disk_tokens = 0;    // read from the disk tier (through the host tier)
  int64_t cached_remote_tokens = 0;  // fetched from the remote tier (through disk and host)
  int64_t recomputed_tokens = 0;     // of those, prefilled in this request
  int64_t generated_tokens = 0;      // sampled or forced tokens decoded
  double ttft_ms = 0;                // submit -> first generated token
  double decode_ms = 0;              // first -> last generated token
  bool from_episode_cache = false;   // decoded on top of an episode's compressed KV
  int64_t kv_blocks = 0;             // device blocks the turn held when it ended
};

enum class FinishReason { kNone, kStop, kLength, kCancelled, kError };
std::string_view FinishReasonName(FinishReason reason);

struct GenerateEvent {
  enum class Kind { kToken, kFinished };
  Kind kind = Kind::kToken;
  int32_t token = -1;  // kToken
  std::string text;    // kToken: complete UTF-8 text this token adds (may be empty)
  FinishReason finish_reason = FinishReason::kNone;  // kFinished
  Usage usage;                                       // kFinished
  Status error;                                      // kFinished with kError or kCancelled
};

using RequestId = uint64_t;

// A turn of a session over its KV budget, served from one episode's compressed KV
// (issue 13; docs/episodes.md "Serving from episode caches"). The engine keeps one cache
// per (session, episode), built with EpisodeCompressor from the history prompt[0,
// history_tokens) and P_e under budget M, and prefills the rest of the prompt on top of it
// at positions continuing the history. The cache is reused while the version is the same
// and the history past it is at most rebuild_tail_tokens; otherwise it is rebuilt first.
// If it cannot be built or found (pool exhausted, the backend cannot score), the turn is
// served from full KV as if this were unset, with a log line (Usage::from_episode_cache).
struct EpisodeServeRequest {
  int32_t episode = 0;
  uint64_t version = 0;              // the session's clustering; a new one rebuilds
  int64_t history_tokens = 0;        // the prompt's history part; REQUIRES 0 < it < prompt
  std::vector<int32_t> query;        // P_e
  int32_t budget_tokens = 0;         // M; REQUIRES >= 1
  int32_t block_tokens = 2048;       // B
  int32_t rebuild_tail_tokens = -1;  // -1: B
  // M_l of each layer (engine/layer_budget.h LayerBudgets); empty: M in every layer.
  std::vector<int32_t> layer_budget_tokens;
};

struct GenerateRequest {
  RequestId id = 0;  // unique among in-flight requests
  // The conversation this turn belongs to (0: none). After the turn the engine keeps the
  // session's blocks (retained, reclaimable by the ReclaimPolicy) until its next turn, a
  // close hint, or memory pressure.
  SessionId session = 0;
  uint64_t cache_salt = 0;      // tenant salt in prefix hashes: tenants never share KV
  std::vector<int32_t> prompt;  // the whole context
  std::vector<int32_t> forced;  // teacher forcing: decoded as if generated, then stop
  std::optional<EpisodeServeRequest> episode;  // serve from an episode cache (needs session)
  SamplingParams sampling;
  StopConditions stop;
  // Called on the engine thread; exactly one kFinished event ends every request.
  std::function<void(const GenerateEvent&)> on_event;
};

struct EngineOptions {
  BackendOptions backend;
  int32_t max_batch_tokens = 512;      // token budget of one step (prefill + decode)
  int32_t prefill_chunk_tokens = 256;  // largest prefill chunk per sequence per step
  int32_t max_running = 64;            // sequences decoding at once
  // The KV policy (policy/policy_factory.h): lru | none | ttl | ttl-fcfs | fixed-ttl and
  // its knobs. "none" turns prefix caching off.
  PolicyOptions policy;
  // Tool durations learned before (Store::ToolSamples at start-up), loaded into the tool
  // latency statistics the TTL policies read.
  std::vector<ToolSample> tool_samples;
  std::string model_id;  // part of every prefix hash (engine/model_identity.h)
  // Tiers below the device pool (docs/kv_cache.md). Evicted blocks are demoted to the host
  // tier, and from there to the disk tier under disk_dir (which needs a host tier).
  int32_t num_host_blocks = 0;  // 0: no host tier
  int64_t disk_bytes = 0;       // 0: no disk tier
  std::string disk_dir;         // the disk tier's directory (created 0700)
  // The shared remote tier below disk (cache/remote_tier.h, docs/scale-out.md); needs the
  // disk tier. Blocks written to disk are also written there; a prefix that misses locally
  // is fetched from there before admission.
  std::optional<RemoteTierOptions> remote_tier;
  Env* env = nullptr;  // for the disk tier; nullptr: DefaultEnv()
  // A turn whose prefix is still being read up from disk waits for the reads this long
  // (Clock time from its submission), then runs and recomputes what has not arrived.
  int64_t disk_read_deadline_us = 2'000'000;
  // Device KV blocks one tenant (cache salt) may hold at once: its sequences' blocks,
  // counted at their bound (prompt + max_tokens), plus its retained sessions'. Past it the
  // tenant's own retained sessions go back to the cache first (oldest, unpinned first;
  // demoted from there like any cached block), and its waiting turns are admitted only as
  // its running ones make room. A request whose bound alone is over it is refused. 0: no
  // cap.
  int32_t max_device_blocks_per_tenant = 0;
  // Full KV blocks one tenant may keep on the host / disk tier (BlockPoolOptions); past it
  // its own least recently used blocks there move down, never another tenant's. 0: no cap.
  int32_t max_host_blocks_per_tenant = 0;
  int32_t max_disk_blocks_per_tenant = 0;
  // Each step that runs the model is added here (its work and wall time: policy/step_log.h).
  // REQUIRES: outlives the engine, and is read only once Stop() has returned. nullptr: off.
  StepLog* step_log = nullptr;
};

struct EngineStats {
  int64_t steps = 0;
  int64_t running = 0;
  int64_t waiting = 0;
  int64_t blocks_total = 0;
  int64_t blocks_used = 0;
  int64_t blocks_cached = 0;  // free but holding reusable prefix KV
  int64_t blocks_shared = 0;
  int64_t prompt_tokens = 0;
  int64_t cached_tokens = 0;
  int64_t recomputed_tokens = 0;
  int64_t generated_tokens = 0;
  int64_t evicted_blocks = 0;
  int64_t preemptions = 0;  // cumulative: running sequences preempted (recomputed later)
  int64_t host_blocks_total = 0;
  int64_t host_blocks_used = 0;
  int64_t disk_blocks_total = 0;
  int64_t disk_blocks_used = 0;
  int64_t demoted_blocks = 0;      // cumulative: moved one tier down
  int64_t promoted_blocks = 0;     // cumulative: moved one tier up
  int64_t dropped_blocks = 0;      // cumulative: dropped from the bottom tier
  int64_t disk_read_failures = 0;  // missing files and bad checksums (recomputed)
  // Failed block writes and removals (ENOSPC, EIO); those blocks are recomputed.
  int64_t disk_write_failures = 0;
  int64_t cached_device_tokens = 0;
  int64_t cached_host_tokens = 0;
  int64_t cached_disk_tokens = 0;
  int64_t cached_remote_tokens = 0;
  RemoteTierStats remote;          // all zero without a remote tier
  int64_t retained_sessions = 0;   // sessions whose blocks are kept between turns
  int64_t retained_blocks = 0;     // device blocks they hold
  int64_t reclaimed_sessions = 0;  // cumulative: retained sessions released for memory
  int64_t pin_violations = 0;      // cumulative: live pins reclaimed
  // Pins (TTL policies): granted on tool_begin, used (the tool returned within the pin and
  // the session's KV was still held), expired (the tool returned after the deadline).
  int64_t pins_granted = 0;
  int64_t pins_used = 0;
  int64_t pins_expired = 0;
  // Turn-end grace pins (a session that calls tools, from a turn's last token until its
  // tool_begin): granted, and bridged (tool_begin found the session still held under it).
  int64_t grace_pins_granted = 0;
  int64_t grace_pins_bridged = 0;
  int64_t pinned_blocks = 0;  // device blocks held by live pins now (grace pins included)
  int64_t transfer_us = 0;    // cumulative: time in the transfer phase (swaps, disk I/O)
  // Episode caches (issue 13): the engine's records of built caches now, and cumulative
  // builds, their time on the engine thread, turns served from one, and fallbacks.
  int64_t episode_caches = 0;
  int64_t episode_builds = 0;
  int64_t episode_build_us = 0;
  int64_t episode_turns = 0;
  int64_t episode_fallbacks = 0;
  int64_t block_bytes = 0;  // bytes of one KV block (promotion/demotion bytes)
  std::string policy;       // the running policy's name
  // Per tenant (cache salt) holding KV anywhere: device blocks its sequences and retained
  // sessions hold now, and full blocks of its KV per tier (device in use or cached, host,
  // disk). Sorted by tenant_salt.
  struct TenantBlocks {
    uint64_t tenant_salt = 0;
    int64_t held_device_blocks = 0;
    int64_t device_blocks = 0;
    int64_t host_blocks = 0;
    int64_t disk_blocks = 0;
  };
  std::vector<TenantBlocks> tenants;
  int64_t tenant_cap_releases = 0;  // cumulative: retained sessions released by the cap
  // Per tool key: samples and quantiles, and the TTL the policy last chose for it.
  struct ToolKeyStats {
    ToolKeySummary summary;
    double last_ttl_s = -1;  // < 0: the policy has not pinned for this key
  };
  std::vector<ToolKeyStats> tool_keys;
};

class Engine {
 public:
  virtual ~Engine() = default;
  static Result<std::unique_ptr<Engine>> Create(const EngineOptions& options,
                                                std::unique_ptr<Backend> backend,
                                                const Tokenizer* tokenizer, Clock* clock);

  // Starts the engine thread. Without Start(), call RunUntilIdle() to drive it inline.
  virtual Status Start() = 0;
  // Finishes nothing new: cancels queued and running requests (each gets kFinished with
  // kCancelled), then joins the engine thread.
  virtual void Stop() = 0;

  // Queues a request. InvalidArgument for an empty prompt, ids outside the vocabulary or a
  // context longer than the model's positions; ResourceExhausted for a context longer than
  // the device pool can ever hold. The callback is not called then.
  virtual Status Submit(GenerateRequest request) = 0;
  // Cancels a queued or running request; its callback gets kFinished/kCancelled.
  virtual void Cancel(RequestId id) = 0;
  // A session hint (tool wait begins/ends, session closed, retention): queued and applied
  // on the engine thread at the start of its next step, like cancels. Thread-safe.
  virtual void Hint(const SessionHint& hint) { (void)hint; }
  // Switches the KV policy at the start of the next step, keeping retained sessions, their
  // pins and the learned tool statistics (SIGHUP). InvalidArgument for an unknown name or
  // a switch to or from "none" (prefix caching is fixed at start-up). Thread-safe.
  virtual Status SetPolicy(const PolicyOptions& options) {
    (void)options;
    return Status::NotSupported("this engine has one policy");
  }
  virtual EngineStats GetStats() const = 0;
  // Device blocks the engine keeps for `session` between its turns: its retained blocks
  // as its last turn left them, kept while its next turn runs (that turn's sequence holds
  // at least those), 0 once it is reclaimed or closed, or before its first turn. What a
  // pin on the session holds (session.retain's quota counts it). Thread-safe.
  virtual int64_t RetainedBlocks(SessionId session) const {
    (void)session;
    return 0;
  }

  // Runs steps on the calling thread until no work is left (tests, the CLI).
  virtual Status RunUntilIdle() = 0;
  virtual const ModelConfig& config() const = 0;
};

}  // namespace kvkeep
