#include "daemon/config.h"

#include <spdlog/spdlog.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>
#include <set>

#include "cache/remote_tier.h"
#include "policy/policy_factory.h"

namespace kvkeep {
namespace {

using nlohmann::json;

// Reads one typed field of a JSON object into *out, range-checked.
class FieldReader {
 public:
  FieldReader(const json& obj, std::string prefix) : obj_(obj), prefix_(std::move(prefix)) {}

  template <typename T>
  void Int(const char* key, T* out, int64_t min, int64_t max) {
    auto it = obj_.find(key);
    if (it == obj_.end() || !status_.ok()) return;
    seen_++;
    if (!it->is_number_integer()) return Fail(key, "must be an integer");
    int64_t v = it->get<int64_t>();
    if (v < min || v > max) {
      return Fail(key, "must be in [" + std::to_string(min) + ", " + std::to_string(max) + "]");
    }
    *out = static_cast<T>(v);
  }
  void Double(const char* key, double* out, double min, double max) {
    auto it = obj_.find(key);
    if (it == obj_.end() || !status_.ok()) return;
    seen_++;
    if (!it->is_number()) return Fail(key, "must be a number");
    const double v = it->get<double>();
    if (!(v >= min && v <= max)) {
      return Fail(key, "must be in [" + std::to_string(min) + ", " + std::to_string(max) + "]");
    }
    *out = v;
  }
  void String(const char* key, std::string* out) {
    auto it = obj_.find(key);
    if (it == obj_.end() || !status_.ok()) return;
    seen_++;
    if (!it->is_string()) return Fail(key, "must be a string");
    *out = it->get<std::string>();
  }
  void Bool(const char* key, bool* out) {
    auto it = obj_.find(key);
    if (it == obj_.end() || !status_.ok()) return;
    seen_++;
    if (!it->is_boolean()) return Fail(key, "must be true or false");
    *out = it->get<bool>();
  }
  // An octal file mode: a string like "0660" or an integer (taken as written in decimal
  // digits of octal, i.e. 660 means 0660).
  void Mode(const char* key, int32_t* out) {
    auto it = obj_.find(key);
    if (it == obj_.end() || !status_.ok()) return;
    seen_++;
    std::string text = it->is_string()           ? it->get<std::string>()
                       : it->is_number_integer() ? std::to_string(it->get<int64_t>())
                                                 : std::string();
    size_t used = 0;
    long mode = -1;
    try {
      mode = std::stol(text, &used, 8);
    } catch (const std::exception&) {
      used = 0;
    }
    if (text.empty() || used != text.size() || mode < 0 || mode > 0777) {
      return Fail(key, "must be an octal mode like \"0660\"");
    }
    *out = static_cast<int32_t>(mode);
  }
  const json* Object(const char* key) {
    auto it = obj_.find(key);
    if (it == obj_.end() || !status_.ok()) return nullptr;
    seen_++;
    if (!it->is_object()) {
      Fail(key, "must be an object");
      return nullptr;
    }
    return &*it;
  }
  // Every key must have been consumed: typos are errors, not silently ignored.
  Status Finish() {
    if (!status_.ok()) return status_;
    if (seen_ != obj_.size()) {
      for (auto& [k, v] : obj_.items()) {
        if (known_.count(k) == 0)
          return Status::InvalidArgument("unknown key '" + prefix_ + k + "'");
      }
    }
    return Status::OK();
  }
  void Known(std::initializer_list<const char*> keys) { known_.insert(keys.begin(), keys.end()); }

