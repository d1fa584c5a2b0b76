// session.generate: validation, submission to the engine, streaming, and completion.
#include <spdlog/spdlog.h>

#include "daemon/engine_session.h"
#include "daemon/service.h"

namespace kvkeep {

using nlohmann::json;
using protocol::Error;
using protocol::ErrorCode;

// One generation in flight. Fields are written on the engine thread until the kFinished
// event, then read on the I/O thread that FinishGeneration runs on (the post orders them).
struct Service::Generation {
  std::shared_ptr<Client> client;
  json wire_id;
  std::string inflight_key;
  RequestId rid = 0;
  std::shared_ptr<Session> session;
  bool stream = false;
  int64_t start_mono_us = 0;
  std::vector<int32_t> tokens;  // generated (or forced) tokens, in order
  std::string text;
};

namespace {

// A stop parameter: a string or an array of strings.
bool ParseStop(const json& body, std::vector<std::string>* out, Error* error) {
  auto it = body.find("stop");
  if (it == body.end() || it->is_null()) return true;
  if (it->is_string()) {
    out->push_back(it->get<std::string>());
    return true;
  }
  if (it->is_array()) {
    for (const json& s : *it) {
      if (!s.is_string() || s.get_ref<const std::string&>().empty()) break;
      out->push_back(s.get<std::string>());
    }
    if (out->size() == it->size()) return true;
  }
  *error = {ErrorCode::kInvalidArgument, "'stop' must be a string or an array of strings"};
  return false;
}

}  // namespace

bool Service::Generate(const Ctx& ctx, Error* error) {
  if (shutting_down_.load()) {
    *error = {ErrorCode::kUnavailable, "kvkeepd is shutting down"};
    return false;
  }
  auto s = FindSession(ctx, error);
  if (!s) return false;
  const protocol::Params& p = ctx.params;
  GenerateRequest req;
  req.session = EngineSessionOf(s->owner_uid, s->id);  // the engine retains its KV between turns
  req.stop.max_tokens =
      static_cast<int32_t>(p.IntOr("max_tokens", 256, 1, options_.limits.max_tokens, error));
  req.sampling.temperature = static_cast<float>(p.NumberOr("temperature", 0, 0, 100, error));
  req.sampling.top_p = static_cast<float>(p.NumberOr("top_p", 1, 1e-6, 1, error));
  req.sampling.top_k = static_cast<int32_t>(p.IntOr("top_k", 0, 0, INT32_MAX, error));
  req.sampling.seed = static_cast<uint64_t>(p.IntOr("seed", 0, 0, INT64_MAX, error));
  const bool stream = p.BoolOr("stream", false, error);
  if (!error->message.empty() || !ParseStop(ctx.request.body, &req.stop.stop_strings, error)) {
    return false;
  }
  if (p.Has("forced") && p.Has("forced_tokens")) {
    *error = {ErrorCode::kInvalidArgument, "'forced' and 'forced_tokens' are exclusive"};
    return false;
  }
  if (p.Has("forced")) {
    auto text = p.String("forced", error);
    if (!text) return false;
    auto tokens = deps_.renderer->EncodeText(*text);
    if (!tokens.ok()) {
      *error = protocol::ErrorFromStatus(tokens.status());
      return false;
    }
    req.forced = std::move(*tokens);
  } else if (p.Has("forced_tokens")) {
    auto tokens = p.Tokens("forced_tokens", deps_.engine->config().vocab_size, error);
    if (!tokens) return false;
    req.forced = std::move(*tokens);
  }
  if (p.Has("forced") || p.Has("forced_tokens")) {
    if (req.forced.empty()) {
      *error = {ErrorCode::kInvalidArgument, "forced output is empty"};
      return false;
    }
    req.stop.max_tokens = static_cast<int32_t>(req.forced.size());
  }

  auto gen = std::make_shared<Generation>();
  gen->client = ctx.client;
  gen->wire_id = ctx.request.id;
  gen->inflight_key = ctx.request.id.dump();
  gen->session = s;
  gen->stream = stream;
  gen->start_mono_us = deps_.clock->NowMicros();
  gen->rid = next_request_id_.fetch_add(1);
  req.id = gen->rid;
  req.cache_salt = CacheSalt(s->owner_uid);

  std::lock_guard<std::mutex> lock(s->mu);
  if (s->deleted || s->closed) {
    *error = {s->deleted ? ErrorCode::kNotFound : ErrorCode::kInvalidArgument,
              "session '" + s->id + (s->deleted ? "' does not exist" : "' is closed")};
    return false;
  }
  if (!s->damage.empty()) {  // harden: never generate from rows that failed their checksum
    *error = {ErrorCode::kUnavailable, "session '" + s->id + "' is damaged: " + s->damage};
    return false;
  }
  if (s->generating) {
    *error = {ErrorCode::kBusy, "session '" + s->id + "' has a generate in flight"};
    return false;
  }
  req.prompt = s->tokens;
  const auto& gp = deps_.renderer->generation_prompt();
  req.prompt.insert(req.prompt.end(), gp.begin(), gp.end());
  const int64_t need = static_cast<int64_t>(req.prompt.size()) + req.stop.max_tokens;
  if (need > options_.max_context_tokens && !req.forced.empty()) {
    *error = {ErrorCode::kResourceExhausted, "context plus forced tokens (" + std::to_string(need) +
                                                 ") exceed max_context_tokens " +
                                                 std::to_string(options_.max_context_tokens)};
    return false;
  }
  if (static_cast<int64_t>(req.prompt.size()) >= options_.max_context_tokens) {
    *error = {ErrorCode::kResourceExhausted,
              "context of " + std::to_string(req.prompt.size()) +
                  " tokens leaves no room under max_context_tokens " +
                  std::to_string(options_.max_context_tokens)};
    return false;
  }
  if (Status st = ctx.client->AddInflight(gen->inflight_key, gen->rid,
                                          options_.limits.max_inflight_per_connection);
      !st.ok()) {
    *error = st.code() == StatusCode::kResourceExhausted
                 ? Error{ErrorCode::kTooManyRequests, st.message()}
                 : protocol::ErrorFromStatus(st);
    return false;
  }
  req.on_event = [this, gen](const GenerateEvent& ev) {
    if (ev.kind == GenerateEvent::Kind::kToken) {
      gen->tokens.push_back(ev.token);
      gen->text += ev.text;
      if (gen->stream) {
        gen->client->Send(
            protocol::EventLine(gen->wire_id, "token", {{"token", ev.token}, {"text", ev.text}}));
      }
      return;
    }
    deps_.post([this, gen, ev] { FinishGeneration(gen, ev); });
  };
  s->generating = true;
  num_generating_.fetch_add(1);
  if (Status st = deps_.engine->Submit(std::move(req)); !st.ok()) {
    s->generating = false;
    num_generating_.fetch_sub(1);
    ctx.client->RemoveInflight(gen->inflight_key);
    *error = protocol::ErrorFromStatus(st);
    return false;
  }
  return true;
}

void Service::FinishGeneration(const std::shared_ptr<Generation>& gen, const GenerateEvent& ev) {
  Session& s = *gen->session;
  json result;
  Error error;
  bool ok = ev.finish_reason == FinishReason::kStop || ev.finish_reason == FinishReason::kLength;
  {
    std::lock_guard<std::mutex> lock(s.mu);
    if (ok) {
      Message msg;
      msg.role = "assistant";
      msg.content = gen->text;
      msg.tokens = deps_.renderer->generation_prompt();
      msg.tokens.insert(msg.tokens.end(), gen->tokens.begin(), gen->tokens.end());
      auto close = deps_.renderer->CloseAssistantTurn(gen->tokens);
      msg.tokens.insert(msg.tokens.end(), close.begin(), close.end());
      const int64_t now = deps_.clock->WallMicros();
      std::vector<Message> msgs = {std::move(msg)};
      Status st = s.deleted
                      ? Status::NotFound("session was deleted")
                      : deps_.store->AppendMessages(s.owner_uid, s.id,
                                                    s.ToStoredLocked(s.messages.size(), msgs), now);
      if (st.ok()) {
        s.AppendLocked(std::move(msgs[0]));
        s.updated_us = now;
      } else {
        ok = false;
        error = protocol::ErrorFromStatus(st);
        spdlog::error("generate: appending the reply to '{}' failed: {}", s.id, st.ToString());
      }
    } else {
      error = ev.error.ok() ? Error{ErrorCode::kInternal, "generation failed"}
                            : protocol::ErrorFromStatus(ev.error);
      if (ev.finish_reason == FinishReason::kCancelled) {
        error = {ErrorCode::kCancelled, "request cancelled"};
      }
    }
    s.generating = false;
    if (ok) {
      const Usage& u = ev.usage;
      result = {{"session", s.id},
                {"text", gen->text},
                {"tokens", gen->tokens},
                {"finish_reason", FinishReasonName(ev.finish_reason)},
                {"usage",
                 {{"prompt_tokens", u.prompt_tokens},
                  {"cached_tokens", u.cached_tokens},
                  {"cached_by_tier",
                   {{"device", u.cached_device_tokens},
                    {"host", u.cached_host_tokens},
                    {"disk", u.cached_disk_tokens}}},
                  {"recomputed_tokens", u.recomputed_tokens},
                  {"generated_tokens", u.generated_tokens},
                  {"ttft_ms", u.ttft_ms},
                  {"decode_ms", u.decode_ms}}},
                {"num_messages", s.messages.size()},
                {"num_tokens", s.tokens.size()}};
    }
  }
  num_generating_.fetch_sub(1);
  gen->client->RemoveInflight(gen->inflight_key);
  DaemonMetrics& m = *deps_.metrics;
  m.request.Observe((deps_.clock->NowMicros() - gen->start_mono_us) / 1000.0);
  if (ok) {
    m.ttft.Observe(ev.usage.ttft_ms);
    if (ev.usage.generated_tokens > 1) {
      m.decode_per_token.Observe(ev.usage.decode_ms / (ev.usage.generated_tokens - 1));
    }
    gen->client->Send(protocol::ResultLine(gen->wire_id, std::move(result)));
  } else {
    m.errors.fetch_add(1, std::memory_order_relaxed);
    gen->client->Send(protocol::ErrorLine(gen->wire_id, error));
  }
}

}  // namespace kvkeep
