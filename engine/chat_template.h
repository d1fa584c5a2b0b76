// ChatTemplate: renders a conversation into the exact text a model was trained on, for
// the template families kvkeep recognises in tokenizer_config.json. There is no Jinja
// interpreter: each family has a hand-written renderer, verified against Hugging Face's
// apply_chat_template on the real templates (tests/fixtures/parity/chat/, made by
// tests/fixtures/gen_parity.py --chat-templates). An unrecognised template is
// NotSupported; kvkeep never guesses a format.
//
// Families:
//   kPlain   the synthetic model's ChatML-shaped template ("kvkeep_template": "plain").
//   kQwen25  Qwen2.5 (-Instruct, -Coder): default system prompt, tools in the system turn,
//            tool calls in <tool_call> JSON, tool results in <tool_response> in a user turn.
//   kQwen3   Qwen3: as Qwen2.5 without a default system prompt, plus <think> reasoning,
//            which is dropped from assistant turns before the last user query.
//   kLlama3  Llama-3 (3.0): <|start_header_id|>role<|end_header_id|>\n\n content <|eot_id|>.
//   kLlama31 Llama-3.1/3.2/3.3: adds the dated system header, assistant tool calls as
//            {"name", "parameters"} JSON and tool results in the ipython role.
//   kSmolLM2 SmolLM2-Instruct: ChatML with a default system turn ("You are a helpful AI
//            assistant named SmolLM, ...") when the first message is not a system one; no
//            tools.
//
// Append-only (what the daemon relies on to keep a conversation's KV): for every family,
//   Render(m[0..n), add_generation_prompt=true) + AssistantText(m[n]) + end_of_turn()
// is a prefix of Render(m[0..n]) when m[n] is an assistant message, and
// Render(m[0..n), false) is a prefix of Render(m[0..n]) when m[n] is a user message or the
// first tool result after an assistant turn. Exceptions, see docs/tokenizers.md:
//   - Qwen2.5/3: consecutive tool results share one user turn, so a second tool result
//     rewrites the end of the first: append all results of one assistant turn together.
//   - Qwen3: a new user query strips <think> from earlier assistant turns (and an assistant
//     turn without reasoning renders with an empty think block only while it is the last
//     message). The daemon must diff the new rendering against its cached tokens
//     (CommonPrefixLength) and re-prefill from the first difference.
//
// Thread-safety: immutable; Render is const.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "base/file.h"
#include "base/status.h"
#include "engine/tokenizer.h"

namespace kvkeep {

struct ToolCall {
  std::string id;  // optional, not rendered by any supported family
  std::string name;
  std::string arguments;  // JSON text of the arguments object (OpenAI style)
};

struct ChatMessage {
  std::string role;  // "system", "user", "assistant", "tool" (Llama-3.1 also "ipython")
  std::string content;
  std::optional<std::string> name;
  std::optional<std::string> tool_call_id;
  std::vector<ToolCall> tool_calls;              // assistant only
  std::optional<std::string> reasoning_content;  // Qwen3 assistant reasoning, if split out
};

enum class ChatFamily { kPlain, kQwen25, kQwen3, kLlama3, kLlama31, kSmolLM2 };
std::string_view ChatFamilyName(ChatFamily family);  // "plain", "qwen2.5", ...

struct ChatRenderOptions {
  bool add_generation_prompt = false;
  // JSON array of tool definitions ({"type": "function", "function": {...}}), rendered into
  // the system turn (Qwen). Empty: no tools. Llama-3.1 with tools is NotSupported.
  std::string tools_json;
  // Qwen3: false appends an empty <think></think> block to the generation prompt.
  bool enable_thinking = true;
  // Llama-3.1's "Today Date" (the template's default).
  std::string date_string = "26 Jul 2024";
};

class ChatTemplate {
 public:
  // Recognises the family from tokenizer_config.json's text.
  static Result<std::unique_ptr<ChatTemplate>> FromTokenizerConfig(std::string_view config_json);
  static std::unique_ptr<ChatTemplate> ForFamily(ChatFamily family);

  ChatFamily family() const { return family_; }
  Result<std::string> Render(const std::vector<ChatMessage>& messages,
                             bool add_generation_prompt) const;
  Result<std::string> Render(const std::vector<ChatMessage>& messages,
                             const ChatRenderOptions& options) const;
  // The stop text the model emits to end its turn ("<|im_end|>", "<|eot_id|>").
  std::string_view end_of_turn() const;
  // What an assistant message contributes after the generation prompt, up to end_of_turn():
  // the text the model would have generated for it.
  Result<std::string> AssistantText(const ChatMessage& message) const;

 private:
  explicit ChatTemplate(ChatFamily family) : family_(family) {}
  Result<std::string> RenderChatMl(const std::vector<ChatMessage>& messages,
                                   const ChatRenderOptions& options) const;
  Result<std::string> RenderLlama(const std::vector<ChatMessage>& messages,
                                  const ChatRenderOptions& options) const;
  ChatFamily family_;
};

// Loads model_dir/tokenizer_config.json (or a .gguf file's tokenizer.chat_template) and
// recognises its template.
Result<std::unique_ptr<ChatTemplate>> LoadChatTemplate(Env* env, const std::string& model_dir);

// OpenAI-style messages: [{"role", "content" (string or null), "name"?, "tool_call_id"?,
// "tool_calls"?: [{"id"?, "function": {"name", "arguments" (string or object)}}],
// "reasoning_content"?}]. InvalidArgument on anything else.
Result<std::vector<ChatMessage>> ParseChatMessages(const nlohmann::json& messages);

// Renders messages with the generation prompt and encodes the text (special tokens parsed,
// no post-processor: the template writes BOS itself).
Result<std::vector<int32_t>> RenderChatToTokens(const ChatTemplate& chat_template,
                                                const Tokenizer& tokenizer,
                                                const nlohmann::json& messages);

// Length of the common prefix of two token sequences: where re-prefill must start.
size_t CommonPrefixLength(const std::vector<int32_t>& a, const std::vector<int32_t>& b);

// Python's json.dumps(value, ensure_ascii=False) (separators ", " and ": "), which is
// what the templates' tojson filter writes.
std::string PythonJsonDumps(const nlohmann::ordered_json& value);

}  // namespace kvkeep
