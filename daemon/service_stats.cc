// The stats verb: JSON and Prometheus text.
#include <cstdio>

#include "daemon/service.h"

namespace kvkeep {

using nlohmann::json;

namespace {

void Metric(std::string* out, const char* name, const char* type, const char* help, double v) {
  char line[160];
  std::snprintf(line, sizeof(line), "%.17g", v);
  *out += std::string("# HELP ") + name + " " + help + "\n# TYPE " + name + " " + type + "\n" +
          name + " " + line + "\n";
}

}  // namespace

Service::Reply Service::Stats(const Ctx& ctx) {
  ASSIGN_OR_RETURN(std::string format, ctx.params.StringOr("format", "json"));
  const EngineStats es = deps_.engine->GetStats();
  if (format == "prometheus") return json{{"text", PrometheusText(es)}};
  if (format != "json") {
    return Status::InvalidArgument("'format' must be \"json\" or \"prometheus\"");
  }
  const DaemonMetrics& m = *deps_.metrics;
  const double hit = es.prompt_tokens > 0 ? static_cast<double>(es.cached_tokens) /
                                                static_cast<double>(es.prompt_tokens)
                                          : 0.0;
  return json{
      {"uptime_s", (deps_.clock->NowMicros() - start_mono_us_) / 1e6},
      {"policy", options_.policy},
      {"server",
       {{"connections", m.connections.load()},
        {"connections_total", m.connections_total.load()},
        {"requests", m.requests.load()},
        {"errors", m.errors.load()},
        {"slow_readers_dropped", m.slow_readers_dropped.load()}}},
      {"sessions", {{"open", sessions_.NumOpen()}, {"generating", num_generating_.load()}}},
      {"pools",
       {{"device",
         {{"blocks_total", es.blocks_total},
          {"blocks_used", es.blocks_used},
          {"blocks_cached", es.blocks_cached},
          {"blocks_shared", es.blocks_shared},
          {"block_size", options_.block_size}}},
        {"host", {{"blocks_total", es.host_blocks_total}, {"blocks_used", es.host_blocks_used}}},
        {"disk", {{"blocks_total", es.disk_blocks_total}, {"blocks_used", es.disk_blocks_used}}}}},
      {"tiers",
       {{"device", {{"blocks", es.blocks_used + es.blocks_cached}}},
        {"host", {{"blocks", es.host_blocks_used}}},
        {"disk", {{"blocks", es.disk_blocks_used}, {"read_failures", es.disk_read_failures}}},
        {"demoted_blocks", es.demoted_blocks},
        {"promoted_blocks", es.promoted_blocks},
        {"dropped_blocks", es.dropped_blocks}}},
      {"engine",
       {{"steps", es.steps},
        {"running", es.running},
        {"waiting", es.waiting},
        {"evicted_blocks", es.evicted_blocks}}},
      {"tokens",
       {{"prompt", es.prompt_tokens},
        {"cached", es.cached_tokens},
        {"recomputed", es.recomputed_tokens},
        {"generated", es.generated_tokens}}},
      {"hit_ratio", hit},
      {"latency_ms",
       {{"ttft", m.ttft.ToJson()},
        {"decode_per_token", m.decode_per_token.ToJson()},
        {"request", m.request.ToJson()},
        {"tool", m.tool.ToJson()}}},
  };
}

std::string Service::PrometheusText(const EngineStats& es) const {
  const DaemonMetrics& m = *deps_.metrics;
  std::string out;
  Metric(&out, "kvkeep_uptime_seconds", "gauge", "Seconds since kvkeepd started.",
         (deps_.clock->NowMicros() - start_mono_us_) / 1e6);
  Metric(&out, "kvkeep_connections", "gauge", "Open client connections.", m.connections.load());
  Metric(&out, "kvkeep_requests_total", "counter", "Requests received.", m.requests.load());
  Metric(&out, "kvkeep_errors_total", "counter", "Requests answered with an error.",
         m.errors.load());
  Metric(&out, "kvkeep_sessions_open", "gauge", "Open sessions.", sessions_.NumOpen());
  Metric(&out, "kvkeep_generating", "gauge", "Generations in flight.", num_generating_.load());
  Metric(&out, "kvkeep_pool_blocks_total", "gauge", "KV blocks in the device pool.",
         es.blocks_total);
  Metric(&out, "kvkeep_pool_blocks_used", "gauge", "KV blocks referenced by requests.",
         es.blocks_used);
  Metric(&out, "kvkeep_pool_blocks_cached", "gauge", "Free KV blocks holding reusable prefixes.",
         es.blocks_cached);
  Metric(&out, "kvkeep_evicted_blocks_total", "counter", "Cached KV blocks evicted.",
         es.evicted_blocks);
  Metric(&out, "kvkeep_pool_blocks_shared", "gauge", "Device KV blocks held by several requests.",
         es.blocks_shared);
  Metric(&out, "kvkeep_host_blocks_total", "gauge", "Host KV tier capacity, blocks.",
         es.host_blocks_total);
  Metric(&out, "kvkeep_host_blocks_used", "gauge", "Host KV tier blocks in use.",
         es.host_blocks_used);
  Metric(&out, "kvkeep_disk_blocks_total", "gauge", "Disk KV tier capacity, blocks.",
         es.disk_blocks_total);
  Metric(&out, "kvkeep_disk_blocks_used", "gauge", "Disk KV tier blocks stored.",
         es.disk_blocks_used);
  Metric(&out, "kvkeep_demoted_blocks_total", "counter", "KV blocks moved one tier down.",
         es.demoted_blocks);
  Metric(&out, "kvkeep_promoted_blocks_total", "counter", "KV blocks moved one tier up.",
         es.promoted_blocks);
  Metric(&out, "kvkeep_prompt_tokens_total", "counter", "Context tokens of finished requests.",
         es.prompt_tokens);
  Metric(&out, "kvkeep_cached_tokens_total", "counter", "Context tokens served from cached KV.",
         es.cached_tokens);
  Metric(&out, "kvkeep_recomputed_tokens_total", "counter", "Context tokens prefilled.",
         es.recomputed_tokens);
  Metric(&out, "kvkeep_generated_tokens_total", "counter", "Tokens generated or forced.",
         es.generated_tokens);
  m.ttft.AppendPrometheus("kvkeep_ttft_seconds", "Submit to first generated token.", &out);
  m.decode_per_token.AppendPrometheus("kvkeep_decode_token_seconds",
                                      "Decode time per generated token.", &out);
  m.request.AppendPrometheus("kvkeep_generate_seconds", "session.generate wall time.", &out);
  m.tool.AppendPrometheus("kvkeep_tool_seconds", "tool_begin to tool_end.", &out);
  return out;
}

}  // namespace kvkeep
