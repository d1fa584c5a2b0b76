#include "bench/sim/served_tokens.h"

#include <algorithm>
#include <climits>

#include "tools/replay/replayer.h"

namespace kvkeep::sim {
namespace {

using replay::Event;
using replay::EventType;
using replay::ServedEventTokens;

constexpr int64_t kTemplateMargin = 64;  // the replayer's room for role markers
constexpr int32_t kOrdinaryIds = 256;    // the replayer's range for synthetic token ids

int64_t Size(const std::vector<int32_t>& v) { return static_cast<int64_t>(v.size()); }

}  // namespace

Result<std::unique_ptr<ServedTokenCounter>> ServedTokenCounter::Create(
    Env* env, const std::string& model_dir) {
  ASSIGN_OR_RETURN(std::unique_ptr<Tokenizer> tokenizer, LoadTokenizer(env, model_dir));
  ASSIGN_OR_RETURN(std::unique_ptr<TurnRenderer> renderer,
                   TurnRenderer::Create(env, model_dir, tokenizer.get()));
  return std::unique_ptr<ServedTokenCounter>(
      new ServedTokenCounter(std::move(tokenizer), std::move(renderer)));
}

// Mirrors replay::Run::ReplaySession (tools/replay/replayer.cc) without a daemon.
Result<std::vector<ServedEventTokens>> ServedTokenCounter::Count(
    const replay::Session& s, const ServedTokenOptions& o) const {
  std::vector<ServedEventTokens> out(s.events.size());
  const int64_t max_context = o.max_context_tokens;
  int64_t context = 0;
  int turns = 0;
  std::vector<ChatMessageIn> history;
  auto budget = [&]() -> int64_t {
    return max_context > 0 ? max_context - context - kTemplateMargin : INT64_MAX;
  };
  const int64_t turn_reserve = max_context > 0 ? std::min(o.max_tokens, max_context / 4) : 0;
  auto room = [&]() -> int64_t {
    if (turns > 0) return budget();
    return std::min(budget(), std::max<int64_t>(0, budget() - turn_reserve));
  };
  // Renders `m` after the history, as the daemon does, and adds it to the session.
  auto append = [&](ChatMessageIn m, ServedEventTokens* t) -> Status {
    ASSIGN_OR_RETURN(std::vector<int32_t> ids, renderer_->RenderMessage(history, m));
    t->before = Size(ids);
    context += t->before;
    t->ids = std::move(ids);
    history.push_back(std::move(m));
    return Status::OK();
  };

  size_t first = 0;
  if (!s.events.empty() && s.events[0].type == EventType::kSystem) {
    const std::string system = replay::ClipUtf8(s.events[0].text, room());
    if (!system.empty()) RETURN_IF_ERROR(append({"system", system, "", ""}, &out[0]));
    first = 1;
  }
  for (size_t k = first; k < s.events.size(); ++k) {
    const Event& e = s.events[k];
    ServedEventTokens& t = out[k];
    if (budget() <= 0) {
      t.stop = true;
      break;
    }
    switch (e.type) {
      case EventType::kSystem:
      case EventType::kUser: {
        const std::string role = e.type == EventType::kUser ? "user" : "system";
        if (e.tokens) {  // sent as token ids, not rendered
          t.ids = replay::SyntheticTokenIds(*e.tokens, kOrdinaryIds);
          if (Size(t.ids) > room()) t.ids.resize(static_cast<size_t>(std::max<int64_t>(0, room())));
          t.before = Size(t.ids);
          context += t.before;
          history.push_back({role, "", "", ""});
        } else {
          RETURN_IF_ERROR(append({role, replay::ClipUtf8(e.text, room()), "", ""}, &t));
        }
        break;
      }
      case EventType::kModel: {
        const int64_t cap = std::min<int64_t>(o.max_tokens, budget());
        if ((o.max_turns > 0 && turns >= o.max_turns) || cap < 1) {
          t.stop = true;
          return out;
        }
        std::vector<int32_t> generated;
        std::string text;
        if (e.tokens) {
          generated = replay::SyntheticTokenIds(*e.tokens, kOrdinaryIds);
          if (Size(generated) > cap) generated.resize(static_cast<size_t>(cap));
        } else {
          text = replay::ClipUtf8(replay::ForcedText(e), cap);
          ASSIGN_OR_RETURN(generated, renderer_->EncodeText(text));
        }
        // No forced output: the daemon generates up to the recorded length.
        t.output = generated.empty() ? std::clamp<int64_t>(e.completion_tokens.value_or(16), 1, cap)
                                     : Size(generated);
        const std::vector<int32_t>& prompt = renderer_->generation_prompt();
        const std::vector<int32_t> close = renderer_->CloseAssistantTurn(generated);
        t.before = Size(prompt);
        t.after = Size(close);
        if (!generated.empty()) {  // unknown ids for a free generation: counts only
          t.ids = prompt;
          t.ids.insert(t.ids.end(), generated.begin(), generated.end());
          t.ids.insert(t.ids.end(), close.begin(), close.end());
        }
        if (max_context > 0 && !generated.empty() && context + t.before + t.output > max_context) {
          t = ServedEventTokens{};  // the daemon refuses the turn: the replay ends here
          t.stop = true;
          return out;
        }
        context += t.before + t.output + t.after;
        history.push_back({"assistant", text, "", ""});
        ++turns;
        break;
      }
      case EventType::kToolEnd: {
        ChatMessageIn m{"tool", replay::ClipUtf8(e.text, room()), e.tool, e.call_id};
        RETURN_IF_ERROR(append(std::move(m), &t));
        break;
      }
      case EventType::kToolBegin:
      case EventType::kThink:
        break;
    }
  }
  return out;
}

Result<std::vector<std::vector<ServedEventTokens>>> ServedTokenCounter::CountAll(
    const std::vector<replay::Session>& sessions, const ServedTokenOptions& options) const {
  std::vector<std::vector<ServedEventTokens>> out;
  out.reserve(sessions.size());
  for (const replay::Session& s : sessions) {
    Result<std::vector<replay::ServedEventTokens>> counts = Count(s, options);
    if (!counts.ok()) return counts.status().WithContext("session " + s.id);
    out.push_back(std::move(*counts));
  }
  return out;
}

}  // namespace kvkeep::sim
