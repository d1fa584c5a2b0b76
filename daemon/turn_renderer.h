// TurnRenderer: turns conversation messages into the token slices a session's token
// sequence is made of, using the model's chat template (engine/chat_template.h).
//
// A session's tokens are the concatenation of its messages' slices, so appending a message
// never re-tokenizes history and each turn's context extends the previous one exactly
// (which is what lets the prefix cache reuse the previous turn's KV):
//   slice(m[n])        = Encode(Render(m[0..n]) minus its prefix Render(m[0..n)))
//   generation_prompt  = Encode(Render([u], true) minus Render([u], false))
//   assistant slice    = generation_prompt + generated tokens + the turn's closing text
//                        (end_of_turn() and what follows it), without end_of_turn() when
//                        generation already ended with it.
// When a template is not append-only for some history (Qwen3 strips earlier reasoning; see
// engine/chat_template.h), the slice is the new rendering after the longest common text
// prefix: earlier slices are never rewritten, so the session's tokens may then differ from
// a fresh rendering of the whole conversation (logged at debug level).
// Thread-safety: const methods are safe to call concurrently.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "base/file.h"
#include "base/status.h"
#include "engine/tokenizer.h"

namespace kvkeep {

struct ChatMessageIn {
  std::string role;
  std::string content;
  std::string name;
  std::string tool_call_id;
};

class TurnRenderer {
 public:
  // Loads the chat template of model_dir (its tokenizer_config.json).
  static Result<std::unique_ptr<TurnRenderer>> Create(Env* env, const std::string& model_dir,
                                                      const Tokenizer* tokenizer);
  virtual ~TurnRenderer() = default;

  // REQUIRES: role is system, user, assistant or tool.
  virtual Result<std::vector<int32_t>> RenderMessage(const std::vector<ChatMessageIn>& history,
                                                     const ChatMessageIn& message) const = 0;
  virtual const std::vector<int32_t>& generation_prompt() const = 0;
  // Tokens that close an assistant turn whose generated tokens are `generated`.
  virtual std::vector<int32_t> CloseAssistantTurn(const std::vector<int32_t>& generated) const = 0;
  // Plain text (no special-token parsing), for forced text.
  virtual Result<std::vector<int32_t>> EncodeText(const std::string& text) const = 0;
};

}  // namespace kvkeep
