#include "daemon/openai_messages.h"

#include "base/hash64.h"

namespace kvkeep::openai {

using nlohmann::json;

namespace {

constexpr std::string_view kSpace = " \t\r\n";

std::string Trim(std::string_view s) {
  const size_t b = s.find_first_not_of(kSpace);
  if (b == std::string_view::npos) return "";
  return std::string(s.substr(b, s.find_last_not_of(kSpace) - b + 1));
}

Status Invalid(const std::string& field, const std::string& what) {
  return Status::InvalidArgument("'" + field + "' " + what);
}

// Arguments as canonical JSON text when they parse (so reformatting by a client does not
// break matching), else as given.
std::string CanonicalArguments(const json& args) {
  if (args.is_string()) {
    json parsed = json::parse(args.get<std::string>(), nullptr, false);
    return parsed.is_discarded() ? args.get<std::string>() : parsed.dump();
  }
  return args.dump();
}

// The text of `content`: a string, null, or an array of {"type": "text", "text"} parts.
Status ContentText(const json& m, const std::string& field, std::string* text,
                   std::optional<std::string>* ttl) {
  auto it = m.find("content");
  if (it == m.end() || it->is_null()) return Status::OK();
  if (it->is_string()) {
    *text = it->get<std::string>();
    return Status::OK();
  }
  if (!it->is_array()) return Invalid(field + ".content", "must be a string or an array of parts");
  for (size_t i = 0; i < it->size(); ++i) {
    const json& part = (*it)[i];
    const std::string pf = field + ".content[" + std::to_string(i) + "]";
    if (!part.is_object() || StringField(part, "type") != "text" || !part.contains("text") ||
        !part["text"].is_string()) {
      return Invalid(pf, "must be {\"type\": \"text\", \"text\": string} (only text is served)");
    }
    *text += part["text"].get<std::string>();
    if (auto cc = part.find("cache_control"); cc != part.end() && !cc->is_null()) {
      if (!cc->is_object() || StringField(*cc, "type") != "ephemeral") {
        return Invalid(pf + ".cache_control", "must be {\"type\": \"ephemeral\", \"ttl\"?}");
      }
      std::string t = "5m";
      if (auto tt = cc->find("ttl"); tt != cc->end()) {
        if (!tt->is_string() || (*tt != "5m" && *tt != "1h")) {
          return Invalid(pf + ".cache_control.ttl", "must be \"5m\" or \"1h\"");
        }
        t = tt->get<std::string>();
      }
      *ttl = t;
    }
  }
  return Status::OK();
}

Status ValidateToolCalls(const json& calls, const std::string& field) {
  if (!calls.is_array()) return Invalid(field, "must be an array");
  for (size_t i = 0; i < calls.size(); ++i) {
    const json& c = calls[i];
    const std::string f = field + "[" + std::to_string(i) + "]";
    if (!c.is_object() || !c.contains("function") || !c["function"].is_object()) {
      return Invalid(f + ".function", "is required");
    }
    const json& fn = c["function"];
    if (!fn.contains("name") || !fn["name"].is_string()) {
      return Invalid(f + ".function.name", "must be a string");
    }
    if (fn.contains("arguments") && !fn["arguments"].is_string() && !fn["arguments"].is_object()) {
      return Invalid(f + ".function.arguments", "must be a string");
    }
  }
  return Status::OK();
}

// Hermes text of tool calls, as Qwen2.5's template renders an assistant turn's calls.
std::string ToolCallsText(const json& calls) {
  std::string out;
  for (const json& c : calls) {
    const json& fn = c["function"];
    json args = fn.contains("arguments")
                    ? json::parse(CanonicalArguments(fn["arguments"]), nullptr, false)
                    : json::object();
    json call = {{"name", fn["name"]}, {"arguments", args.is_discarded() ? json::object() : args}};
    out += "\n<tool_call>\n" + call.dump() + "\n</tool_call>";
  }
  return out;
}

Status ValidateTools(const json& tools) {
  if (!tools.is_array()) return Invalid("tools", "must be an array");
  for (size_t i = 0; i < tools.size(); ++i) {
    const json& t = tools[i];
    const std::string f = "tools[" + std::to_string(i) + "]";
    if (!t.is_object() || StringField(t, "type") != "function") {
      return Invalid(f + ".type", "must be \"function\"");
    }
    if (!t.contains("function") || !t["function"].is_object() || !t["function"].contains("name") ||
        !t["function"]["name"].is_string()) {
      return Invalid(f + ".function.name", "must be a string");
    }
  }
  return Status::OK();
}

}  // namespace

std::string StringField(const json& obj, const char* key) {
  if (!obj.is_object()) return "";
  auto it = obj.find(key);
  return it != obj.end() && it->is_string() ? it->get<std::string>() : "";
}

uint64_t MatchKey(const std::string& role, const std::string& content, const json& tool_calls) {
  std::string key = role + '\x1f' + Trim(content);
  if (tool_calls.is_array()) {
    for (const json& c : tool_calls) {
      const json& fn = c["function"];
      key += '\x1e' + fn["name"].get<std::string>() + '\x1f' +
             (fn.contains("arguments") ? CanonicalArguments(fn["arguments"]) : "{}");
    }
  }
  return Fnv1a64(key);
}

std::string ToolsBlock(const json& tools) {
  std::string out =
      "# Tools\n\nYou may call one or more functions to assist with the user query.\n\n"
      "You are provided with function signatures within <tools></tools> XML tags:\n<tools>";
  for (const json& t : tools) out += "\n" + t.dump();
  out +=
      "\n</tools>\n\nFor each function call, return a json object with function name and "
      "arguments within <tool_call></tool_call> XML tags:\n<tool_call>\n"
      "{\"name\": <function-name>, \"arguments\": <args-json-object>}\n</tool_call>";
  return out;
}

Result<std::vector<FlatMessage>> FlattenRequest(const json& messages, const json* tools) {
  if (!messages.is_array() || messages.empty()) {
    return Invalid("messages", "must be a non-empty array");
  }
  std::vector<FlatMessage> out;
  for (size_t i = 0; i < messages.size(); ++i) {
    const json& m = messages[i];
    const std::string f = "messages[" + std::to_string(i) + "]";
    if (!m.is_object()) return Invalid(f, "must be an object");
    auto role_it = m.find("role");
    if (role_it == m.end() || !role_it->is_string()) return Invalid(f + ".role", "is required");
    FlatMessage msg;
    msg.role = role_it->get<std::string>();
    if (msg.role == "developer") msg.role = "system";
    if (msg.role != "system" && msg.role != "user" && msg.role != "assistant" &&
        msg.role != "tool") {
      return Invalid(f + ".role", "must be system, developer, user, assistant or tool, not '" +
                                      role_it->get<std::string>() + "'");
    }
    RETURN_IF_ERROR(ContentText(m, f, &msg.content, &msg.cache_ttl));
    for (const char* key : {"name", "tool_call_id"}) {
      if (auto it = m.find(key); it != m.end() && !it->is_null()) {
        if (!it->is_string()) return Invalid(f + "." + key, "must be a string");
        (key[0] == 'n' ? msg.name : msg.tool_call_id) = it->get<std::string>();
      }
    }
    json calls = json::array();
    if (auto it = m.find("tool_calls"); it != m.end() && !it->is_null()) {
      if (msg.role != "assistant") return Invalid(f + ".tool_calls", "is for assistant messages");
      RETURN_IF_ERROR(ValidateToolCalls(*it, f + ".tool_calls"));
      calls = *it;
    }
    if (msg.role == "tool" && msg.tool_call_id.empty() && !m.contains("tool_call_id")) {
      // OpenAI requires it; agents that omit it still get served.
    }
    msg.key = MatchKey(msg.role, msg.content, calls);
    msg.content += ToolCallsText(calls);
    out.push_back(std::move(msg));
  }
  if (tools != nullptr && !tools->is_null()) {
    RETURN_IF_ERROR(ValidateTools(*tools));
    if (!tools->empty()) {
      const std::string block = ToolsBlock(*tools);
      if (out[0].role == "system") {
        out[0].content += "\n\n" + block;
      } else {
        FlatMessage sys;
        sys.role = "system";
        sys.content = block;
        out.insert(out.begin(), std::move(sys));
      }
      // The tools are part of the first message's identity: other tools, other session.
      out[0].key = Fnv1a64(out[0].content) ^ Mix64(out[0].key);
    }
  }
  return out;
}

ParsedOutput ParseOutput(const std::string& text, const std::string& call_id_prefix) {
  static constexpr std::string_view kOpen = "<tool_call>", kClose = "</tool_call>";
  ParsedOutput out;
  out.tool_calls = json::array();
  std::string rest;
  size_t pos = 0;
  while (true) {
    const size_t open = text.find(kOpen, pos);
    if (open == std::string::npos) break;
    const size_t close = text.find(kClose, open);
    const size_t body = open + kOpen.size();
    // An unterminated last block (generation hit max_tokens) is text.
    json call = close == std::string::npos
                    ? json(nullptr)
                    : json::parse(text.substr(body, close - body), nullptr, false);
    if (!call.is_object() || !call.contains("name") || !call["name"].is_string()) {
      return {text, json::array()};
    }
    json args = call.contains("arguments") ? call["arguments"] : json::object();
    out.tool_calls.push_back(
        {{"id", "call_" + call_id_prefix + "_" + std::to_string(out.tool_calls.size())},
         {"type", "function"},
         {"function",
          {{"name", call["name"]},
           {"arguments", args.is_string() ? args.get<std::string>() : args.dump()}}}});
    rest += text.substr(pos, open - pos);
    pos = close + kClose.size();
  }
  if (out.tool_calls.empty()) return {text, json::array()};
  rest += text.substr(pos);
  out.content = Trim(rest);
  return out;
}

std::optional<std::string> SingleBashBlock(const std::string& text) {
  std::optional<std::string> found;
  size_t pos = 0;
  while ((pos = text.find("```", pos)) != std::string::npos) {
    const size_t eol = text.find('\n', pos);
    if (eol == std::string::npos) break;
    const std::string lang = Trim(std::string_view(text).substr(pos + 3, eol - pos - 3));
    const size_t end = text.find("```", eol + 1);
    if (end == std::string::npos) break;
    if (lang == "bash" || lang == "mswea_bash_command") {
      if (found) return std::nullopt;  // several blocks: not mini-swe-agent's format
      found = Trim(std::string_view(text).substr(eol + 1, end - eol - 1));
    }
    pos = end + 3;
  }
  return found;
}

}  // namespace kvkeep::openai
