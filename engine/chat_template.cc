#include "engine/chat_template.h"

#include "engine/gguf_file.h"
#include "engine/gguf_model.h"
#include "engine/tokenizer_unicode.h"

namespace kvkeep {
namespace {

using nlohmann::json;
using nlohmann::ordered_json;

constexpr std::string_view kSmolLM2DefaultSystem =
    "You are a helpful AI assistant named SmolLM, trained by Hugging Face";
constexpr std::string_view kQwen25DefaultSystem =
    "You are Qwen, created by Alibaba Cloud. You are a helpful assistant.";
constexpr std::string_view kQwenToolsIntro =
    "# Tools\n\nYou may call one or more functions to assist with the user query.\n\n"
    "You are provided with function signatures within <tools></tools> XML tags:\n<tools>";
constexpr std::string_view kQwenToolsOutro =
    "\n</tools>\n\nFor each function call, return a json object with function name and "
    "arguments within <tool_call></tool_call> XML tags:\n<tool_call>\n{\"name\": "
    "<function-name>, \"arguments\": <args-json-object>}\n</tool_call><|im_end|>\n";

bool Contains(std::string_view s, std::string_view part) {
  return s.find(part) != std::string_view::npos;
}

bool IsPySpace(char32_t c) { return unicode::IsWhiteSpace(c) || (c >= 0x1C && c <= 0x1F); }

// Python's str.strip() (Jinja's trim).
std::string Trim(std::string_view s) {
  size_t begin = 0;
  size_t end = s.size();
  while (begin < end) {
    size_t pos = begin;
    if (!IsPySpace(unicode::NextCodePoint(s, &pos))) break;
    begin = pos;
  }
  while (end > begin) {
    size_t start = end - 1;
    while (start > begin && (static_cast<uint8_t>(s[start]) & 0xC0) == 0x80) --start;
    size_t pos = start;
    if (!IsPySpace(unicode::NextCodePoint(s, &pos))) break;
    end = start;
  }
  return std::string(s.substr(begin, end - begin));
}

std::string_view LStripNewlines(std::string_view s) {
  while (!s.empty() && s.front() == '\n') s.remove_prefix(1);
  return s;
}
std::string_view RStripNewlines(std::string_view s) {
  while (!s.empty() && s.back() == '\n') s.remove_suffix(1);
  return s;
}

std::string DumpString(const std::string& s) {
  return ordered_json(s).dump(-1, ' ', false, ordered_json::error_handler_t::replace);
}

// tojson of a tool call's arguments as the templates see a parsed dict; text that is not
// JSON is rendered as the templates render a string.
std::string ArgumentsJson(const std::string& arguments, bool raw_if_string) {
  ordered_json parsed = ordered_json::parse(arguments, nullptr, /*allow_exceptions=*/false);
  if (parsed.is_discarded()) return raw_if_string ? arguments : DumpString(arguments);
  return PythonJsonDumps(parsed);
}

struct Qwen3Parts {
  std::string content;
  std::string reasoning;
};

// Qwen3's split of an assistant message into reasoning and visible content.
Qwen3Parts SplitThink(const ChatMessage& m) {
  Qwen3Parts parts{m.content, ""};
  if (m.reasoning_content) {
    parts.reasoning = *m.reasoning_content;
  } else if (size_t end = m.content.find("</think>"); end != std::string::npos) {
    size_t last = m.content.rfind("</think>");
    parts.content = std::string(LStripNewlines(std::string_view(m.content).substr(last + 8)));
    std::string_view before = RStripNewlines(std::string_view(m.content).substr(0, end));
    size_t open = before.rfind("<think>");
    if (open != std::string_view::npos) before.remove_prefix(open + 7);
    parts.reasoning = std::string(LStripNewlines(before));
  }
  return parts;
}

Status CheckRole(const ChatMessage& m, bool allow_ipython) {
  if (m.role == "system" || m.role == "user" || m.role == "assistant" || m.role == "tool" ||
      (allow_ipython && m.role == "ipython")) {
    return Status::OK();
  }
  return Status::InvalidArgument("chat template: unsupported role '" + m.role + "'");
}

}  // namespace

std::string PythonJsonDumps(const ordered_json& v) {
  switch (v.type()) {
    case ordered_json::value_t::object: {
      std::string out = "{";
      bool first = true;
      for (auto it = v.begin(); it != v.end(); ++it) {
        if (!first) out += ", ";
        first = false;
        out += DumpString(it.key()) + ": " + PythonJsonDumps(it.value());
      }
      return out + "}";
    }
    case ordered_json::value_t::array: {
      std::string out = "[";
      for (size_t i = 0; i < v.size(); ++i) {
        if (i > 0) out += ", ";
        out += PythonJsonDumps(v[i]);
      }
      return out + "]";
    }
    case ordered_json::value_t::string:
      return DumpString(v.get<std::string>());
    case ordered_json::value_t::boolean:
      return v.get<bool>() ? "true" : "false";
    case ordered_json::value_t::null:
      return "null";
    default:
      return v.dump();
  }
}

std::string_view ChatFamilyName(ChatFamily family) {
  switch (family) {
    case ChatFamily::kPlain:
      return "plain";
    case ChatFamily::kQwen25:
      return "qwen2.5";
    case ChatFamily::kQwen3:
      return "qwen3";
    case ChatFamily::kLlama3:
      return "llama3";
    case ChatFamily::kLlama31:
      return "llama3.1";
    case ChatFamily::kSmolLM2:
      return "smollm2";
  }
  return "unknown";
}

std::unique_ptr<ChatTemplate> ChatTemplate::ForFamily(ChatFamily family) {
  return std::unique_ptr<ChatTemplate>(new ChatTemplate(family));
}

Result<std::unique_ptr<ChatTemplate>> ChatTemplate::FromTokenizerConfig(
    std::string_view config_json) {
  json config = json::parse(config_json, nullptr, /*allow_exceptions=*/false);
  if (config.is_discarded() || !config.is_object()) {
    return Status::InvalidArgument("tokenizer_config.json is not a JSON object");
  }
  if (config.value("kvkeep_template", "") == "plain") return ForFamily(ChatFamily::kPlain);
  std::string tmpl;
  const json& ct = config.value("chat_template", json());
  if (ct.is_string()) {
    tmpl = ct.get<std::string>();
  } else if (ct.is_array()) {  // [{"name": "default", "template": ...}, ...]
    for (const json& t : ct) {
      if (t.value("name", "") == "default") tmpl = t.value("template", "");
    }
  }
  if (tmpl.empty()) return Status::NotSupported("tokenizer_config.json has no chat_template");
  const bool chatml = Contains(tmpl, "<|im_start|>");
  if (chatml && Contains(tmpl, "reasoning_content") && Contains(tmpl, "last_query_index") &&
      Contains(tmpl, "<tool_response>")) {
    return ForFamily(ChatFamily::kQwen3);
  }
  if (chatml && Contains(tmpl, kQwen25DefaultSystem) && Contains(tmpl, "<tool_response>") &&
      Contains(tmpl, "tool_call.arguments | tojson") && !Contains(tmpl, "<think>")) {
    return ForFamily(ChatFamily::kQwen25);
  }
  // SmolLM2-Instruct: plain ChatML with a default system turn, no tools.
  if (chatml && Contains(tmpl, kSmolLM2DefaultSystem) && !Contains(tmpl, "tool")) {
    return ForFamily(ChatFamily::kSmolLM2);
  }
  const bool llama = Contains(tmpl, "<|start_header_id|>") && Contains(tmpl, "<|eot_id|>");
  if (llama && Contains(tmpl, "Cutting Knowledge Date: December 2023") &&
      Contains(tmpl, "ipython") && Contains(tmpl, "\"parameters\": ")) {
    return ForFamily(ChatFamily::kLlama31);
  }
  if (llama && !Contains(tmpl, "ipython") && !Contains(tmpl, "Cutting Knowledge") &&
      Contains(tmpl, "message['content'] | trim + '<|eot_id|>'") && Contains(tmpl, "bos_token")) {
    return ForFamily(ChatFamily::kLlama3);
  }
  std::string head = tmpl.substr(0, 120);
  return Status::NotSupported(
      "unrecognised chat_template (supported: plain, qwen2.5, qwen3, "
      "llama3, llama3.1, smollm2); it begins: " +
      head);
}

Result<std::unique_ptr<ChatTemplate>> LoadChatTemplate(Env* env, const std::string& model_dir) {
  if (IsGgufPath(model_dir)) {
    ASSIGN_OR_RETURN(std::unique_ptr<GgufFile> file, GgufFile::Open(env, model_dir));
    ASSIGN_OR_RETURN(json config, GgufTokenizerConfigJson(*file));
    auto t = ChatTemplate::FromTokenizerConfig(config.dump());
    if (!t.ok()) return t.status().WithContext(model_dir + " (GGUF tokenizer.chat_template)");
    return t;
  }
  const std::string path = JoinPath(model_dir, "tokenizer_config.json");
  ASSIGN_OR_RETURN(std::string text, env->ReadFile(path));
  auto t = ChatTemplate::FromTokenizerConfig(text);
  if (!t.ok()) return t.status().WithContext(path);
  return t;
}

Result<std::string> ChatTemplate::Render(const std::vector<ChatMessage>& messages,
                                         bool add_generation_prompt) const {
  ChatRenderOptions options;
  options.add_generation_prompt = add_generation_prompt;
  return Render(messages, options);
}

Result<std::string> ChatTemplate::Render(const std::vector<ChatMessage>& messages,
                                         const ChatRenderOptions& options) const {
  if (family_ == ChatFamily::kLlama3 || family_ == ChatFamily::kLlama31) {
    return RenderLlama(messages, options);
  }
  return RenderChatMl(messages, options);
}

std::string_view ChatTemplate::end_of_turn() const {
  return (family_ == ChatFamily::kLlama3 || family_ == ChatFamily::kLlama31) ? "<|eot_id|>"
                                                                             : "<|im_end|>";
}

Result<std::string> ChatTemplate::AssistantText(const ChatMessage& message) const {
  // Render [user, message] and cut at the generation prompt's end and the end of turn.
  std::vector<ChatMessage> pair = {{.role = "user", .content = "x"}, message};
  ChatRenderOptions options;
  ASSIGN_OR_RETURN(std::string prefix, Render({pair[0]}, ChatRenderOptions{true}));
  ASSIGN_OR_RETURN(std::string full, Render(pair, options));
  if (full.compare(0, prefix.size(), prefix) != 0) {
    return Status::Internal("assistant turn does not extend the generation prompt");
  }
  std::string text = full.substr(prefix.size());
  size_t end = text.rfind(end_of_turn());
  if (end == std::string::npos) return Status::Internal("assistant turn has no end of turn");
  return text.substr(0, end);
}

Result<std::string> ChatTemplate::RenderChatMl(const std::vector<ChatMessage>& messages,
                                               const ChatRenderOptions& options) const {
  std::string out;
  const bool qwen = family_ == ChatFamily::kQwen25 || family_ == ChatFamily::kQwen3;
  const bool qwen3 = family_ == ChatFamily::kQwen3;
  for (const ChatMessage& m : messages) RETURN_IF_ERROR(CheckRole(m, false));
  const bool first_is_system = !messages.empty() && messages[0].role == "system";
  if (qwen && !options.tools_json.empty()) {
    ordered_json tools = ordered_json::parse(options.tools_json, nullptr, false);
    if (tools.is_discarded() || !tools.is_array()) {
      return Status::InvalidArgument("tools must be a JSON array");
    }
    out += "<|im_start|>system\n";
    if (first_is_system) {
      out += messages[0].content + (qwen3 ? "\n\n" : "");
    } else if (!qwen3) {
      out += kQwen25DefaultSystem;
    }
    if (!qwen3) out += "\n\n";
    out += kQwenToolsIntro;
    for (const ordered_json& tool : tools) out += "\n" + PythonJsonDumps(tool);
    out += kQwenToolsOutro;
  } else if (qwen && first_is_system) {
    out += "<|im_start|>system\n" + messages[0].content + "<|im_end|>\n";
  } else if (family_ == ChatFamily::kQwen25) {
    out += "<|im_start|>system\n" + std::string(kQwen25DefaultSystem) + "<|im_end|>\n";
  } else if (!options.tools_json.empty()) {
    return Status::NotSupported("the " + std::string(ChatFamilyName(family_)) +
                                " template has no tool definitions");
  } else if (family_ == ChatFamily::kSmolLM2 && !messages.empty() && !first_is_system) {
    out += "<|im_start|>system\n" + std::string(kSmolLM2DefaultSystem) + "<|im_end|>\n";
  }
  // Qwen3: the last user message that is not a bare tool response.
  size_t last_query = messages.empty() ? 0 : messages.size() - 1;
  for (size_t i = messages.size(); i-- > 0;) {
    const std::string& c = messages[i].content;
    bool is_tool_response = c.starts_with("<tool_response>") && c.ends_with("</tool_response>");
    if (messages[i].role == "user" && !is_tool_response) {
      last_query = i;
      break;
    }
  }
  for (size_t i = 0; i < messages.size(); ++i) {
    const ChatMessage& m = messages[i];
    const bool last = i + 1 == messages.size();
    if (!qwen) {
      out += "<|im_start|>" + m.role + "\n" + m.content + "<|im_end|>\n";
      continue;
    }
    if (m.role == "user" || (m.role == "system" && i > 0) ||
        (m.role == "assistant" && m.tool_calls.empty() && !qwen3)) {
      out += "<|im_start|>" + m.role + "\n" + m.content + "<|im_end|>\n";
    } else if (m.role == "assistant") {
      std::string content = m.content;
      if (qwen3) {
        Qwen3Parts parts = SplitThink(m);
        content = parts.content;
        if (i > last_query && (last || !parts.reasoning.empty())) {
          std::string_view r = LStripNewlines(RStripNewlines(parts.reasoning));
          out += "<|im_start|>assistant\n<think>\n" + std::string(r) + "\n</think>\n\n" +
                 std::string(LStripNewlines(content));
        } else {
          out += "<|im_start|>assistant\n" + content;
        }
      } else {
        out += "<|im_start|>assistant";
        if (!content.empty()) out += "\n" + content;
      }
      for (size_t k = 0; k < m.tool_calls.size(); ++k) {
        const ToolCall& tc = m.tool_calls[k];
        if (!qwen3 || k > 0 || !content.empty()) out += "\n";
        out += "<tool_call>\n{\"name\": \"" + tc.name +
               "\", \"arguments\": " + ArgumentsJson(tc.arguments, /*raw_if_string=*/qwen3) +
               "}\n</tool_call>";
      }
      out += "<|im_end|>\n";
    } else if (m.role == "tool") {
      if (i == 0 || messages[i - 1].role != "tool") out += "<|im_start|>user";
      out += "\n<tool_response>\n" + m.content + "\n</tool_response>";
      if (last || messages[i + 1].role != "tool") out += "<|im_end|>\n";
    }
  }
  if (options.add_generation_prompt) {
    out += "<|im_start|>assistant\n";
    if (qwen3 && !options.enable_thinking) out += "<think>\n\n</think>\n\n";
  }
  return out;
}

Result<std::string> ChatTemplate::RenderLlama(const std::vector<ChatMessage>& messages,
                                              const ChatRenderOptions& options) const {
  const bool v31 = family_ == ChatFamily::kLlama31;
  for (const ChatMessage& m : messages) RETURN_IF_ERROR(CheckRole(m, v31));
  if (!options.tools_json.empty()) {
    return Status::NotSupported("Llama-3 templates with tool definitions");
  }
  std::string out = "<|begin_of_text|>";
  size_t begin = 0;
  if (v31) {
    std::string system;
    if (!messages.empty() && messages[0].role == "system") {
      system = Trim(messages[0].content);
      begin = 1;
    }
    out += "<|start_header_id|>system<|end_header_id|>\n\n";
    out += "Cutting Knowledge Date: December 2023\nToday Date: " + options.date_string + "\n\n";
    out += system + "<|eot_id|>";
  }
  for (size_t i = begin; i < messages.size(); ++i) {
    const ChatMessage& m = messages[i];
    const bool tool_result = m.role == "tool" || m.role == "ipython";
    if (!v31 || (!tool_result && m.tool_calls.empty())) {
      out +=
          "<|start_header_id|>" + m.role + "<|end_header_id|>\n\n" + Trim(m.content) + "<|eot_id|>";
    } else if (!m.tool_calls.empty()) {
      if (m.tool_calls.size() != 1) {
        return Status::InvalidArgument("Llama-3.1 supports exactly one tool call per turn");
      }
      const ToolCall& tc = m.tool_calls[0];
      out += "<|start_header_id|>assistant<|end_header_id|>\n\n{\"name\": \"" + tc.name +
             "\", \"parameters\": " + ArgumentsJson(tc.arguments, false) + "}<|eot_id|>";
    } else {
      // The template's `content is iterable` holds for strings: the result is JSON-quoted.
      out +=
          "<|start_header_id|>ipython<|end_header_id|>\n\n" + DumpString(m.content) + "<|eot_id|>";
    }
  }
  if (options.add_generation_prompt) out += "<|start_header_id|>assistant<|end_header_id|>\n\n";
  return out;
}

Result<std::vector<ChatMessage>> ParseChatMessages(const json& messages) {
  if (!messages.is_array()) return Status::InvalidArgument("messages must be a JSON array");
  std::vector<ChatMessage> out;
  for (const json& j : messages) {
    if (!j.is_object() || !j.contains("role") || !j["role"].is_string()) {
      return Status::InvalidArgument("each message needs a string role");
    }
    ChatMessage m;
    m.role = j["role"].get<std::string>();
    const json& content = j.value("content", json());
    if (content.is_string()) {
      m.content = content.get<std::string>();
    } else if (!content.is_null()) {
      return Status::InvalidArgument("message content must be a string or null");
    }
    if (j.contains("name") && j["name"].is_string()) m.name = j["name"].get<std::string>();
    if (j.contains("tool_call_id") && j["tool_call_id"].is_string()) {
      m.tool_call_id = j["tool_call_id"].get<std::string>();
    }
    if (j.contains("reasoning_content") && j["reasoning_content"].is_string()) {
      m.reasoning_content = j["reasoning_content"].get<std::string>();
    }
    const json& calls = j.value("tool_calls", json());
    if (!calls.is_null()) {
      if (!calls.is_array()) return Status::InvalidArgument("tool_calls must be an array");
      for (const json& c : calls) {
        const json& f = c.contains("function") ? c["function"] : c;
        if (!f.is_object() || !f.contains("name") || !f["name"].is_string()) {
          return Status::InvalidArgument("a tool call needs function.name");
        }
        ToolCall tc;
        tc.id = c.value("id", "");
        tc.name = f["name"].get<std::string>();
        const json& args = f.value("arguments", json::object());
        tc.arguments = args.is_string() ? args.get<std::string>() : args.dump();
        m.tool_calls.push_back(std::move(tc));
      }
    }
    out.push_back(std::move(m));
  }
  return out;
}

Result<std::vector<int32_t>> RenderChatToTokens(const ChatTemplate& chat_template,
                                                const Tokenizer& tokenizer, const json& messages) {
  ASSIGN_OR_RETURN(std::vector<ChatMessage> parsed, ParseChatMessages(messages));
  ASSIGN_OR_RETURN(std::string text, chat_template.Render(parsed, true));
  return tokenizer.Encode(text, /*parse_special=*/true);
}

size_t CommonPrefixLength(const std::vector<int32_t>& a, const std::vector<int32_t>& b) {
  size_t n = std::min(a.size(), b.size());
  size_t i = 0;
  while (i < n && a[i] == b[i]) ++i;
  return i;
}

}  // namespace kvkeep
