// OpenAI Chat Completions messages and tool calls, translated to and from what the
// session holds (docs/openai.md):
//   - request messages are validated and flattened to {role, content, name, tool_call_id}
//     text messages: content parts are joined, an assistant message's tool_calls are
//     written as Hermes <tool_call> blocks (the text the model would have produced), and
//     `tools` become a Hermes <tools> block in the system turn;
//   - each message gets a match key: the hash of what a client echoes back, so a request
//     can be matched against the messages a session already holds;
//   - the model's output is parsed back into content and tool_calls.
//
// Thread-safety: free functions.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "base/status.h"

namespace kvkeep::openai {

struct FlatMessage {
  std::string role;  // system, user, assistant or tool
  std::string content;
  std::string name;
  std::string tool_call_id;
  uint64_t key = 0;                      // match key (MatchKey)
  std::optional<std::string> cache_ttl;  // a content part's cache_control.ttl ("5m", "1h")
};

// obj[key] when obj is an object holding a string there, else "" (json::value throws on a
// wrong type, and request bodies are untrusted).
std::string StringField(const nlohmann::json& obj, const char* key);

// Validates `messages` and `tools` and returns the flat conversation; the tools block is
// merged into the first system message (one is added when there is none).
// InvalidArgument names the offending field (messages[3].role, tools[0].function.name).
Result<std::vector<FlatMessage>> FlattenRequest(const nlohmann::json& messages,
                                                const nlohmann::json* tools);

// The Hermes system block listing `tools` (a validated array of function tools).
std::string ToolsBlock(const nlohmann::json& tools);

// A message's match key from its role, text and tool calls (names and arguments, not ids).
uint64_t MatchKey(const std::string& role, const std::string& content,
                  const nlohmann::json& tool_calls);

// What the model produced, parsed.
struct ParsedOutput {
  std::string content;        // text outside <tool_call> blocks (all text if none parsed)
  nlohmann::json tool_calls;  // OpenAI tool_calls array; empty when none
};
// Reads Hermes <tool_call>{"name", "arguments"}</tool_call> blocks. A block that is not a
// JSON object with a string name leaves the whole output as text (never an error).
// call_id_prefix makes the ids ("call_<prefix>_<i>").
ParsedOutput ParseOutput(const std::string& text, const std::string& call_id_prefix);

// The command of the single fenced ```bash (or ```mswea_bash_command) block in text, as
// mini-swe-agent's text mode writes it; nullopt for zero or several blocks.
std::optional<std::string> SingleBashBlock(const std::string& text);

}  // namespace kvkeep::openai