 private:
  void Fail(const char* key, const std::string& what) {
    status_ = Status::InvalidArgument("'" + prefix_ + key + "' " + what);
  }
  const json& obj_;
  std::string prefix_;
  size_t seen_ = 0;
  std::set<std::string> known_;
  Status status_;
};

constexpr int64_t kMaxI32 = INT32_MAX;
constexpr int64_t kMaxI64 = INT64_MAX;

Status ApplyLimits(const json& obj, DaemonLimits* l) {
  FieldReader r(obj, "limits.");
  r.Known({"max_line_bytes", "max_json_depth", "max_sessions_per_uid",
           "max_inflight_per_connection", "max_output_buffer_bytes", "max_tokens",
           "max_output_bytes_total", "max_connections", "max_connections_per_uid",
           "max_stored_bytes_per_uid", "max_stored_sessions_per_uid", "max_messages_per_append",
           "max_inflight_per_uid", "max_device_blocks_per_uid", "max_host_blocks_per_uid",
           "max_disk_blocks_per_uid"});
  r.Int("max_line_bytes", &l->max_line_bytes, 64, int64_t{1} << 32);
  r.Int("max_json_depth", &l->max_json_depth, 2, 10000);
  r.Int("max_sessions_per_uid", &l->max_sessions_per_uid, 1, kMaxI32);
  r.Int("max_inflight_per_connection", &l->max_inflight_per_connection, 1, kMaxI32);
  r.Int("max_output_buffer_bytes", &l->max_output_buffer_bytes, 4096, kMaxI64);
  r.Int("max_tokens", &l->max_tokens, 1, kMaxI32);
  r.Int("max_output_bytes_total", &l->max_output_bytes_total, 4096, kMaxI64);
  r.Int("max_connections", &l->max_connections, 1, kMaxI32);
  r.Int("max_connections_per_uid", &l->max_connections_per_uid, 1, kMaxI32);
  r.Int("max_stored_bytes_per_uid", &l->max_stored_bytes_per_uid, 4096, kMaxI64);
  r.Int("max_stored_sessions_per_uid", &l->max_stored_sessions_per_uid, 1, kMaxI32);
  r.Int("max_messages_per_append", &l->max_messages_per_append, 1, kMaxI32);
  r.Int("max_inflight_per_uid", &l->max_inflight_per_uid, 1, kMaxI32);
  r.Int("max_device_blocks_per_uid", &l->max_device_blocks_per_uid, 0, kMaxI32);
  r.Int("max_host_blocks_per_uid", &l->max_host_blocks_per_uid, 0, kMaxI32);
  r.Int("max_disk_blocks_per_uid", &l->max_disk_blocks_per_uid, 0, kMaxI32);
  return r.Finish();
}

Status ApplyEngine(const json& obj, DaemonEngineOptions* e) {
  FieldReader r(obj, "engine.");
  r.Known({"device", "kv_memory_bytes", "num_kv_blocks", "block_size", "max_batch_tokens",
           "prefill_chunk_tokens", "max_running", "num_threads", "host_blocks", "disk_gib",
           "step_log"});
  r.String("device", &e->device);
  r.Int("kv_memory_bytes", &e->kv_memory_bytes, 0, kMaxI64);
  r.Int("num_kv_blocks", &e->num_kv_blocks, 0, kMaxI32);
  r.Int("block_size", &e->block_size, 1, 1024);
  r.Int("max_batch_tokens", &e->max_batch_tokens, 1, kMaxI32);
  r.Int("prefill_chunk_tokens", &e->prefill_chunk_tokens, 1, kMaxI32);
  r.Int("max_running", &e->max_running, 1, kMaxI32);
  r.Int("num_threads", &e->num_threads, 0, 4096);
  r.Int("host_blocks", &e->host_blocks, 0, kMaxI32);
  r.Double("disk_gib", &e->disk_gib, 0, 1 << 20);
  r.String("step_log", &e->step_log);
  return r.Finish();
}

}  // namespace

DaemonOptions DefaultDaemonOptions(Env* env) {
  DaemonOptions o;
  auto env_or = [env](const char* name, const std::string& fallback) {
    std::string v = env->GetEnvVar(name);
    return v.empty() ? fallback : v;
  };
  bool systemd =
      !env->GetEnvVar("INVOCATION_ID").empty() || !env->GetEnvVar("NOTIFY_SOCKET").empty();
  if (systemd) {
    // StateDirectory=/RuntimeDirectory= may list several paths separated by ':'.
    std::string state = env_or("STATE_DIRECTORY", "/var/lib/kvkeep");
    std::string runtime = env_or("RUNTIME_DIRECTORY", "/run/kvkeep");
    o.state_dir = state.substr(0, state.find(':'));
    o.socket_path = JoinPath(runtime.substr(0, runtime.find(':')), "kvkeep.sock");
  } else {
    std::string home = env_or("HOME", "/tmp");
    o.state_dir = JoinPath(env_or("XDG_STATE_HOME", JoinPath(home, ".local/state")), "kvkeep");
    std::string runtime = env->GetEnvVar("XDG_RUNTIME_DIR");
    o.socket_path = runtime.empty() ? "/tmp/kvkeep-" + std::to_string(getuid()) + ".sock"
                                    : JoinPath(runtime, "kvkeep.sock");
  }
  return o;
}

std::string DaemonOptions::HttpSocketPath() const {
  if (http.socket_path == "none") return "";
  if (!http.socket_path.empty()) return http.socket_path;
  std::string p = socket_path;
  if (p.size() >= 5 && p.compare(p.size() - 5, 5, ".sock") == 0) p.resize(p.size() - 5);
  return p + "-http.sock";
}

namespace {

Status ApplyTtl(const json& obj, DaemonTtlOptions* t) {
  FieldReader r(obj, "ttl.");
  r.Known({"max_ttl_s", "fixed_ttl_s", "fixed_ttl_mean_threshold_s", "prior_mean_s", "min_samples",
           "window_samples", "retain_quota_blocks", "starvation_bound_s", "calibrate",
           "cost_s_per_block_s", "turn_end_grace_s"});
  r.Double("max_ttl_s", &t->max_ttl_s, 0, 86400);
  r.Double("fixed_ttl_s", &t->fixed_ttl_s, 0, 86400);
  r.Double("fixed_ttl_mean_threshold_s", &t->fixed_ttl_mean_threshold_s, 0, 86400);
  r.Double("prior_mean_s", &t->prior_mean_s, 1e-3, 86400);
  r.Int("min_samples", &t->min_samples, 1, 1 << 20);
  r.Int("window_samples", &t->window_samples, 1, 1 << 20);
  r.Int("retain_quota_blocks", &t->retain_quota_blocks, 0, kMaxI64);
  r.Double("starvation_bound_s", &t->starvation_bound_s, 0, 86400);
  r.Bool("calibrate", &t->calibrate);
  r.Double("cost_s_per_block_s", &t->cost_s_per_block_s, 0, 1e6);
  r.Double("turn_end_grace_s", &t->turn_end_grace_s, 0, 3600);
  return r.Finish();
}

Status ApplyHttp(const json& j, DaemonHttpOptions* h) {
  FieldReader r(j, "http.");
  r.Known({"socket", "socket_mode", "listen", "api_key_file", "max_body_bytes", "max_connections",
           "idle_timeout_s", "max_inflight", "testing_scripted_replies"});
  r.String("socket", &h->socket_path);
  r.Mode("socket_mode", &h->socket_mode);
  r.String("listen", &h->listen);
  r.String("api_key_file", &h->api_key_file);
  r.Int("max_body_bytes", &h->max_body_bytes, 1024, kMaxI64);
  r.Int("max_connections", &h->max_connections, 1, 65536);
  r.Int("idle_timeout_s", &h->idle_timeout_s, 1, 86400);
  r.Int("max_inflight", &h->max_inflight, 1, 1 << 20);
  r.String("testing_scripted_replies", &h->testing_scripted_replies);
  return r.Finish();
}

Status ApplyCluster(const json& j, DaemonClusterOptions* c) {
  FieldReader r(j, "cluster.");
  r.Known({"remote_tier", "remote_auth_file", "remote_timeout_ms", "cluster_secret_file"});
  r.String("remote_tier", &c->remote_tier);
  r.String("remote_auth_file", &c->remote_auth_file);
  r.Int("remote_timeout_ms", &c->remote_timeout_ms, 1, 60'000);
  r.String("cluster_secret_file", &c->cluster_secret_file);
  return r.Finish();
}

Status ApplyEpisodes(const json& j, DaemonEpisodeOptions* e) {
  FieldReader r(j, "episodes.");
  r.Known({"index", "embedder", "budget_tokens", "num_episodes", "serve", "cache_budget_tokens",
           "cache_block_tokens", "route_wait_ms", "cache_layer_alpha", "calibration_file"});
  r.Bool("index", &e->index);
  r.String("embedder", &e->embedder);
  r.Int("budget_tokens", &e->budget_tokens, 0, kMaxI64);
  r.Int("num_episodes", &e->num_episodes, 1, 1024);
  r.Bool("serve", &e->serve);
  r.Int("cache_budget_tokens", &e->cache_budget_tokens, 0, kMaxI64);
  r.Int("cache_block_tokens", &e->cache_block_tokens, 1, 1 << 20);
  r.Int("route_wait_ms", &e->route_wait_ms, 0, 600'000);
  r.Double("cache_layer_alpha", &e->cache_layer_alpha, 0, 64);
  r.String("calibration_file", &e->calibration_file);
  return r.Finish();
}

}  // namespace

Status ApplyConfigJson(std::string_view json_text, DaemonOptions* o) {
  json doc = json::parse(json_text, nullptr, /*allow_exceptions=*/false, /*ignore_comments=*/true);
  if (doc.is_discarded()) return Status::InvalidArgument("configuration is not valid JSON");
  if (!doc.is_object()) return Status::InvalidArgument("configuration must be a JSON object");
  FieldReader r(doc, "");
  r.Known({"model", "socket", "state_dir", "socket_mode", "socket_group", "admin_group",
           "log_level", "policy", "io_threads", "watchdog_interval_ms", "limits", "engine", "ttl",
           "http", "cluster", "episodes"});
  r.String("model", &o->model_dir);
  r.String("socket", &o->socket_path);
  r.String("state_dir", &o->state_dir);
  r.Mode("socket_mode", &o->socket_mode);
  r.String("socket_group", &o->socket_group);
  r.String("admin_group", &o->admin_group);
  r.String("log_level", &o->log_level);
  r.String("policy", &o->policy);
  r.Int("io_threads", &o->io_threads, 1, 256);
  r.Int("watchdog_interval_ms", &o->watchdog_interval_ms, 0, kMaxI64);
  if (const json* limits = r.Object("limits")) RETURN_IF_ERROR(ApplyLimits(*limits, &o->limits));
  if (const json* engine = r.Object("engine")) RETURN_IF_ERROR(ApplyEngine(*engine, &o->engine));
  if (const json* ttl = r.Object("ttl")) RETURN_IF_ERROR(ApplyTtl(*ttl, &o->ttl));
  if (const json* http = r.Object("http")) RETURN_IF_ERROR(ApplyHttp(*http, &o->http));
  if (const json* c = r.Object("cluster")) RETURN_IF_ERROR(ApplyCluster(*c, &o->cluster));
  if (const json* e = r.Object("episodes")) RETURN_IF_ERROR(ApplyEpisodes(*e, &o->episodes));
  return r.Finish();
}

Status ValidateDaemonOptions(const DaemonOptions& o) {
  if (o.socket_path.empty()) return Status::InvalidArgument("socket path is empty");
  // sockaddr_un.sun_path holds 108 bytes including the terminating NUL.
  if (o.socket_path.size() > 107) {
    return Status::InvalidArgument("socket path longer than 107 bytes: " + o.socket_path);
  }
  if (o.state_dir.empty()) return Status::InvalidArgument("state_dir is empty");
  RETURN_IF_ERROR(ValidatePolicyName(o.policy));
  static const std::set<std::string> kLevels = {"trace", "debug",    "info", "warn",
                                                "error", "critical", "off"};
  if (kLevels.count(o.log_level) == 0) {
    return Status::InvalidArgument("unknown log_level '" + o.log_level +
                                   "' (trace, debug, info, warn, error, critical, off)");
  }
  if (o.limits.max_messages_per_append < 1 || o.limits.max_inflight_per_uid < 1) {
    return Status::InvalidArgument(
        "limits.max_messages_per_append and limits.max_inflight_per_uid must be >= 1");
  }
  if (o.engine.device != "cpu" && o.engine.device != "cuda") {
    return Status::InvalidArgument("engine.device must be cpu or cuda, not '" + o.engine.device +
                                   "'");
  }
  if (o.engine.num_kv_blocks == 0 && o.engine.kv_memory_bytes == 0) {
    return Status::InvalidArgument("engine: set num_kv_blocks or kv_memory_bytes");
  }
  if (o.engine.disk_gib > 0 && o.engine.host_blocks == 0) {
    return Status::InvalidArgument("engine.disk_gib needs engine.host_blocks > 0");
  }
  if (o.engine.host_blocks < 0 || !(o.engine.disk_gib >= 0)) {
    return Status::InvalidArgument("engine.host_blocks and engine.disk_gib must be >= 0");
  }
  if (!o.cluster.remote_tier.empty()) {
    RETURN_IF_ERROR(ParseRemoteAddress(o.cluster.remote_tier).status());
    if (o.engine.disk_gib <= 0) {
      return Status::InvalidArgument(
          "cluster.remote_tier needs a disk tier (engine.disk_gib > 0): remote blocks stage "
          "through it");
    }
  }
  if (o.episodes.cache_block_tokens < 1 || o.episodes.cache_budget_tokens < 0 ||
      o.episodes.route_wait_ms < 0) {
    return Status::InvalidArgument(
        "episodes: cache_block_tokens must be >= 1, cache_budget_tokens and route_wait_ms >= 0");
  }
  if (!(o.episodes.cache_layer_alpha >= 0 && o.episodes.cache_layer_alpha <= 64)) {
    return Status::InvalidArgument("episodes.cache_layer_alpha must be in [0, 64]");
  }
  if (o.episodes.cache_layer_alpha > 0 && o.episodes.calibration_file.empty()) {
    return Status::InvalidArgument(
        "episodes.cache_layer_alpha > 0 needs episodes.calibration_file (--episode-calibration): "
        "the text the layer profile is measured on");
  }
  if (o.engine.prefill_chunk_tokens > o.engine.max_batch_tokens) {
    return Status::InvalidArgument("engine.prefill_chunk_tokens exceeds engine.max_batch_tokens");
  }
  return Status::OK();
}

Result<CommandLine> ParseCommandLine(int argc, const char* const* argv, Env* env) {
  CommandLine cl;
  cl.options = DefaultDaemonOptions(env);
  DaemonOptions& o = cl.options;

  CLI::App app{"kvkeepd: serves an LLM over a Unix socket and keeps KV caches warm"};
  std::string config_path;
  std::string mode_text;
  app.set_version_flag("--version", "kvkeepd 0.1.0");
  app.add_option("--config", config_path, "JSON configuration file (flags override it)");
  app.add_flag("--check-config", cl.check_config, "validate the configuration and exit");
  // Flags write into a scratch copy; only those given are applied after the config file.
  DaemonOptions f;
  std::vector<std::pair<CLI::Option*, std::function<void()>>> overrides;
  auto str = [&](const char* flag, std::string* scratch, std::string* dst, const char* help) {
    overrides.push_back(
        {app.add_option(flag, *scratch, help), [scratch, dst] { *dst = *scratch; }});
  };
  auto num = [&](const char* flag, auto* scratch, auto* dst, const char* help) {
    overrides.push_back(
        {app.add_option(flag, *scratch, help), [scratch, dst] { *dst = *scratch; }});
  };
  str("--model", &f.model_dir, &o.model_dir, "model directory (default: synthetic tiny model)");
  str("--socket", &f.socket_path, &o.socket_path, "Unix socket path");
  str("--state-dir", &f.state_dir, &o.state_dir, "state directory (database, models)");
  overrides.push_back(
      {app.add_option("--socket-mode", mode_text, "socket mode, octal (0660)"), [] {}});
  str("--socket-group", &f.socket_group, &o.socket_group, "group owning the socket");
  str("--admin-group", &f.admin_group, &o.admin_group, "group allowed to list all sessions");
  str("--log-level", &f.log_level, &o.log_level, "trace|debug|info|warn|error|critical|off");
  str("--policy", &f.policy, &o.policy, "KV policy: ttl|ttl-fcfs|fixed-ttl|lru|none");
  num("--max-ttl-s", &f.ttl.max_ttl_s, &o.ttl.max_ttl_s, "longest pin the TTL rule grants, s");
  num("--fixed-ttl-s", &f.ttl.fixed_ttl_s, &o.ttl.fixed_ttl_s, "fixed-ttl's pin, s");
  num("--fixed-ttl-mean-threshold-s", &f.ttl.fixed_ttl_mean_threshold_s,
      &o.ttl.fixed_ttl_mean_threshold_s, "fixed-ttl pins tools whose mean is at most this, s");
  num("--tool-prior-mean-s", &f.ttl.prior_mean_s, &o.ttl.prior_mean_s,
      "mean of the tool-duration prior with no samples, s");
  num("--tool-min-samples", &f.ttl.min_samples, &o.ttl.min_samples,
      "samples before a tool key's own CDF is used");
  num("--tool-window-samples", &f.ttl.window_samples, &o.ttl.window_samples,
      "newest tool-duration samples kept per key (ageing window)");
  num("--ttl-cost-s-per-block-s", &f.ttl.cost_s_per_block_s, &o.ttl.cost_s_per_block_s,
      "the TTL rule's price of a held block per second on a full pool, s");
  num("--turn-end-grace-s", &f.ttl.turn_end_grace_s, &o.ttl.turn_end_grace_s,
      "pinning policies: pin a session from its turn's last token to its tool_begin, s (0: off)");
  overrides.push_back({app.add_flag("--calibrate-cost-model", f.ttl.calibrate,
                                    "time the engine at start-up, fit and save the cost model"),
                       [&] { o.ttl.calibrate = f.ttl.calibrate; }});
  num("--retain-quota-blocks", &f.ttl.retain_quota_blocks, &o.ttl.retain_quota_blocks,
      "KV blocks one uid may pin with session.retain");
  num("--io-threads", &f.io_threads, &o.io_threads, "Asio I/O threads");
  num("--max-line-bytes", &f.limits.max_line_bytes, &o.limits.max_line_bytes,
      "longest request line, bytes");
  num("--max-json-depth", &f.limits.max_json_depth, &o.limits.max_json_depth,
      "deepest JSON nesting");
  num("--max-sessions-per-uid", &f.limits.max_sessions_per_uid, &o.limits.max_sessions_per_uid,
      "open sessions per uid");
  num("--max-inflight", &f.limits.max_inflight_per_connection,
      &o.limits.max_inflight_per_connection, "in-flight generates per connection");
  num("--max-output-buffer-bytes", &f.limits.max_output_buffer_bytes,
      &o.limits.max_output_buffer_bytes, "unsent bytes per connection before it is dropped");
  num("--max-tokens", &f.limits.max_tokens, &o.limits.max_tokens, "max_tokens per generate");
  num("--max-stored-bytes-per-uid", &f.limits.max_stored_bytes_per_uid,
      &o.limits.max_stored_bytes_per_uid, "bytes of messages and tool events one uid may store");
  num("--max-stored-sessions-per-uid", &f.limits.max_stored_sessions_per_uid,
      &o.limits.max_stored_sessions_per_uid, "sessions one uid may keep, open or closed");
  num("--max-messages-per-append", &f.limits.max_messages_per_append,
      &o.limits.max_messages_per_append, "messages in one session.append");
  num("--max-inflight-per-uid", &f.limits.max_inflight_per_uid, &o.limits.max_inflight_per_uid,
      "in-flight generates of one uid, all connections");
  num("--max-device-blocks-per-uid", &f.limits.max_device_blocks_per_uid,
      &o.limits.max_device_blocks_per_uid, "device KV blocks one uid may hold; 0: no cap");
  num("--max-host-blocks-per-uid", &f.limits.max_host_blocks_per_uid,
      &o.limits.max_host_blocks_per_uid, "host-tier KV blocks one uid may keep; 0: no cap");
  num("--max-disk-blocks-per-uid", &f.limits.max_disk_blocks_per_uid,
      &o.limits.max_disk_blocks_per_uid, "disk-tier KV blocks one uid may keep; 0: no cap");
  num("--max-output-bytes-total", &f.limits.max_output_bytes_total,
      &o.limits.max_output_bytes_total, "unsent bytes of all connections before slow readers go");
  num("--max-connections", &f.limits.max_connections, &o.limits.max_connections,
      "open connections in total");
  num("--max-connections-per-uid", &f.limits.max_connections_per_uid,
      &o.limits.max_connections_per_uid, "open connections per uid");
  num("--kv-memory-bytes", &f.engine.kv_memory_bytes, &o.engine.kv_memory_bytes,
      "KV pool size, bytes");
  num("--num-kv-blocks,--kv-blocks", &f.engine.num_kv_blocks, &o.engine.num_kv_blocks,
      "KV pool size, blocks (overrides --kv-memory-bytes)");
  num("--host-blocks", &f.engine.host_blocks, &o.engine.host_blocks, "host KV tier, blocks");
  num("--disk-gib", &f.engine.disk_gib, &o.engine.disk_gib,
      "disk KV tier under state_dir/kv, GiB (needs --host-blocks)");
  str("--step-log", &f.engine.step_log, &o.engine.step_log,
      "write each engine step's work and time to this CSV file at shutdown");
  str("--device", &f.engine.device, &o.engine.device, "cpu or cuda");
  num("--threads", &f.engine.num_threads, &o.engine.num_threads, "CPU backend threads");
  str("--http-socket", &f.http.socket_path, &o.http.socket_path,
      "OpenAI-compatible HTTP Unix socket (default: kvkeep-http.sock beside --socket; none: off)");
  str("--http-listen", &f.http.listen, &o.http.listen, "also serve HTTP on TCP HOST:PORT");
  str("--api-key-file", &f.http.api_key_file, &o.http.api_key_file,
      "`KEY TENANT` lines; bearer keys required over TCP");
  num("--http-max-body-bytes", &f.http.max_body_bytes, &o.http.max_body_bytes,
      "largest HTTP request body (413 beyond)");
  num("--http-max-inflight", &f.http.max_inflight, &o.http.max_inflight,
      "HTTP generations in flight (429 beyond)");
  str("--remote-tier", &f.cluster.remote_tier, &o.cluster.remote_tier,
      "shared KV tier: redis://HOST:PORT/DB or unix:PATH (needs --disk-gib)");
  str("--remote-auth-file", &f.cluster.remote_auth_file, &o.cluster.remote_auth_file,
      "file holding the Redis AUTH password");
  num("--remote-timeout-ms", &f.cluster.remote_timeout_ms, &o.cluster.remote_timeout_ms,
      "bound on each Redis connect, send and receive, ms");
  str("--cluster-secret-file", &f.cluster.cluster_secret_file, &o.cluster.cluster_secret_file,
      "secret shared by the instances of one cluster: tenant salts = HMAC(secret, tenant)");
  str("--embedder", &f.episodes.embedder, &o.episodes.embedder,
      "segment embedder: hashed|bert|hybrid|default (hybrid when MiniLM is installed)");
  num("--episode-budget-tokens", &f.episodes.budget_tokens, &o.episodes.budget_tokens,
      "a session's KV budget before its history is clustered into episodes; 0: never");
  num("--episodes", &f.episodes.num_episodes, &o.episodes.num_episodes,
      "episodes per over-budget session (E)");
  std::string index_text;
  overrides.push_back({app.add_option("--episode-index", index_text,
                                      "on|off: index appended messages for session.query"),
                       [&] { o.episodes.index = index_text != "off"; }});
  std::string serve_text;
  overrides.push_back({app.add_option("--episode-cache", serve_text,
                                      "on|off: decode routed turns from episode caches"),
                       [&] { o.episodes.serve = serve_text != "off"; }});
  num("--episode-cache-budget-tokens", &f.episodes.cache_budget_tokens,
      &o.episodes.cache_budget_tokens, "KV entries an episode cache keeps (M); 0: the budget");
  num("--episode-cache-block-tokens", &f.episodes.cache_block_tokens,
      &o.episodes.cache_block_tokens, "block of an episode cache's block-wise build (B)");
  num("--episode-route-wait-ms", &f.episodes.route_wait_ms, &o.episodes.route_wait_ms,
      "how long a routed turn waits for its history to be indexed, ms");
  num("--episode-layer-alpha", &f.episodes.cache_layer_alpha, &o.episodes.cache_layer_alpha,
      "per-layer episode cache budgets from the model's sensitivity profile; 0: uniform");
  str("--episode-calibration", &f.episodes.calibration_file, &o.episodes.calibration_file,
      "text the layer profile is measured on (needed with --episode-layer-alpha > 0)");
  str("--testing-store-fault", &f.testing_store_fault, &o.testing_store_fault,
      "TESTING ONLY: N:full|busy|ioerr[:COUNT], fail the store's Nth write");
  str("--testing-sim-cost-model", &f.testing_sim_cost_model, &o.testing_sim_cost_model,
      "TESTING ONLY: run over the simulator backend priced by this cost model, in real time");
  str("--testing-scripted-replies", &f.http.testing_scripted_replies,
      &o.http.testing_scripted_replies, "TESTING ONLY: JSON array of forced assistant replies");

  try {
    app.parse(argc, argv);
  } catch (const CLI::Success& e) {
    cl.exit_now = true;
    cl.exit_code = app.exit(e);
    return cl;
  } catch (const CLI::ParseError& e) {
    return Status::InvalidArgument(e.what());
  }
  if (!config_path.empty()) {
    auto text = env->ReadFile(config_path);
    if (!text.ok()) return Status::InvalidArgument("--config: " + text.status().message());
    Status st = ApplyConfigJson(*text, &o);
    if (!st.ok()) return Status::InvalidArgument(config_path + ": " + st.message());
  }
  for (auto& [opt, apply] : overrides) {
    if (opt->count() > 0) apply();
  }
  if (!mode_text.empty()) {
    Status st = ApplyConfigJson(json{{"socket_mode", mode_text}}.dump(), &o);
    if (!st.ok()) return Status::InvalidArgument("--socket-mode: " + st.message());
  }
  return cl;
}

std::string DaemonOptionsToJson(const DaemonOptions& o) {
  char mode[8];
  std::snprintf(mode, sizeof(mode), "%04o", o.socket_mode);
  json doc = {
      {"model", o.model_dir},
      {"socket", o.socket_path},
      {"state_dir", o.state_dir},
      {"socket_mode", mode},
      {"socket_group", o.socket_group},
      {"admin_group", o.admin_group},
      {"log_level", o.log_level},
      {"policy", o.policy},
      {"io_threads", o.io_threads},
      {"watchdog_interval_ms", o.watchdog_interval_ms},
      {"limits",
       {{"max_line_bytes", o.limits.max_line_bytes},
        {"max_json_depth", o.limits.max_json_depth},
        {"max_sessions_per_uid", o.limits.max_sessions_per_uid},
        {"max_inflight_per_connection", o.limits.max_inflight_per_connection},
        {"max_output_buffer_bytes", o.limits.max_output_buffer_bytes},
        {"max_tokens", o.limits.max_tokens},
        {"max_output_bytes_total", o.limits.max_output_bytes_total},
        {"max_connections", o.limits.max_connections},
        {"max_connections_per_uid", o.limits.max_connections_per_uid},
        {"max_stored_bytes_per_uid", o.limits.max_stored_bytes_per_uid},
        {"max_stored_sessions_per_uid", o.limits.max_stored_sessions_per_uid},
        {"max_messages_per_append", o.limits.max_messages_per_append},
        {"max_inflight_per_uid", o.limits.max_inflight_per_uid},
        {"max_device_blocks_per_uid", o.limits.max_device_blocks_per_uid},
        {"max_host_blocks_per_uid", o.limits.max_host_blocks_per_uid},
        {"max_disk_blocks_per_uid", o.limits.max_disk_blocks_per_uid}}},
      {"engine",
       {{"device", o.engine.device},
        {"kv_memory_bytes", o.engine.kv_memory_bytes},
        {"num_kv_blocks", o.engine.num_kv_blocks},
        {"block_size", o.engine.block_size},
        {"max_batch_tokens", o.engine.max_batch_tokens},
        {"prefill_chunk_tokens", o.engine.prefill_chunk_tokens},
        {"max_running", o.engine.max_running},
        {"num_threads", o.engine.num_threads},
        {"host_blocks", o.engine.host_blocks},
        {"disk_gib", o.engine.disk_gib},
        {"step_log", o.engine.step_log}}},
      {"ttl",
       {{"max_ttl_s", o.ttl.max_ttl_s},
        {"fixed_ttl_s", o.ttl.fixed_ttl_s},
        {"fixed_ttl_mean_threshold_s", o.ttl.fixed_ttl_mean_threshold_s},
        {"prior_mean_s", o.ttl.prior_mean_s},
        {"min_samples", o.ttl.min_samples},
        {"window_samples", o.ttl.window_samples},
        {"retain_quota_blocks", o.ttl.retain_quota_blocks},
        {"starvation_bound_s", o.ttl.starvation_bound_s},
        {"calibrate", o.ttl.calibrate},
        {"cost_s_per_block_s", o.ttl.cost_s_per_block_s},
        {"turn_end_grace_s", o.ttl.turn_end_grace_s}}},

      {"http",
       {{"socket", o.http.socket_path},
        {"listen", o.http.listen},
        {"api_key_file", o.http.api_key_file},
        {"max_body_bytes", o.http.max_body_bytes},
        {"max_connections", o.http.max_connections},
        {"idle_timeout_s", o.http.idle_timeout_s},
        {"max_inflight", o.http.max_inflight}}},
      {"cluster",
       {{"remote_tier", o.cluster.remote_tier},
        {"remote_auth_file", o.cluster.remote_auth_file},
        {"remote_timeout_ms", o.cluster.remote_timeout_ms},
        {"cluster_secret_file", o.cluster.cluster_secret_file}}},
      {"episodes",
       {{"index", o.episodes.index},
        {"embedder", o.episodes.embedder},
        {"budget_tokens", o.episodes.budget_tokens},
        {"num_episodes", o.episodes.num_episodes},
        {"serve", o.episodes.serve},
        {"cache_budget_tokens", o.episodes.cache_budget_tokens},
        {"cache_block_tokens", o.episodes.cache_block_tokens},
        {"route_wait_ms", o.episodes.route_wait_ms},
        {"cache_layer_alpha", o.episodes.cache_layer_alpha},
        {"calibration_file", o.episodes.calibration_file}}},
  };
  return doc.dump(2);
}

void ToPolicyOptions(const DaemonOptions& o, PolicyOptions* p) {
  p->name = o.policy;
  p->ttl.max_ttl_s = o.ttl.max_ttl_s;
  p->ttl.full_pressure_cost_s_per_block_s = o.ttl.cost_s_per_block_s;
  p->turn_end_grace_s = o.ttl.turn_end_grace_s;
  p->fixed_ttl.ttl_s = o.ttl.fixed_ttl_s;
  p->fixed_ttl.mean_threshold_s = o.ttl.fixed_ttl_mean_threshold_s;
  p->tool_stats.prior_mean_s = o.ttl.prior_mean_s;
  p->tool_stats.min_samples_per_key = o.ttl.min_samples;
  p->tool_stats.window_samples = o.ttl.window_samples;
  p->admission.starvation_bound_us = static_cast<int64_t>(o.ttl.starvation_bound_s * 1e6);
}

}  // namespace kvkeep
