#include "tools/replay/trace.h"

#include "tools/replay/timing_model.h"

#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

namespace kvkeep::replay {
namespace {

using nlohmann::json;

constexpr std::string_view kEventNames[] = {"system",     "user",     "model",
                                            "tool_begin", "tool_end", "think"};
constexpr std::string_view kTimingNames[] = {"none", "recorded", "synthetic"};

json TokensToJson(const SyntheticTokens& t) {
  json j = {{"count", t.count}, {"seed", t.seed}};
  if (!t.block_ids.empty()) {
    j["block_tokens"] = t.block_tokens;
    j["block_ids"] = t.block_ids;
  }
  return j;
}

json EventToJson(const Event& e) {
  json j = {{"type", EventTypeName(e.type)}};
  if (!e.text.empty() || e.type == EventType::kToolEnd) j["text"] = e.text;
  if (e.tokens) j["tokens"] = TokensToJson(*e.tokens);
  if (!e.tool_calls.empty()) {
    json calls = json::array();
    for (const ToolCall& c : e.tool_calls) {
      calls.push_back({{"id", c.id}, {"name", c.name}, {"arguments", c.arguments}});
    }
    j["tool_calls"] = std::move(calls);
  }
  if (e.completion_tokens) j["completion_tokens"] = *e.completion_tokens;
  if (!e.tool.empty()) j["tool"] = e.tool;
  if (!e.command.empty()) j["command"] = e.command;
  if (!e.call_id.empty()) j["call_id"] = e.call_id;
  if (e.exit_code) j["exit_code"] = *e.exit_code;
  if (e.timing != Timing::kNone) {
    j["duration_s"] = e.duration_s;
    j["timing"] = TimingName(e.timing);
  }
  return j;
}

// Field readers that say which field is wrong.
class Reader {
 public:
  Reader(const json& j, std::string where) : j_(j), where_(std::move(where)) {}

  Status Fail(std::string_view field, std::string_view want) const {
    return Status::InvalidArgument(where_ + ": field '" + std::string(field) + "' " +
                                   std::string(want));
  }
  bool Has(const char* f) const { return j_.contains(f) && !j_[f].is_null(); }

  Status String(const char* f, std::string* out, bool required) const {
    if (!Has(f)) return required ? Fail(f, "is missing") : Status::OK();
    if (!j_[f].is_string()) return Fail(f, "must be a string");
    *out = j_[f].get<std::string>();
    return Status::OK();
  }
  Status Number(const char* f, double* out) const {
    if (!Has(f)) return Status::OK();
    if (!j_[f].is_number()) return Fail(f, "must be a number");
    *out = j_[f].get<double>();
    if (*out < 0) return Fail(f, "must not be negative");
    return Status::OK();
  }
  Status Int(const char* f, std::optional<int64_t>* out) const {
    if (!Has(f)) return Status::OK();
    if (!j_[f].is_number_integer()) return Fail(f, "must be an integer");
    *out = j_[f].get<int64_t>();
    return Status::OK();
  }

