// DaemonOptions: everything kvkeepd can be configured with, its defaults, the JSON
// configuration file and the command-line flags that override it. docs/configuration.md
// documents every key; keep the two in step.
//
// Precedence: built-in defaults < --config FILE (JSON) < command-line flags. Defaults of
// the state directory and socket path come from the environment (XDG / systemd), read
// through Env::GetEnvVar here and nowhere else in the daemon.
//
// Thread-safety: plain values.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

#include "base/file.h"
#include "base/status.h"

namespace kvkeep {

struct DaemonLimits {
  int64_t max_line_bytes = 8 << 20;                     // longest request line
  int32_t max_json_depth = 64;                          // nesting of objects/arrays
  int32_t max_sessions_per_uid = 256;                   // open sessions of one uid
  int32_t max_stored_sessions_per_uid = 4096;           // sessions of one uid, open or closed
  int32_t max_inflight_per_connection = 64;             // generates in flight per conn
  int64_t max_output_buffer_bytes = int64_t{64} << 20;  // unsent bytes per connection
  int64_t max_output_bytes_total = int64_t{1} << 30;    // unsent bytes, all connections
  int32_t max_connections = 4096;                       // open connections (fd limit too)
  int32_t max_connections_per_uid = 1024;               // open connections of one uid
  int32_t max_tokens = 4096;                            // per session.generate
  int64_t max_stored_bytes_per_uid = int64_t{1} << 30;  // messages, tool events, forks
  int32_t max_messages_per_append = 4096;               // messages of one session.append
  int32_t max_inflight_per_uid = 256;                   // generates in flight, all conns
  int32_t max_device_blocks_per_uid = 0;                // device KV blocks held; 0: no cap
  int32_t max_host_blocks_per_uid = 0;                  // host-tier KV blocks; 0: no cap
  int32_t max_disk_blocks_per_uid = 0;                  // disk-tier KV blocks; 0: no cap
};

struct DaemonEngineOptions {
  std::string device = "cpu";                    // "cpu" or "cuda" (a CUDA build)
  int64_t kv_memory_bytes = int64_t{256} << 20;  // KV pool size (ignored if num_kv_blocks)
  int32_t num_kv_blocks = 0;                     // 0: derive from kv_memory_bytes
  int32_t block_size = 16;                       // tokens per KV block
  int32_t max_batch_tokens = 512;                // token budget of one engine step
  int32_t prefill_chunk_tokens = 256;            // largest prefill chunk per sequence
  int32_t max_running = 64;                      // sequences decoding at once
  int32_t num_threads = 0;                       // CPU backend threads; 0: all cores
  int32_t host_blocks = 0;                       // host KV tier, blocks; 0: none
  double disk_gib = 0;  // disk KV tier under state_dir/kv, GiB; 0: none (needs host_blocks)
  // --step-log: each step's work and time, written here as CSV when the daemon stops
  // (policy/step_log.h; policy_bench --fit-step-log prices its simulator with it); "": off
  std::string step_log;
};

// The KV policy's knobs (docs/policy.md, docs/configuration.md "ttl"). The policy's name
// is DaemonOptions::policy.
struct DaemonTtlOptions {
  double max_ttl_s = 30;                  // --max-ttl-s: longest learned pin
  double fixed_ttl_s = 2;                 // --fixed-ttl-s: fixed-ttl's pin
  double fixed_ttl_mean_threshold_s = 2;  // fixed-ttl pins keys whose mean is at most this
  double prior_mean_s = 5;                // --tool-prior-mean-s: exponential prior's mean
  int32_t min_samples = 20;               // --tool-min-samples: before a key's own CDF
  int32_t window_samples = 256;           // --tool-window-samples: newest samples kept
  int64_t retain_quota_blocks = 1 << 20;  // --retain-quota-blocks: hint pins per uid
  double starvation_bound_s = 30;         // program-aware admission's starvation bound
  // --ttl-cost-s-per-block-s: the TTL rule's price of one held block per second on a full
  // pool, in seconds of other sessions' time (TtlOptions::full_pressure_cost_s_per_block_s)
  double cost_s_per_block_s = 5e-5;
  // --turn-end-grace-s: the pinning policies' pin from a turn's last token until its
  // tool_begin (PolicyOptions::turn_end_grace_s); 0 turns it off
  double turn_end_grace_s = 0.5;
  bool calibrate = false;  // --calibrate-cost-model: time the engine at start, save the fit
};

// The OpenAI-compatible HTTP front end (docs/openai.md).
struct DaemonHttpOptions {
  std::string socket_path;  // "": kvkeep-http.sock next to the native socket; "none": off
  int32_t socket_mode = 0660;
  std::string listen;        // TCP "HOST:PORT" (e.g. 127.0.0.1:8000); "": no TCP
  std::string api_key_file;  // `KEY TENANT` lines; required with listen
  int64_t max_body_bytes = 8 << 20;
  int32_t max_connections = 256;  // per listener
  int32_t idle_timeout_s = 30;
  int32_t max_inflight = 256;  // HTTP generations in flight; beyond: 429
  // TESTING ONLY: a JSON array of assistant replies forced in order (docs/openai.md).
  std::string testing_scripted_replies;
};

// Several instances sharing KV (docs/scale-out.md).
struct DaemonClusterOptions {
  std::string remote_tier;          // "redis://HOST:PORT/DB" or "unix:PATH"; "": none
  std::string remote_auth_file;     // the Redis AUTH password; "": no AUTH
  int64_t remote_timeout_ms = 100;  // bound on each Redis connect, send and receive
  std::string cluster_secret_file;  // tenant salts shared by instances; "": per instance
};

// The per-session segment index and episodes (docs/episodes.md "In the daemon").
struct DaemonEpisodeOptions {
  bool index = true;                  // --episode-index on|off: index appended messages
  std::string embedder = "default";   // --embedder hashed|bert|hybrid|default
  int64_t budget_tokens = 0;          // --episode-budget-tokens: global budget; 0: no episodes
  int32_t num_episodes = 4;           // --episodes: E
  bool serve = true;                  // --episode-cache on|off: routed turns decode from caches
  int64_t cache_budget_tokens = 0;    // --episode-cache-budget-tokens: M; 0: the session budget
  int32_t cache_block_tokens = 2048;  // --episode-cache-block-tokens: B of a cache's build
  int64_t route_wait_ms = 5000;       // --episode-route-wait-ms: wait for indexing before routing
  // --episode-layer-alpha: per-layer budgets M_l from the model's sensitivity profile
  // (engine/layer_budget.h); 0: M in every layer. > 0 needs calibration_file.
  double cache_layer_alpha = 0;
  std::string calibration_file;  // --episode-calibration: text the profile is measured on
};

struct DaemonOptions {
  std::string model_dir;    // empty: the installed default model, else the tiny one
  std::string socket_path;  // Unix socket to listen on
  std::string state_dir;    // SQLite database, models/, disk tier
  int32_t socket_mode = 0660;
  std::string socket_group;  // chgrp the socket to this group; empty: leave it
  std::string admin_group;   // members may list all sessions; empty: root only
  std::string log_level = "info";
  std::string policy = "ttl";        // ttl | ttl-fcfs | fixed-ttl | lru | none
  int32_t io_threads = 2;            // Asio threads parsing requests and writing replies
  int64_t watchdog_interval_ms = 0;  // 0: half of systemd's WATCHDOG_USEC, or off
  DaemonLimits limits;
  DaemonEngineOptions engine;
  DaemonTtlOptions ttl;
  DaemonHttpOptions http;
  DaemonClusterOptions cluster;
  DaemonEpisodeOptions episodes;
  // TESTING ONLY (--testing-store-fault N:CODE[:COUNT], no configuration key): the store's
  // Nth mutating write after start, and the COUNT-1 after it, fail with CODE (full, busy or
  // ioerr): docs/reliability.md, "Injected faults". Empty (the default): no fault.
  std::string testing_store_fault;
  // TESTING ONLY (--testing-sim-cost-model FILE, no configuration key): the engine runs over
  // engine/sim_backend.h, each step sleeping the price this cost_model.json gives it (the
  // simulator's pricing in real time, for comparing a real daemon with bench/policy_bench);
  // engine.device is ignored. Empty (the default): the real backend.
  std::string testing_sim_cost_model;

