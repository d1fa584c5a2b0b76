// Importers for agent trajectories that carry text: mini-swe-agent, SWE-agent, nebius
// rows and OpenHands. Mapping of each format: docs/trace-format.md.
#include <climits>
#include <map>

#include "base/file.h"

#include "tools/replay/import_common.h"

namespace kvkeep::replay {

using internal::BaseName;
using internal::IntegerOf;
using internal::json;
using internal::kMaxImportedTokens;
using internal::NumberOf;
using internal::SessionBuilder;
using internal::TextOf;

namespace {

Status BadRecord(const std::string& path, const std::string& where, std::string_view what) {
  return Status::InvalidArgument(path + ": " + where + ": " + std::string(what));
}

// The string `role` of entry i of `list` (named `list_name` in errors).
Result<std::string> RoleOf(const std::string& path, const char* list_name, const json& list,
                           size_t i) {
  const json& m = list[i];
  if (!m.is_object() || !m.contains("role") || !m["role"].is_string()) {
    return BadRecord(path, std::string(list_name) + "[" + std::to_string(i) + "]",
                     "entry without a string 'role'");
  }
  return m["role"].get<std::string>();
}

std::string FirstWord(std::string_view s) {
  size_t b = s.find_first_not_of(" \t\n");
  if (b == std::string_view::npos) return "";
  size_t e = s.find_first_of(" \t\n", b);
  return std::string(s.substr(b, e == std::string_view::npos ? e : e - b));
}

// "command" from a tool call's JSON arguments string, else the raw arguments.
std::string CommandOfArguments(const std::string& arguments) {
  json a = json::parse(arguments, nullptr, false);
  if (a.is_object() && a.contains("command") && a["command"].is_string()) {
    return a["command"].get<std::string>();
  }
  return arguments;
}

Status ImportMiniSweV11(const std::string& path, const json& doc, const ImportOptions& options,
                        Session* s) {
  SessionBuilder b(s, options);
  struct Pending {
    std::string tool, command;
    std::optional<double> ts;
  };
  std::map<std::string, Pending> pending;
  std::optional<double> last_ts;  // when the previous model call could start
  const json& messages = doc["messages"];
  for (size_t i = 0; i < messages.size(); ++i) {
    const json& m = messages[i];
    std::string where = "messages[" + std::to_string(i) + "]";
    ASSIGN_OR_RETURN(std::string role, RoleOf(path, "messages", messages, i));
    const json extra = m.contains("extra") && m["extra"].is_object() ? m["extra"] : json::object();
    std::optional<double> ts = NumberOf(extra, "timestamp");
    if (role == "system") {
      b.System(TextOf(m, "content"));
    } else if (role == "user") {
      b.User(TextOf(m, "content"));
    } else if (role == "assistant") {
      double duration = (ts && last_ts) ? std::max(0.0, *ts - *last_ts) : -1;
      Event& e = b.Model(TextOf(m, "content"), duration);
      if (extra.contains("response") && extra["response"].is_object()) {
        const json& r = extra["response"];
        if (r.contains("usage") && r["usage"].is_object()) {
          if (auto c = IntegerOf(r["usage"], "completion_tokens", 0, kMaxImportedTokens)) {
            e.completion_tokens = *c;
          }
        }
        if (s->model.empty() && r.contains("model") && r["model"].is_string()) {
          s->model = r["model"];
        }
      }
      std::vector<std::pair<std::string, Pending>> begins;
      if (m.contains("tool_calls") && m["tool_calls"].is_array()) {
        for (const json& tc : m["tool_calls"]) {
          if (!tc.is_object() || !tc.contains("function") || !tc["function"].is_object()) {
            return BadRecord(path, where, "tool call without a 'function' object");
          }
          ToolCall call;
          call.id = TextOf(tc, "id");
          call.name = TextOf(tc["function"], "name");
          call.arguments = TextOf(tc["function"], "arguments");
          begins.push_back({call.id, {call.name, CommandOfArguments(call.arguments), ts}});
          e.tool_calls.push_back(std::move(call));
        }
      }
      for (auto& [id, p] : begins) {
        b.ToolBegin(p.tool, p.command, id);
        pending[id] = std::move(p);
      }
      if (ts) last_ts = ts;
    } else if (role == "tool") {
      std::string id = TextOf(m, "tool_call_id");
      auto it = pending.find(id);
      if (it == pending.end()) return BadRecord(path, where, "tool result for unknown call " + id);
      double duration = (ts && it->second.ts) ? std::max(0.0, *ts - *it->second.ts) : -1;
      std::optional<int> rc;
      if (auto code = IntegerOf(extra, "returncode", INT_MIN, INT_MAX))
        rc = static_cast<int>(*code);
      b.ToolEnd(it->second.tool, id, TextOf(m, "content"), duration, it->second.command, rc);
      pending.erase(it);
      if (ts) last_ts = ts;
    } else if (role == "exit") {
      break;
    } else {
      return BadRecord(path, where, "unknown role '" + role + "'");
    }
  }
  // The final submit call has no tool message (the agent exits): close it, unrecorded.
  for (auto& [id, p] : pending) b.ToolEnd(p.tool, id, "", -1, p.command);
  return Status::OK();
}

Status ImportMiniSweV1(const std::string& path, const json& doc, const ImportOptions& options,
                       Session* s) {
  SessionBuilder b(s, options);
  std::string pending_command;  // the last model turn's command, awaiting its observation
  const json& messages = doc["messages"];
  for (size_t i = 0; i < messages.size(); ++i) {
    const json& m = messages[i];
    std::string where = "messages[" + std::to_string(i) + "]";
    ASSIGN_OR_RETURN(std::string role, RoleOf(path, "messages", messages, i));
    std::string content = TextOf(m, "content");
    if (role == "system") {
      b.System(std::move(content));
    } else if (role == "assistant") {
      // Only whole-second `created` stamps per call exist: latencies are synthetic.
      b.Model(content, -1);
      if (s->model.empty() && m.contains("extra") && m["extra"].is_object() &&
          m["extra"].contains("response") && m["extra"]["response"].is_object()) {
        s->model = TextOf(m["extra"]["response"], "model");
      }
      pending_command = ExtractFencedCommand(content);
      if (!pending_command.empty()) b.ToolBegin("bash", pending_command, "");
    } else if (role == "user") {
      // An observation carries <returncode>; anything else (the task, a format-error
      // reminder) is a plain user message.
      std::optional<int> rc = internal::ParseReturnCode(content);
      if (!pending_command.empty() && rc) {
        b.ToolEnd("bash", "", std::move(content), -1, pending_command, rc);
      } else {
        if (!pending_command.empty()) {
          b.ToolEnd("bash", "", "", -1, pending_command);  // no observation recorded
        }
        b.User(std::move(content));
      }
      pending_command.clear();
    } else if (role == "exit") {
      break;
    } else {
      return BadRecord(path, where, "unknown role '" + role + "'");
    }
  }
  if (!pending_command.empty()) b.ToolEnd("bash", "", "", -1, pending_command);
  return Status::OK();
}

}  // namespace

std::string ExtractFencedCommand(std::string_view text) {
  std::string_view last;
  size_t pos = 0;
  bool found = false;
  while (true) {
    size_t open = text.find("```", pos);
    if (open == std::string_view::npos) break;
    size_t line_end = text.find('\n', open);
    if (line_end == std::string_view::npos) break;
    size_t close = text.find("```", line_end);
    if (close == std::string_view::npos) break;
    last = text.substr(line_end + 1, close - line_end - 1);
    found = true;
    pos = close + 3;
  }
  if (!found) return "";
  while (!last.empty() && (last.back() == '\n' || last.back() == ' ')) last.remove_suffix(1);
  return std::string(last);
}

Status ImportMiniSweAgent(const std::string& path, const ImportOptions& options,
                          std::vector<Session>* out) {
  ASSIGN_OR_RETURN(json doc, internal::ReadJsonFile(path));
  if (!doc.is_object() || !doc.contains("messages") || !doc["messages"].is_array()) {
    return BadRecord(path, "top level", "missing 'messages' array");
  }
  std::string format = TextOf(doc, "trajectory_format");
  Session s;
  s.source = "mini-swe-agent";
  s.source_file = BaseName(path);
  s.id = TextOf(doc, "instance_id");
  if (s.id.empty()) s.id = s.source_file;
  Status st;
  if (format == "mini-swe-agent-1.1") {
    st = ImportMiniSweV11(path, doc, options, &s);
  } else if (format == "mini-swe-agent-1") {
    st = ImportMiniSweV1(path, doc, options, &s);
  } else {
    return BadRecord(path, "trajectory_format",
                     "unsupported '" + format + "' (want mini-swe-agent-1 or -1.1)");
  }
  RETURN_IF_ERROR(st);
  out->push_back(std::move(s));
  return Status::OK();
}

Status ImportSweAgent(const std::string& path, const ImportOptions& options,
                      std::vector<Session>* out) {
  ASSIGN_OR_RETURN(json doc, internal::ReadJsonFile(path));
  if (!doc.is_object() || !doc.contains("history") || !doc["history"].is_array()) {
    return BadRecord(path, "top level", "missing 'history' array");
  }
  const json steps = doc.contains("trajectory") && doc["trajectory"].is_array() ? doc["trajectory"]
                                                                                : json::array();
  Session s;
  s.source = "swe-agent";
  s.source_file = BaseName(path);
  s.id = s.source_file.substr(0, s.source_file.find(".traj"));
  SessionBuilder b(&s, options);
  bool pending = false;
  std::string tool, command, call_id;
  size_t step = 0;
  const json& history = doc["history"];
  for (size_t i = 0; i < history.size(); ++i) {
    const json& m = history[i];
    std::string where = "history[" + std::to_string(i) + "]";
    ASSIGN_OR_RETURN(std::string role, RoleOf(path, "history", history, i));
    std::string content = TextOf(m, "content");
    if (role == "system") {
      b.System(std::move(content));
    } else if (role == "assistant") {
      Event& e = b.Model(content, -1);
      command = TextOf(m, "action");
      while (!command.empty() && (command.back() == '\n' || command.back() == ' ')) {
        command.pop_back();
      }
      tool = FirstWord(command);
      call_id.clear();
      if (m.contains("tool_calls") && m["tool_calls"].is_array()) {
        for (const json& tc : m["tool_calls"]) {
          if (!tc.is_object() || !tc.contains("function")) continue;
          ToolCall call{TextOf(tc, "id"), TextOf(tc["function"], "name"),
                        TextOf(tc["function"], "arguments")};
          if (call_id.empty()) {
            call_id = call.id;
            tool = call.name;
          }
          e.tool_calls.push_back(std::move(call));
        }
      }
      b.ToolBegin(tool, command, call_id);
      pending = true;
    } else if (pending && (role == "tool" || role == "user")) {
      double duration = -1;
      if (step < steps.size()) {
        if (auto t = NumberOf(steps[step], "execution_time")) duration = *t;
      }
      b.ToolEnd(tool, call_id, std::move(content), duration, command);
      ++step;
      pending = false;
    } else if (role == "user") {
      b.User(std::move(content));  // the task, or demonstrations (is_demo)
    } else {
      return BadRecord(path, where, "unexpected role '" + role + "'");
    }
  }
  if (pending) b.ToolEnd(tool, call_id, "", -1, command);
  out->push_back(std::move(s));
  return Status::OK();
}

Status ImportNebius(const std::string& path, const ImportOptions& options,
                    std::vector<Session>* out) {
  ASSIGN_OR_RETURN(json doc, internal::ReadJsonFile(path));
  if (!doc.is_object() || !doc.contains("trajectory") || !doc["trajectory"].is_array()) {
    return BadRecord(path, "top level", "missing 'trajectory' array");
  }
  Session s;
  s.source = "nebius";
  s.source_file = BaseName(path);
  s.id = TextOf(doc, "instance_id");
  if (s.id.empty()) s.id = s.source_file;
  s.model = TextOf(doc, "model_name");
  SessionBuilder b(&s, options);
  std::string command;
  bool pending = false;
  const json& traj = doc["trajectory"];
  for (size_t i = 0; i < traj.size(); ++i) {
    const json& m = traj[i];
    std::string where = "trajectory[" + std::to_string(i) + "]";
    ASSIGN_OR_RETURN(std::string role, RoleOf(path, "trajectory", traj, i));
    if (role == "system") {
      std::string text = TextOf(m, "system_prompt");
      b.System(text.empty() ? TextOf(m, "text") : text);
    } else if (role == "ai") {
      std::string text = TextOf(m, "text");
      b.Model(text, -1);
      command = ExtractFencedCommand(text);
      pending = !command.empty();
      if (pending) b.ToolBegin(FirstWord(command), command, "");
    } else if (role == "user") {
      if (pending) {
        b.ToolEnd(FirstWord(command), "", TextOf(m, "text"), -1, command);
        pending = false;
      } else {
        b.User(TextOf(m, "text"));
      }
    } else {
      return BadRecord(path, where, "unknown role '" + role + "'");
    }
  }
  if (pending) b.ToolEnd(FirstWord(command), "", "", -1, command);
  out->push_back(std::move(s));
  return Status::OK();
}

namespace {

Status ImportOpenHandsRow(const std::string& path, const std::string& where, const json& row,
                          const ImportOptions& options, Session* s) {
  if (!row.is_object() || !row.contains("history") || !row["history"].is_array()) {
    return BadRecord(path, where, "missing 'history' array");
  }
  std::map<std::string, double> latency_by_response;
  if (row.contains("metrics") && row["metrics"].is_object() &&
      row["metrics"].contains("response_latencies") &&
      row["metrics"]["response_latencies"].is_array()) {
    for (const json& l : row["metrics"]["response_latencies"]) {
      if (auto v = NumberOf(l, "latency")) latency_by_response[TextOf(l, "response_id")] = *v;
    }
  }
  SessionBuilder b(s, options);
  struct Action {
    std::string tool, command, call_id;
    std::optional<double> ts;
  };
  std::map<std::string, Action> actions;  // by event id, awaiting their observation
  std::string last_response;
  size_t model_index = 0;  // the model event that the current response's calls belong to
  std::optional<double> last_ts;
  const json& history = row["history"];
  for (size_t i = 0; i < history.size(); ++i) {
    const json& ev = history[i];
    std::string ewhere = where + ": history[" + std::to_string(i) + "]";
    if (!ev.is_object()) return BadRecord(path, ewhere, "event is not an object");
    std::optional<double> ts = internal::ParseIsoSeconds(TextOf(ev, "timestamp"));
    std::string action = TextOf(ev, "action");
    std::string observation = TextOf(ev, "observation");
    std::string source = TextOf(ev, "source");
    const json args = ev.contains("args") && ev["args"].is_object() ? ev["args"] : json::object();
    if (action == "system") {
      b.System(TextOf(args, "content"));
    } else if (action == "recall" || observation == "recall") {
      continue;  // OpenHands' own memory retrieval; no model or tool work
    } else if (!action.empty() && source == "user") {
      b.User(TextOf(args, "content"));
    } else if (!action.empty()) {
      json meta = ev.contains("tool_call_metadata") ? ev["tool_call_metadata"] : json();
      if (!meta.is_object()) {
        b.Model(TextOf(args, "content"), -1);  // a plain agent message
        last_ts = ts;
        continue;
      }
      std::string response_id;
      if (meta.contains("model_response") && meta["model_response"].is_object()) {
        response_id = TextOf(meta["model_response"], "id");
      }
      if (response_id.empty() || response_id != last_response) {
        auto lat = latency_by_response.find(response_id);
        double duration = lat != latency_by_response.end() ? lat->second
                          : (ts && last_ts)                ? std::max(0.0, *ts - *last_ts)
                                                           : -1;
        Event& m = b.Model(TextOf(args, "thought"), duration);
        if (meta.contains("model_response") && meta["model_response"].is_object() &&
            meta["model_response"].contains("usage")) {
          if (auto c = IntegerOf(meta["model_response"]["usage"], "completion_tokens", 0,
                                 kMaxImportedTokens)) {
            m.completion_tokens = *c;
          }
        }
        last_response = response_id;
        model_index = s->events.size() - 1;
      }
      ToolCall call{TextOf(meta, "tool_call_id"), TextOf(meta, "function_name"),
                    args.dump(-1, ' ', false, json::error_handler_t::replace)};
      s->events[model_index].tool_calls.push_back(call);
      std::string command = TextOf(args, "command");
      if (command.empty()) command = TextOf(args, "path");
      b.ToolBegin(call.name, command, call.id);
      actions[TextOf(ev, "id")] = {call.name, command, call.id, ts};
    } else if (!observation.empty()) {
      auto it = actions.find(TextOf(ev, "cause"));
      if (it == actions.end()) continue;  // an observation of nothing we replay
      double duration = (ts && it->second.ts) ? std::max(0.0, *ts - *it->second.ts) : -1;
      std::optional<int> rc;
      if (ev.contains("extras") && ev["extras"].is_object() && ev["extras"].contains("metadata")) {
        if (auto code = IntegerOf(ev["extras"]["metadata"], "exit_code", INT_MIN, INT_MAX)) {
          rc = static_cast<int>(*code);
        }
      }
      b.ToolEnd(it->second.tool, it->second.call_id, TextOf(ev, "content"), duration,
                it->second.command, rc);
      actions.erase(it);
      last_ts = ts;
    }
  }
  // Actions never observed (finish, think): close them so begin/end stay paired.
  for (auto& [id, a] : actions) b.ToolEnd(a.tool, a.call_id, "", 0.0, a.command);
  return Status::OK();
}

}  // namespace

Status ImportOpenHands(const std::string& path, const ImportOptions& options,
                       std::vector<Session>* out, ImportReport* report) {
  ASSIGN_OR_RETURN(std::string text, DefaultEnv()->ReadFile(path));
  size_t start = 0;
  for (int lineno = 1; start < text.size(); ++lineno) {
    size_t end = text.find('\n', start);
    if (end == std::string::npos) end = text.size();
    std::string_view line(text.data() + start, end - start);
    start = end + 1;
    if (line.find_first_not_of(" \t\r") == std::string_view::npos) continue;
    std::string where = "line " + std::to_string(lineno);
    json row = json::parse(line, nullptr, false);
    Session s;
    s.source = "openhands";
    s.source_file = BaseName(path) + ":" + std::to_string(lineno);
    Status st = row.is_discarded() ? BadRecord(path, where, "not valid JSON") : Status::OK();
    if (st.ok()) {
      s.id = TextOf(row, "instance_id");
      if (s.id.empty()) s.id = s.source_file;
      st = ImportOpenHandsRow(path, where, row, options, &s);
    }
    if (!st.ok()) {
      report->skipped++;
      report->errors.push_back(st.message());
      continue;
    }
    out->push_back(std::move(s));
  }
  return Status::OK();
}

}  // namespace kvkeep::replay