 private:
  const json& j_;
  std::string where_;
};

Result<SyntheticTokens> TokensFromJson(const json& j, const std::string& where) {
  if (!j.is_object()) return Status::InvalidArgument(where + ": 'tokens' must be an object");
  SyntheticTokens t;
  Reader r(j, where + ".tokens");
  std::optional<int64_t> count, block_tokens, seed;
  RETURN_IF_ERROR(r.Int("count", &count));
  RETURN_IF_ERROR(r.Int("block_tokens", &block_tokens));
  RETURN_IF_ERROR(r.Int("seed", &seed));
  if (!count || *count < 0) return r.Fail("count", "must be a non-negative integer");
  t.count = *count;
  t.seed = static_cast<uint64_t>(seed.value_or(0));
  t.block_tokens = static_cast<int32_t>(block_tokens.value_or(0));
  if (r.Has("block_ids")) {
    if (!j["block_ids"].is_array()) return r.Fail("block_ids", "must be an array");
    for (const json& id : j["block_ids"]) {
      if (!id.is_number_integer()) return r.Fail("block_ids", "must hold integers");
      t.block_ids.push_back(id.get<int64_t>());
    }
    if (t.block_tokens <= 0) return r.Fail("block_tokens", "must be positive with block_ids");
  }
  return t;
}

Result<Event> EventFromJson(const json& j, const std::string& where) {
  if (!j.is_object()) return Status::InvalidArgument(where + ": event must be an object");
  Reader r(j, where);
  Event e;
  std::string type;
  RETURN_IF_ERROR(r.String("type", &type, /*required=*/true));
  bool known = false;
  for (size_t i = 0; i < std::size(kEventNames); ++i) {
    if (type == kEventNames[i]) {
      e.type = static_cast<EventType>(i);
      known = true;
    }
  }
  if (!known) return r.Fail("type", "is not a known event type ('" + type + "')");
  RETURN_IF_ERROR(r.String("text", &e.text, false));
  if (r.Has("tokens")) {
    ASSIGN_OR_RETURN(e.tokens, TokensFromJson(j["tokens"], where));
  }
  if (r.Has("tool_calls")) {
    if (!j["tool_calls"].is_array()) return r.Fail("tool_calls", "must be an array");
    for (size_t i = 0; i < j["tool_calls"].size(); ++i) {
      const json& c = j["tool_calls"][i];
      if (!c.is_object()) return r.Fail("tool_calls", "must hold objects");
      Reader cr(c, where + ".tool_calls[" + std::to_string(i) + "]");
      ToolCall call;
      RETURN_IF_ERROR(cr.String("id", &call.id, false));
      RETURN_IF_ERROR(cr.String("name", &call.name, true));
      RETURN_IF_ERROR(cr.String("arguments", &call.arguments, false));
      e.tool_calls.push_back(std::move(call));
    }
  }
  RETURN_IF_ERROR(r.Int("completion_tokens", &e.completion_tokens));
  const bool names_tool = e.type == EventType::kToolBegin || e.type == EventType::kToolEnd;
  RETURN_IF_ERROR(r.String("tool", &e.tool, names_tool));
  // The writer leaves an empty tool out, so an empty one would not read back.
  if (names_tool && e.tool.empty()) return r.Fail("tool", "must not be empty");
  RETURN_IF_ERROR(r.String("command", &e.command, false));
  RETURN_IF_ERROR(r.String("call_id", &e.call_id, false));
  std::optional<int64_t> exit_code;
  RETURN_IF_ERROR(r.Int("exit_code", &exit_code));
  if (exit_code) e.exit_code = static_cast<int>(*exit_code);
  RETURN_IF_ERROR(r.Number("duration_s", &e.duration_s));
  std::string timing = "none";
  RETURN_IF_ERROR(r.String("timing", &timing, false));
  known = false;
  for (size_t i = 0; i < std::size(kTimingNames); ++i) {
    if (timing == kTimingNames[i]) {
      e.timing = static_cast<Timing>(i);
      known = true;
    }
  }
  if (!known) return r.Fail("timing", "must be none, recorded or synthetic");
  if (e.type == EventType::kThink && e.timing == Timing::kNone) {
    return r.Fail("duration_s", "is required for a think event (with timing)");
  }
  return e;
}

}  // namespace

std::string_view EventTypeName(EventType type) { return kEventNames[static_cast<int>(type)]; }
std::string_view TimingName(Timing timing) { return kTimingNames[static_cast<int>(timing)]; }

std::vector<int32_t> SyntheticTokenIds(const SyntheticTokens& t, int32_t num_ordinary_tokens) {
  std::vector<int32_t> ids(static_cast<size_t>(t.count));
  const uint64_t n = static_cast<uint64_t>(num_ordinary_tokens > 0 ? num_ordinary_tokens : 1);
  for (int64_t i = 0; i < t.count; ++i) {
    int64_t block = t.block_tokens > 0 ? i / t.block_tokens : 0;
    uint64_t key;
    if (t.block_tokens > 0 && block < static_cast<int64_t>(t.block_ids.size())) {
      key = MixKey(MixKey(t.seed, static_cast<uint64_t>(t.block_ids[block])),
                   static_cast<uint64_t>(i % t.block_tokens));
    } else {
      key = MixKey(t.seed ^ 0x7f4a7c15ULL, static_cast<uint64_t>(i));
    }
    ids[static_cast<size_t>(i)] = static_cast<int32_t>(MixKey(key, 0) % n);
  }
  return ids;
}

int Session::NumModelTurns() const {
  int n = 0;
  for (const Event& e : events) n += e.type == EventType::kModel;
  return n;
}

std::string SessionToJson(const Session& s) {
  json events = json::array();
  for (const Event& e : s.events) events.push_back(EventToJson(e));
  json j = {{"format", "kvkeep-trace"}, {"version", kTraceVersion}, {"session", s.id},
            {"source", s.source},       {"arrival_s", s.arrival_s}, {"events", std::move(events)}};
  if (!s.source_file.empty()) j["source_file"] = s.source_file;
  if (!s.model.empty()) j["model"] = s.model;
  // Replace invalid UTF-8 rather than throw: recorded tool output is arbitrary bytes.
  return j.dump(-1, ' ', false, json::error_handler_t::replace);
}

Result<Session> SessionFromJson(std::string_view line) {
  json j = json::parse(line, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) return Status::InvalidArgument("not valid JSON");
  if (!j.is_object()) return Status::InvalidArgument("a session must be a JSON object");
  Reader r(j, "session");
  std::string format;
  RETURN_IF_ERROR(r.String("format", &format, true));
  if (format != "kvkeep-trace") return r.Fail("format", "must be \"kvkeep-trace\"");
  std::optional<int64_t> version;
  RETURN_IF_ERROR(r.Int("version", &version));
  if (version != kTraceVersion) {
    return r.Fail("version", "must be " + std::to_string(kTraceVersion));
  }
  Session s;
  RETURN_IF_ERROR(r.String("session", &s.id, true));
  RETURN_IF_ERROR(r.String("source", &s.source, false));
  RETURN_IF_ERROR(r.String("source_file", &s.source_file, false));
  RETURN_IF_ERROR(r.String("model", &s.model, false));
  RETURN_IF_ERROR(r.Number("arrival_s", &s.arrival_s));
  if (!r.Has("events") || !j["events"].is_array()) return r.Fail("events", "must be an array");
  const json& events = j["events"];
  for (size_t i = 0; i < events.size(); ++i) {
    ASSIGN_OR_RETURN(Event e, EventFromJson(events[i], "events[" + std::to_string(i) + "]"));
    s.events.push_back(std::move(e));
  }
  return s;
}

Result<std::vector<Session>> ReadTraceFile(const std::string& path) {
  std::ifstream in(path);
  if (!in) return Status::NotFound("cannot open trace " + path);
  std::vector<Session> sessions;
  std::string line;
  for (int lineno = 1; std::getline(in, line); ++lineno) {
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    Result<Session> s = SessionFromJson(line);
    if (!s.ok()) return s.status().WithContext(path + ":" + std::to_string(lineno));
    sessions.push_back(std::move(s).value());
  }
  return sessions;
}

Status WriteTraceFile(const std::string& path, const std::vector<Session>& sessions) {
  std::ofstream out(path, std::ios::trunc);
  if (!out) return Status::IOError("cannot write " + path);
  for (const Session& s : sessions) out << SessionToJson(s) << '\n';
  out.flush();
  return out ? Status::OK() : Status::IOError("write failed: " + path);
}

}  // namespace kvkeep::replay