  std::string DatabasePath() const { return JoinPath(state_dir, "kvkeep.db"); }
  std::string DefaultModelDir() const { return JoinPath(state_dir, "models/tiny"); }
  // The HTTP socket's path ("" when off): http.socket_path, or kvkeep-http.sock beside
  // the native socket (its name with ".sock" replaced by "-http.sock").
  std::string HttpSocketPath() const;
};

// Defaults with state_dir and socket_path resolved from the environment:
//   under systemd ($INVOCATION_ID or $NOTIFY_SOCKET set): $STATE_DIRECTORY or
//   /var/lib/kvkeep, and $RUNTIME_DIRECTORY/kvkeep.sock or /run/kvkeep/kvkeep.sock;
//   otherwise $XDG_STATE_HOME/kvkeep ($HOME/.local/state/kvkeep) and
//   $XDG_RUNTIME_DIR/kvkeep.sock (/tmp/kvkeep-$UID.sock).
DaemonOptions DefaultDaemonOptions(Env* env);

// Applies a JSON configuration document on top of *options. Unknown keys, wrong types and
// out-of-range values are InvalidArgument naming the key.
Status ApplyConfigJson(std::string_view json_text, DaemonOptions* options);

// Checks cross-field constraints (paths set, policy known, limits positive, log level).
Status ValidateDaemonOptions(const DaemonOptions& options);

// What the command line asked for.
struct CommandLine {
  DaemonOptions options;
  bool check_config = false;  // --check-config: validate, print, exit
  bool exit_now = false;      // --help / --version was printed
  int exit_code = 0;
};

// Parses kvkeepd's argv: defaults, then --config FILE, then the flags given. Errors
// (bad flag, unreadable or invalid config) are InvalidArgument with a clear message.
// Validation is not run here; call ValidateDaemonOptions.
Result<CommandLine> ParseCommandLine(int argc, const char* const* argv, Env* env);

// The options as a JSON document in the configuration file's format (for --check-config
// and logs).
std::string DaemonOptionsToJson(const DaemonOptions& options);

struct PolicyOptions;
// The engine's policy options from the daemon's (name, TTL knobs; the cost model is left
// at its default).
void ToPolicyOptions(const DaemonOptions& options, PolicyOptions* out);

}  // namespace kvkeep
