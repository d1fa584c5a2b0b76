#include "daemon/turn_renderer.h"

#include <spdlog/spdlog.h>

#include "engine/chat_template.h"

namespace kvkeep {
namespace {

ChatMessage ToChat(const ChatMessageIn& m) {
  ChatMessage c;
  c.role = m.role;
  c.content = m.content;
  if (!m.name.empty()) c.name = m.name;
  if (!m.tool_call_id.empty()) c.tool_call_id = m.tool_call_id;
  return c;
}

class ChatTurnRenderer final : public TurnRenderer {
 public:
  ChatTurnRenderer(std::unique_ptr<ChatTemplate> tmpl, const Tokenizer* tokenizer)
      : tmpl_(std::move(tmpl)), tokenizer_(tokenizer) {}

  Status Init() {
    std::vector<ChatMessage> conv = {ToChat({"user", "x", "", ""})};
    ASSIGN_OR_RETURN(std::string plain, tmpl_->Render(conv, false));
    ASSIGN_OR_RETURN(std::string with_prompt, tmpl_->Render(conv, true));
    if (with_prompt.compare(0, plain.size(), plain) != 0) {
      return Status::NotSupported("chat template's generation prompt does not extend the text");
    }
    ASSIGN_OR_RETURN(generation_prompt_, Encode(with_prompt.substr(plain.size())));
    // The closing text of an assistant turn: what follows its content in the rendering.
    ChatMessage reply = ToChat({"assistant", "y", "", ""});
    ASSIGN_OR_RETURN(std::string reply_text, tmpl_->AssistantText(reply));
    conv.push_back(reply);
    ASSIGN_OR_RETURN(std::string full, tmpl_->Render(conv, false));
    const std::string head = with_prompt + reply_text;
    if (full.compare(0, head.size(), head) != 0) {
      return Status::NotSupported("chat template is not append-only for assistant turns");
    }
    std::string closing = full.substr(head.size());
    ASSIGN_OR_RETURN(closing_, Encode(closing));
    const std::string eot(tmpl_->end_of_turn());
    if (!eot.empty() && closing.compare(0, eot.size(), eot) == 0) {
      ASSIGN_OR_RETURN(closing_after_eot_, Encode(closing.substr(eot.size())));
      auto eot_ids = tokenizer_->Encode(eot, /*parse_special=*/true);
      if (eot_ids.ok() && eot_ids->size() == 1) eot_id_ = (*eot_ids)[0];
    } else {
      closing_after_eot_ = closing_;
    }
    return Status::OK();
  }

  Result<std::vector<int32_t>> RenderMessage(const std::vector<ChatMessageIn>& history,
                                             const ChatMessageIn& message) const override {
    std::vector<ChatMessage> conv;
    conv.reserve(history.size() + 1);
    for (const ChatMessageIn& m : history) conv.push_back(ToChat(m));
    std::string before;
    if (!conv.empty()) {
      ASSIGN_OR_RETURN(before, tmpl_->Render(conv, false));
    }
    conv.push_back(ToChat(message));
    ASSIGN_OR_RETURN(std::string after, tmpl_->Render(conv, false));
    size_t common = 0;
    while (common < before.size() && common < after.size() && before[common] == after[common]) {
      ++common;
    }
    if (common != before.size()) {
      spdlog::debug("chat template rewrote {} bytes of earlier turns; they stay as first sent",
                    before.size() - common);
    }
    return Encode(after.substr(common));
  }

  const std::vector<int32_t>& generation_prompt() const override { return generation_prompt_; }

  std::vector<int32_t> CloseAssistantTurn(const std::vector<int32_t>& generated) const override {
    if (eot_id_ && !generated.empty() && generated.back() == *eot_id_) return closing_after_eot_;
    return closing_;
  }

  Result<std::vector<int32_t>> EncodeText(const std::string& text) const override {
    return tokenizer_->Encode(text, /*parse_special=*/false);
  }

 private:
  Result<std::vector<int32_t>> Encode(const std::string& text) const {
    return tokenizer_->Encode(text, /*parse_special=*/true);
  }

  std::unique_ptr<ChatTemplate> tmpl_;
  const Tokenizer* tokenizer_;
  std::vector<int32_t> generation_prompt_;
  std::vector<int32_t> closing_;
  std::vector<int32_t> closing_after_eot_;
  std::optional<int32_t> eot_id_;
};

}  // namespace

Result<std::unique_ptr<TurnRenderer>> TurnRenderer::Create(Env* env, const std::string& model_dir,
                                                           const Tokenizer* tokenizer) {
  ASSIGN_OR_RETURN(auto tmpl, LoadChatTemplate(env, model_dir));
  spdlog::info("chat template: {}", ChatFamilyName(tmpl->family()));
  auto renderer = std::make_unique<ChatTurnRenderer>(std::move(tmpl), tokenizer);
  RETURN_IF_ERROR(renderer->Init());
  return std::unique_ptr<TurnRenderer>(std::move(renderer));
}

}  // namespace kvkeep
