// session.generate: validation, submission to the engine, streaming, and completion.
#include <spdlog/spdlog.h>

#include "daemon/engine_session.h"
#include "daemon/request_trace.h"
#include "daemon/service.h"

namespace kvkeep {

using nlohmann::json;

// One generation in flight. Fields are written on the engine thread until the kFinished
// event, then read on the I/O thread that FinishGeneration runs on (the post orders them).
struct Service::Generation {
  std::shared_ptr<Client> client;
  json wire_id;
  std::string inflight_key;
  RequestId rid = 0;
  uint32_t uid = 0;  // the caller's, counted in uid_inflight_ while in flight
  std::shared_ptr<Session> session;
  bool stream = false;
  int64_t start_mono_us = 0;
  std::vector<int32_t> tokens;  // generated (or forced) tokens, in order
  std::string text;
  // max_tokens was cut so that the stored reply fits max_context_tokens: a `length`
  // finish is then reported as `context_limit` (issue 11, defect 8).
  bool cut_by_context = false;
  std::shared_ptr<RequestTrace> trace;  // step timings, at log level debug only
  json episode;  // the turn's route in an over-budget session (null: not routed)
};

namespace {

// A stop parameter: a string or an array of non-empty strings.
Status ParseStop(const json& body, std::vector<std::string>* out) {
  auto it = body.find("stop");
  if (it == body.end() || it->is_null()) return Status::OK();
  if (it->is_string()) {
    out->push_back(it->get<std::string>());
    return Status::OK();
  }
  if (it->is_array()) {
    for (const json& s : *it) {
      if (!s.is_string() || s.get_ref<const std::string&>().empty()) break;
      out->push_back(s.get<std::string>());
    }
    if (out->size() == it->size()) return Status::OK();
  }
  return Status::InvalidArgument("'stop' must be a string or an array of strings");
}

}  // namespace

Status Service::Generate(const Ctx& ctx) {
  if (shutting_down_.load()) return Status::Unavailable("kvkeepd is shutting down");
  std::shared_ptr<RequestTrace> trace = RequestTrace::StartIfDebug(deps_.clock);
  ASSIGN_OR_RETURN(auto s, FindSession(ctx));
  const protocol::Params& p = ctx.params;
  GenerateRequest req;
  req.session = EngineSessionOf(s->owner_uid, s->id);  // the engine retains its KV between turns
  ASSIGN_OR_RETURN(int64_t max_tokens, p.IntOr("max_tokens", 256, 1, options_.limits.max_tokens));
  req.stop.max_tokens = static_cast<int32_t>(max_tokens);
  ASSIGN_OR_RETURN(double temperature, p.NumberOr("temperature", 0, 0, 100));
  req.sampling.temperature = static_cast<float>(temperature);
  ASSIGN_OR_RETURN(double top_p, p.NumberOr("top_p", 1, 1e-6, 1));
  req.sampling.top_p = static_cast<float>(top_p);
  ASSIGN_OR_RETURN(int64_t top_k, p.IntOr("top_k", 0, 0, INT32_MAX));
  req.sampling.top_k = static_cast<int32_t>(top_k);
  ASSIGN_OR_RETURN(int64_t seed, p.IntOr("seed", 0, 0, INT64_MAX));
  req.sampling.seed = static_cast<uint64_t>(seed);
  ASSIGN_OR_RETURN(const bool stream, p.BoolOr("stream", false));
  RETURN_IF_ERROR(ParseStop(ctx.request.body, &req.stop.stop_strings));
  if (p.Has("forced") && p.Has("forced_tokens")) {
    return Status::InvalidArgument("'forced' and 'forced_tokens' are exclusive");
  }
  if (p.Has("forced")) {
    ASSIGN_OR_RETURN(std::string text, p.String("forced"));
    ASSIGN_OR_RETURN(req.forced, deps_.renderer->EncodeText(text));
  } else if (p.Has("forced_tokens")) {
    ASSIGN_OR_RETURN(req.forced, p.Tokens("forced_tokens", deps_.engine->config().vocab_size));
  }
  if (p.Has("forced") || p.Has("forced_tokens")) {
    if (req.forced.empty()) return Status::InvalidArgument("forced output is empty");
    req.stop.max_tokens = static_cast<int32_t>(req.forced.size());
  }

  auto gen = std::make_shared<Generation>();
  gen->trace = std::move(trace);
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
  if (s->deleted) return Status::NotFound("session '" + s->id + "' does not exist");
  if (s->closed) return Status::InvalidArgument("session '" + s->id + "' is closed");
  if (s->generating) return Status::Busy("session '" + s->id + "' has a generate in flight");
  if (!s->damage.empty()) {  // never generate from rows that failed their checksum
    return Status::Unavailable("session '" + s->id + "' is damaged: " + s->damage);
  }
  RETURN_IF_ERROR(RetainField(ctx, *s));  // before the turn: its KV is pinned after it
  req.prompt = s->tokens;
  const auto& gp = deps_.renderer->generation_prompt();
  req.prompt.insert(req.prompt.end(), gp.begin(), gp.end());
  const int64_t need = static_cast<int64_t>(req.prompt.size()) + req.stop.max_tokens;
  if (need > options_.max_context_tokens && !req.forced.empty()) {
    return Status::ResourceExhausted("context plus forced tokens (" + std::to_string(need) +
                                     ") exceed max_context_tokens " +
                                     std::to_string(options_.max_context_tokens));
  }
  // Room for the reply as it will be stored: its tokens and the tokens closing the turn,
  // so the next turn can still be served.
  const int64_t room = options_.max_context_tokens - static_cast<int64_t>(req.prompt.size()) -
                       static_cast<int64_t>(deps_.renderer->CloseAssistantTurn({}).size());
  if (room < 1) {
    return Status::ResourceExhausted("context of " + std::to_string(req.prompt.size()) +
                                     " tokens leaves no room under max_context_tokens " +
                                     std::to_string(options_.max_context_tokens));
  }
  if (req.forced.empty() && req.stop.max_tokens > room) {
    req.stop.max_tokens = static_cast<int32_t>(room);
    gen->cut_by_context = true;
  }
  if (const int64_t cap = options_.limits.max_device_blocks_per_uid; cap > 0) {
    const int64_t tokens = static_cast<int64_t>(req.prompt.size()) +
                           std::max<int64_t>(req.stop.max_tokens, req.forced.size());
    const int64_t blocks = (tokens + options_.block_size - 1) / options_.block_size;
    if (blocks > cap) {
      return Status::ResourceExhausted(
          "this turn may hold " + std::to_string(blocks) + " KV blocks (context " +
          std::to_string(req.prompt.size()) + " + max_tokens " +
          std::to_string(req.stop.max_tokens) + " tokens, " + std::to_string(options_.block_size) +
          " a block); limits.max_device_blocks_per_uid is " + std::to_string(cap));
    }
  }
  RETURN_IF_ERROR(ctx.client->AddInflight(gen->inflight_key, gen->rid,
                                          options_.limits.max_inflight_per_connection));
  if (Status st = uid_inflight_.Acquire(ctx.uid()); !st.ok()) {
    ctx.client->RemoveInflight(gen->inflight_key);
    return st;
  }
  gen->uid = ctx.uid();
  req.on_event = [this, gen](const GenerateEvent& ev) {
    if (ev.kind == GenerateEvent::Kind::kToken) {
      if (gen->tokens.empty()) TraceMark(gen->trace, "first_token");
      gen->tokens.push_back(ev.token);
      gen->text += ev.text;
      if (gen->stream) {
        gen->client->SendEvent(gen->wire_id, "token", {{"token", ev.token}, {"text", ev.text}});
      }
      return;
    }
    TraceMark(gen->trace, "engine_done");
    // Off the I/O threads: the reply's store write may wait on a slow commit.
    const auto& post = deps_.post_store ? deps_.post_store : deps_.post;
    post([this, gen, ev] { FinishGeneration(gen, ev); });
  };
  gen->episode = RouteTurnLocked(*s, &req);  // recorded only for a turn that is submitted
  TraceMark(gen->trace, "validate");         // parameters checked, prompt built; next: Submit
  s->generating = true;
  num_generating_.fetch_add(1);
  if (Status st = deps_.engine->Submit(std::move(req)); !st.ok()) {
    s->generating = false;
    num_generating_.fetch_sub(1);
    ctx.client->RemoveInflight(gen->inflight_key);
    uid_inflight_.Release(gen->uid);
    return st;
  }
  return Status::OK();
}

void Service::FinishGeneration(const std::shared_ptr<Generation>& gen, const GenerateEvent& ev) {
  TraceMark(gen->trace, "post");  // the hop from the engine thread to the bulk pool
  Session& s = *gen->session;
  json result;
  Status error;
  bool ok = ev.finish_reason == FinishReason::kStop || ev.finish_reason == FinishReason::kLength;
  {
    std::lock_guard<std::mutex> lock(s.mu);
    if (ok) {
      EpisodeServedLocked(s, ev.usage, &gen->episode);  // before the reply is appended
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
        stored_bytes_.ChargeAnyway(s.owner_uid, s.id, StoredBytes::Of(msgs));
        s.AppendLocked(std::move(msgs[0]));
        s.updated_us = now;
        IndexNewLocked(s, s.messages.size() - 1);
      } else {
        ok = false;
        error = st;
        spdlog::error("generate: appending the reply to '{}' failed: {}", s.id, st.ToString());
      }
    } else {
      error = ev.error.ok() ? Status::Internal("generation failed") : ev.error;
      if (ev.finish_reason == FinishReason::kCancelled)
        error = Status::Cancelled("request cancelled");
    }
    s.generating = false;
    TraceMark(gen->trace, "store");  // the reply appended and committed
    if (ok) {
      const Usage& u = ev.usage;
      result = {{"session", s.id},
                {"text", gen->text},
                {"tokens", gen->tokens},
                {"finish_reason", gen->cut_by_context && ev.finish_reason == FinishReason::kLength
                                      ? std::string("context_limit")
                                      : std::string(FinishReasonName(ev.finish_reason))},
                {"usage",
                 {{"prompt_tokens", u.prompt_tokens},
                  {"cached_tokens", u.cached_tokens},
                  {"cached_by_tier",
                   {{"device", u.cached_device_tokens},
                    {"host", u.cached_host_tokens},
                    {"disk", u.cached_disk_tokens},
                    {"remote", u.cached_remote_tokens}}},
                  {"recomputed_tokens", u.recomputed_tokens},
                  {"generated_tokens", u.generated_tokens},
                  {"ttft_ms", u.ttft_ms},
                  {"decode_ms", u.decode_ms}}},
                {"num_messages", s.messages.size()},
                {"num_tokens", s.tokens.size()}};
      if (!gen->episode.is_null()) result["episode"] = gen->episode;
    }
  }
  num_generating_.fetch_sub(1);
  gen->client->RemoveInflight(gen->inflight_key);
  uid_inflight_.Release(gen->uid);
  DaemonMetrics& m = *deps_.metrics;
  m.request.Observe((deps_.clock->NowMicros() - gen->start_mono_us) / 1000.0);
  if (ok) {
    m.ttft.Observe(ev.usage.ttft_ms);
    if (ev.usage.generated_tokens > 1) {
      m.decode_per_token.Observe(ev.usage.decode_ms / (ev.usage.generated_tokens - 1));
    }
    gen->client->SendResult(gen->wire_id, std::move(result));
  } else {
    m.errors.fetch_add(1, std::memory_order_relaxed);
    gen->client->SendError(gen->wire_id, error);
  }
  if (gen->trace) {
    gen->trace->Mark("reply");
    spdlog::debug("trace generate {}: {}", s.id, gen->trace->Line());
  }
}

}  // namespace kvkeep
