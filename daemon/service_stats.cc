// The stats verb: one list of metrics (MetricRows) feeds both the JSON reply and the
// Prometheus text, so the two can never disagree or drift apart.
#include <unistd.h>

#include <cstdio>
#include <set>

#include "daemon/service.h"

namespace kvkeep {

using nlohmann::json;

namespace {

// One scalar metric: where it sits in the stats JSON (a '/'-separated path), its
// Prometheus name, type and help, and its value (an integer or a number).
struct MetricRow {
  const char* path;
  const char* prom;
  const char* type;  // "gauge" or "counter"
  const char* help;
  json value;
};

std::string PromNumber(double v) {
  char buf[40];
  std::snprintf(buf, sizeof(buf), "%.17g", v);
  return buf;
}

void PromLine(std::string* out, const char* name, const char* type, const char* help,
              const std::string& value) {
  *out += std::string("# HELP ") + name + " " + help + "\n# TYPE " + name + " " + type + "\n" +
          name + " " + value + "\n";
}

// A Prometheus label value: backslash, quote and newline escaped.
std::string PromLabel(const std::string& v) {
  std::string out;
  for (char c : v) {
    if (c == '\\' || c == '"') out += '\\';
    if (c == '\n') {
      out += "\\n";
      continue;
    }
    out += c;
  }
  return out;
}

std::vector<MetricRow> MetricRows(const EngineStats& es, const DaemonMetrics& m, double uptime_s,
                                  int64_t sessions_open, int64_t generating, int32_t block_size) {
  const double hit = es.prompt_tokens > 0 ? static_cast<double>(es.cached_tokens) /
                                                static_cast<double>(es.prompt_tokens)
                                          : 0.0;
  const int64_t bb = es.block_bytes;
  return {
      {"uptime_s", "kvkeep_uptime_seconds", "gauge", "Seconds since kvkeepd started.", uptime_s},
      {"server/connections", "kvkeep_connections", "gauge", "Open client connections.",
       m.connections.load()},
      {"server/connections_total", "kvkeep_connections_accepted_total", "counter",
       "Connections accepted.", m.connections_total.load()},
      {"server/requests", "kvkeep_requests_total", "counter", "Requests received.",
       m.requests.load()},
      {"server/errors", "kvkeep_errors_total", "counter", "Requests answered with an error.",
       m.errors.load()},
      {"server/slow_readers_dropped", "kvkeep_slow_readers_dropped_total", "counter",
       "Connections dropped as slow readers.", m.slow_readers_dropped.load()},
      {"sessions/open", "kvkeep_sessions_open", "gauge", "Open sessions.", sessions_open},
      {"sessions/generating", "kvkeep_generating", "gauge", "Generations in flight.", generating},
      {"sessions/retained", "kvkeep_retained_sessions", "gauge",
       "Sessions whose KV the engine keeps between turns.", es.retained_sessions},
      {"sessions/retained_blocks", "kvkeep_retained_blocks", "gauge",
       "Device KV blocks held by retained sessions.", es.retained_blocks},
      {"sessions/reclaimed", "kvkeep_reclaimed_sessions_total", "counter",
       "Retained sessions released for memory.", es.reclaimed_sessions},
      {"sessions/released_by_uid_cap", "kvkeep_sessions_released_by_uid_cap_total", "counter",
       "Retained sessions given back to the cache by limits.max_device_blocks_per_uid.",
       es.tenant_cap_releases},
      {"pools/device/blocks_total", "kvkeep_pool_blocks_total", "gauge",
       "KV blocks in the device pool.", es.blocks_total},
      {"pools/device/blocks_used", "kvkeep_pool_blocks_used", "gauge",
       "KV blocks referenced by requests.", es.blocks_used},
      {"pools/device/blocks_cached", "kvkeep_pool_blocks_cached", "gauge",
       "Free KV blocks holding reusable prefixes.", es.blocks_cached},
      {"pools/device/blocks_shared", "kvkeep_pool_blocks_shared", "gauge",
       "Device KV blocks held by several requests.", es.blocks_shared},
      {"pools/device/block_size", "kvkeep_block_size_tokens", "gauge", "Tokens per KV block.",
       block_size},
      {"pools/device/blocks_pinned", "kvkeep_pool_blocks_pinned", "gauge",
       "Device KV blocks held by live pins.", es.pinned_blocks},
      {"pools/host/blocks_total", "kvkeep_host_blocks_total", "gauge",
       "Host KV tier capacity, blocks.", es.host_blocks_total},
      {"pools/host/blocks_used", "kvkeep_host_blocks_used", "gauge", "Host KV tier blocks in use.",
       es.host_blocks_used},
      {"pools/disk/blocks_total", "kvkeep_disk_blocks_total", "gauge",
       "Disk KV tier capacity, blocks.", es.disk_blocks_total},
      {"pools/disk/blocks_used", "kvkeep_disk_blocks_used", "gauge", "Disk KV tier blocks stored.",
       es.disk_blocks_used},
      {"tiers/device/blocks", "kvkeep_tier_device_blocks", "gauge",
       "Device blocks holding KV (in use or cached).", es.blocks_used + es.blocks_cached},
      {"tiers/host/blocks", "kvkeep_tier_host_blocks", "gauge", "Host tier blocks holding KV.",
       es.host_blocks_used},
      {"tiers/disk/blocks", "kvkeep_tier_disk_blocks", "gauge", "Disk tier blocks holding KV.",
       es.disk_blocks_used},
      {"tiers/disk/read_failures", "kvkeep_disk_read_failures_total", "counter",
       "Disk blocks missing or failing their checksum (recomputed).", es.disk_read_failures},
      {"tiers/disk/write_failures", "kvkeep_disk_write_failures_total", "counter",
       "Disk block writes and removals that failed (ENOSPC, EIO); the block is recomputed.",
       es.disk_write_failures},
      {"tiers/demoted_blocks", "kvkeep_demoted_blocks_total", "counter",
       "KV blocks moved one tier down.", es.demoted_blocks},
      {"tiers/demoted_bytes", "kvkeep_demoted_bytes_total", "counter",
       "KV bytes moved one tier down.", es.demoted_blocks * bb},
      {"tiers/promoted_blocks", "kvkeep_promoted_blocks_total", "counter",
       "KV blocks moved one tier up.", es.promoted_blocks},
      {"tiers/promoted_bytes", "kvkeep_promoted_bytes_total", "counter",
       "KV bytes moved one tier up.", es.promoted_blocks * bb},
      {"tiers/dropped_blocks", "kvkeep_dropped_blocks_total", "counter",
       "KV blocks dropped from the bottom tier.", es.dropped_blocks},
      {"tiers/transfer_s", "kvkeep_transfer_seconds_total", "counter",
       "Time the engine spent in its transfer phase (promotions and demotions).",
       es.transfer_us / 1e6},
      {"engine/steps", "kvkeep_engine_steps_total", "counter", "Engine steps.", es.steps},
      {"engine/running", "kvkeep_running", "gauge", "Sequences running.", es.running},
      {"engine/waiting", "kvkeep_waiting", "gauge", "Sequences waiting for admission.", es.waiting},
      {"engine/evicted_blocks", "kvkeep_evicted_blocks_total", "counter",
       "Cached KV blocks evicted.", es.evicted_blocks},
      {"engine/preemptions", "kvkeep_preemptions_total", "counter",
       "Running sequences preempted for KV blocks or a slot (recomputed later).", es.preemptions},
      {"pins/granted", "kvkeep_pins_granted_total", "counter", "Pins granted on tool_begin.",
       es.pins_granted},
      {"pins/used", "kvkeep_pins_used_total", "counter",
       "Pins whose tool returned in time with the KV still held.", es.pins_used},
      {"pins/expired", "kvkeep_pins_expired_total", "counter",
       "Pins whose tool returned after the deadline.", es.pins_expired},
      {"pins/violated", "kvkeep_pins_violated_total", "counter",
       "Live pins reclaimed under hard memory pressure.", es.pin_violations},
      {"tokens/prompt", "kvkeep_prompt_tokens_total", "counter",
       "Context tokens of finished requests.", es.prompt_tokens},
      {"tokens/cached", "kvkeep_cached_tokens_total", "counter",
       "Context tokens served from cached KV.", es.cached_tokens},
      {"tokens/cached_device", "kvkeep_cached_device_tokens_total", "counter",
       "Context tokens served from device KV.", es.cached_device_tokens},
      {"tokens/cached_host", "kvkeep_cached_host_tokens_total", "counter",
       "Context tokens served from the host tier.", es.cached_host_tokens},
      {"tokens/cached_disk", "kvkeep_cached_disk_tokens_total", "counter",
       "Context tokens served from the disk tier.", es.cached_disk_tokens},
      {"tokens/cached_remote", "kvkeep_cached_remote_tokens_total", "counter",
       "Context tokens fetched from the remote tier.", es.cached_remote_tokens},
      {"remote/hits", "kvkeep_remote_hits_total", "counter", "Blocks fetched from the remote tier.",
       es.remote.hits},
      {"remote/misses", "kvkeep_remote_misses_total", "counter",
       "Blocks asked of the remote tier and not served (absent, bad or error).", es.remote.misses},
      {"remote/corrupt", "kvkeep_remote_corrupt_total", "counter",
       "Remote values that failed their checksum or header checks.", es.remote.corrupt},
      {"remote/errors", "kvkeep_remote_errors_total", "counter",
       "Failed Redis connects, sends, receives and error replies.", es.remote.errors},
      {"remote/bytes_read", "kvkeep_remote_read_bytes_total", "counter",
       "Value bytes received from the remote tier.", es.remote.bytes_read},
      {"remote/bytes_written", "kvkeep_remote_written_bytes_total", "counter",
       "Value bytes written to the remote tier.", es.remote.bytes_written},
      {"remote/blocks_written", "kvkeep_remote_written_blocks_total", "counter",
       "Blocks written to the remote tier.", es.remote.blocks_written},
      {"remote/writes_dropped", "kvkeep_remote_dropped_writes_total", "counter",
       "Remote writes dropped (queue full or server failed).", es.remote.writes_dropped},
      {"remote/get_p50_us", "kvkeep_remote_get_p50_microseconds", "gauge",
       "Median remote prefix fetch latency over the last 1024 fetches.", es.remote.get_p50_us},
      {"remote/get_p99_us", "kvkeep_remote_get_p99_microseconds", "gauge",
       "99th percentile remote prefix fetch latency over the last 1024.", es.remote.get_p99_us},
      {"remote/connected", "kvkeep_remote_connected", "gauge",
       "1 while the remote tier's read connection is up.", es.remote.connected ? 1 : 0},
      {"tokens/recomputed", "kvkeep_recomputed_tokens_total", "counter",
       "Context tokens prefilled.", es.recomputed_tokens},
      {"tokens/generated", "kvkeep_generated_tokens_total", "counter",
       "Tokens generated or forced.", es.generated_tokens},
      {"hit_ratio", "kvkeep_hit_ratio", "gauge", "Cached over prompt tokens since start.", hit},
  };
}

json ToolKeysJson(const EngineStats& es) {
  json keys = json::object();
  for (const EngineStats::ToolKeyStats& k : es.tool_keys) {
    keys[k.summary.key] = {{"samples", k.summary.num_samples},
                           {"mean_s", k.summary.mean_s},
                           {"p50_s", k.summary.p50_s},
                           {"p90_s", k.summary.p90_s},
                           {"p99_s", k.summary.p99_s},
                           {"ttl_s", k.last_ttl_s >= 0 ? json(k.last_ttl_s) : json(nullptr)}};
  }
  return keys;
}

// The daemon-wide figures (other uids' activity, tool commands in `tool_keys`) are for
// the admin group, root and the daemon's own uid (which can read the database anyway);
// every other uid sees only its own activity (issue 11, defect 9; docs/protocol.md).
bool SeesDaemonStats(const Client& client) {
  return client.is_admin() || client.peer().uid == 0 || client.peer().uid == ::geteuid();
}

// The figures a uid that does not see the daemon's sees: its own.
struct UidFigures {
  uint32_t uid = 0;
  double uptime_s = 0;
  int64_t open = 0, stored = 0, generating = 0, stored_bytes = 0;
  EngineStats::TenantBlocks kv;  // the uid's KV blocks (its cache salt's)
};

// The engine's figures of one tenant (zero when it holds no KV).
EngineStats::TenantBlocks TenantBlocksOf(const EngineStats& es, uint64_t salt) {
  for (const EngineStats::TenantBlocks& t : es.tenants) {
    if (t.tenant_salt == salt) return t;
  }
  return {salt, 0, 0, 0, 0};
}

json KvJson(const EngineStats::TenantBlocks& t) {
  return {{"held_device_blocks", t.held_device_blocks},
          {"device_blocks", t.device_blocks},
          {"host_blocks", t.host_blocks},
          {"disk_blocks", t.disk_blocks}};
}

std::vector<MetricRow> UidMetricRows(const UidFigures& f) {
  return {
      {"uptime_s", "kvkeep_uptime_seconds", "gauge", "Seconds since kvkeepd started.", f.uptime_s},
      {"uid", "kvkeep_uid", "gauge", "The uid these figures are of.", f.uid},
      {"sessions/open", "kvkeep_uid_sessions_open", "gauge", "This uid's open sessions.", f.open},
      {"sessions/stored", "kvkeep_uid_sessions_stored", "gauge",
       "This uid's sessions, open or closed.", f.stored},
      {"sessions/generating", "kvkeep_uid_generating", "gauge",
       "This uid's session.generate requests in flight.", f.generating},
      {"stored_bytes", "kvkeep_uid_stored_bytes", "gauge",
       "Bytes this uid stores (limits.max_stored_bytes_per_uid).", f.stored_bytes},
      {"kv/held_device_blocks", "kvkeep_uid_held_device_blocks", "gauge",
       "Device KV blocks this uid's requests and retained sessions hold "
       "(limits.max_device_blocks_per_uid).",
       f.kv.held_device_blocks},
      {"kv/device_blocks", "kvkeep_uid_device_blocks", "gauge",
       "Full device KV blocks of this uid's prefixes, in use or cached.", f.kv.device_blocks},
      {"kv/host_blocks", "kvkeep_uid_host_blocks", "gauge",
       "Host tier KV blocks of this uid's prefixes.", f.kv.host_blocks},
      {"kv/disk_blocks", "kvkeep_uid_disk_blocks", "gauge",
       "Disk tier KV blocks of this uid's prefixes.", f.kv.disk_blocks},
  };
}

// The rows as Prometheus text, and as the stats JSON (each value at its path): the
// daemon-wide and the per-uid views both go through these two.
std::string PromText(const std::vector<MetricRow>& rows) {
  std::string text;
  for (const MetricRow& row : rows) {
    PromLine(&text, row.prom, row.type, row.help, PromNumber(row.value.get<double>()));
  }
  return text;
}

json RowsJson(const std::vector<MetricRow>& rows) {
  json out = json::object();
  for (const MetricRow& row : rows) {
    out[json::json_pointer(std::string("/") + row.path)] = row.value;
  }
  return out;
}

}  // namespace

Service::Reply Service::Stats(const Ctx& ctx) {
  ASSIGN_OR_RETURN(std::string format, ctx.params.StringOr("format", "json"));
  if (format != "json" && format != "prometheus") {
    return Status::InvalidArgument("'format' must be \"json\" or \"prometheus\"");
  }
  const EngineStats es = deps_.engine->GetStats();
  const double uptime_s = (deps_.clock->NowMicros() - start_mono_us_) / 1e6;
  if (!SeesDaemonStats(*ctx.client)) {
    UidFigures f;
    f.uid = ctx.uid();
    f.uptime_s = uptime_s;
    for (const auto& sess : sessions_.List(f.uid)) {
      std::lock_guard<std::mutex> lock(sess->mu);
      if (sess->deleted) continue;
      ++f.stored;
      if (!sess->closed) ++f.open;
    }
    f.generating = uid_inflight_.InFlight(f.uid);
    f.stored_bytes = stored_bytes_.Used(f.uid);
    f.kv = TenantBlocksOf(es, CacheSalt(f.uid));
    const std::vector<MetricRow> rows = UidMetricRows(f);
    if (format == "prometheus") return json{{"text", PromText(rows)}};
    json out = RowsJson(rows);
    out["scope"] = "uid";
    out["policy"] = es.policy;
    return out;
  }
  if (format == "prometheus") return json{{"text", PrometheusText(es)}};
  const DaemonMetrics& m = *deps_.metrics;
  json out = RowsJson(MetricRows(es, m, uptime_s, sessions_.NumOpen(), num_generating_.load(),
                                 options_.block_size));
  out["policy"] = es.policy;
  // KV blocks per uid that owns a session (a uid's cache salt names its blocks).
  std::set<uint32_t> owners;
  for (const auto& sess : sessions_.List(std::nullopt)) owners.insert(sess->owner_uid);
  json& kv = out["kv_by_uid"] = json::object();
  for (uint32_t uid : owners) kv[std::to_string(uid)] = KvJson(TenantBlocksOf(es, CacheSalt(uid)));
  out["tool_keys"] = ToolKeysJson(es);
  out["latency_ms"] = {{"ttft", m.ttft.ToJson()},
                       {"decode_per_token", m.decode_per_token.ToJson()},
                       {"request", m.request.ToJson()},
                       {"tool", m.tool.ToJson()}};
  return out;
}

std::string Service::PrometheusText(const EngineStats& es) const {
  const DaemonMetrics& m = *deps_.metrics;
  std::string out =
      PromText(MetricRows(es, m, (deps_.clock->NowMicros() - start_mono_us_) / 1e6,
                          sessions_.NumOpen(), num_generating_.load(), options_.block_size));
  // Per tool key: one series per key and figure.
  struct KeyFigure {
    const char* name;
    const char* help;
    double (*get)(const EngineStats::ToolKeyStats&);
  };
  static const KeyFigure kFigures[] = {
      {"kvkeep_tool_samples", "Tool duration samples held, per tool key.",
       [](const EngineStats::ToolKeyStats& k) { return double(k.summary.num_samples); }},
      {"kvkeep_tool_p50_seconds", "Median tool duration, per tool key.",
       [](const EngineStats::ToolKeyStats& k) { return k.summary.p50_s; }},
      {"kvkeep_tool_p90_seconds", "90th percentile tool duration, per tool key.",
       [](const EngineStats::ToolKeyStats& k) { return k.summary.p90_s; }},
      {"kvkeep_tool_p99_seconds", "99th percentile tool duration, per tool key.",
       [](const EngineStats::ToolKeyStats& k) { return k.summary.p99_s; }},
      {"kvkeep_tool_ttl_seconds", "The TTL the policy last chose, per tool key.",
       [](const EngineStats::ToolKeyStats& k) { return k.last_ttl_s; }},
  };
  for (const KeyFigure& f : kFigures) {
    if (es.tool_keys.empty()) break;
    out += std::string("# HELP ") + f.name + " " + f.help + "\n# TYPE " + f.name + " gauge\n";
    for (const EngineStats::ToolKeyStats& k : es.tool_keys) {
      out += std::string(f.name) + "{key=\"" + PromLabel(k.summary.key) + "\"} " +
             PromNumber(f.get(k)) + "\n";
    }
  }
  m.ttft.AppendPrometheus("kvkeep_ttft_seconds", "Submit to first generated token.", &out);
  m.decode_per_token.AppendPrometheus("kvkeep_decode_token_seconds",
                                      "Decode time per generated token.", &out);
  m.request.AppendPrometheus("kvkeep_generate_seconds", "session.generate wall time.", &out);
  m.tool.AppendPrometheus("kvkeep_tool_seconds", "tool_begin to tool_end.", &out);
  return out;
}

}  // namespace kvkeep
