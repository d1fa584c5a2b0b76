// POST /v1/chat/completions: validation, session matching, generation, and the reply
// (one JSON body, or an SSE stream of chunks ending in `data: [DONE]`).
#include <spdlog/spdlog.h>

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <ctime>
#include <mutex>

#include "daemon/openai_api.h"
#include "daemon/protocol.h"
#include "daemon/service_call.h"

namespace kvkeep {

using nlohmann::json;
using protocol::Verb;

namespace {

HttpResponse BadRequest(const Status& st, const std::string& param = "") {
  return OpenAiError(400, st.message(), "invalid_request_error", param);
}

// The sampling and stop fields of a chat request, as session.generate parameters.
Result<json> GenerateParams(const json& body, int32_t max_tokens_limit) {
  protocol::Params p(body);
  json g = json::object();
  const char* max_key = p.Has("max_completion_tokens") ? "max_completion_tokens" : "max_tokens";
  ASSIGN_OR_RETURN(int64_t max_tokens, p.IntOr(max_key, 256, 1, max_tokens_limit));
  g["max_tokens"] = max_tokens;
  ASSIGN_OR_RETURN(double temperature, p.NumberOr("temperature", 1.0, 0, 2));
  g["temperature"] = temperature;
  ASSIGN_OR_RETURN(double top_p, p.NumberOr("top_p", 1, 1e-6, 1));
  g["top_p"] = top_p;
  if (p.Has("seed")) {
    ASSIGN_OR_RETURN(int64_t seed, p.IntOr("seed", 0, INT64_MIN, INT64_MAX));
    g["seed"] = seed < 0 ? -(seed + 1) : seed;  // the engine takes non-negative seeds
  }
  if (p.Has("stop")) g["stop"] = body["stop"];  // validated by session.generate
  ASSIGN_OR_RETURN(int64_t n, p.IntOr("n", 1, 1, INT64_MAX));
  if (n != 1) return Status::InvalidArgument("'n' must be 1 (one choice per request)");
  return g;
}

// The providers' retention hints (docs/openai.md, "Retention hints"), validated, as the
// session.retain TTL they ask for: the longest of them, at most session.retain's 3600 s.
//   prompt_cache_retention "in_memory" -> 300 s (OpenAI keeps in-memory prefixes 5-10
//   minutes), "24h" -> 3600 s; cache_control ttl "5m" -> 300 s, "1h" -> 3600 s.
Result<json> RetentionHints(const json& body, const std::vector<openai::FlatMessage>& flat) {
  constexpr double kMaxRetainS = 3600;
  json hints = json::object();
  double ttl_s = 0;
  protocol::Params p(body);
  ASSIGN_OR_RETURN(std::string retention, p.StringOr("prompt_cache_retention", ""));
  if (!retention.empty()) {
    if (retention != "in_memory" && retention != "24h") {
      return Status::InvalidArgument("'prompt_cache_retention' must be \"in_memory\" or \"24h\"");
    }
    hints["prompt_cache_retention"] = retention;
    ttl_s = retention == "24h" ? kMaxRetainS : 300;
  }
  for (const auto& m : flat) {
    if (!m.cache_ttl) continue;
    hints["cache_control_ttl"] = *m.cache_ttl;
    ttl_s = std::max(ttl_s, *m.cache_ttl == "1h" ? 3600.0 : 300.0);
  }
  if (!hints.empty()) hints["ttl_s"] = std::min(ttl_s, kMaxRetainS);
  return hints;
}

json Chunk(const std::string& id, int64_t created, const std::string& model, json delta,
           json finish) {
  return {{"id", id},
          {"object", "chat.completion.chunk"},
          {"created", created},
          {"model", model},
          {"choices", {{{"index", 0}, {"delta", std::move(delta)}, {"finish_reason", finish}}}}};
}

// The session name a request gives: prompt_cache_key, X-Session-Id, or user.
std::string SessionNameOf(const json& body, const HttpRequest& request) {
  if (body.contains("prompt_cache_key") && body["prompt_cache_key"].is_string()) {
    return body["prompt_cache_key"].get<std::string>();
  }
  if (std::string h = request.Header("x-session-id"); !h.empty()) return h;
  if (body.contains("user") && body["user"].is_string()) return body["user"].get<std::string>();
  return "";
}

std::string Sse(const json& chunk) {
  return "data: " + chunk.dump(-1, ' ', false, json::error_handler_t::replace) + "\n\n";
}

}  // namespace

HttpResponse OpenAiApi::ChatCompletions(const HttpRequest& request) {
  if (protocol::JsonDepth(request.body, options_.max_json_depth) > options_.max_json_depth) {
    return OpenAiError(400, "JSON nested deeper than " + std::to_string(options_.max_json_depth),
                       "invalid_json");
  }
  json body = json::parse(request.body, nullptr, /*allow_exceptions=*/false);
  if (body.is_discarded() || !body.is_object()) {
    return OpenAiError(400, "the body must be a JSON object", "invalid_json");
  }
  protocol::Params p(body);
  auto model = p.String("model");
  if (!model.ok()) return BadRequest(model.status(), "model");
  if (*model != options_.model_id) {
    return OpenAiError(404,
                       "the model '" + *model + "' does not exist (this daemon serves '" +
                           options_.model_id + "')",
                       "model_not_found", "model");
  }
  auto gen = GenerateParams(body, options_.max_tokens);
  if (!gen.ok()) return BadRequest(gen.status());
  auto stream = p.BoolOr("stream", false);
  if (!stream.ok()) return BadRequest(stream.status(), "stream");
  bool include_usage = false;
  if (body.contains("stream_options") && !body["stream_options"].is_null()) {
    const json& so = body["stream_options"];
    if (!so.is_object()) return OpenAiError(400, "'stream_options' must be an object", "invalid");
    auto iu = protocol::Params(so).BoolOr("include_usage", false);
    if (!iu.ok()) return BadRequest(iu.status(), "stream_options.include_usage");
    include_usage = *iu;
  }
  for (const char* key : {"prompt_cache_key", "user"}) {
    if (auto s = p.StringOr(key, ""); !s.ok()) return BadRequest(s.status(), key);
  }
  const json* tools = body.contains("tools") ? &body["tools"] : nullptr;
  if (body.contains("tool_choice") && !body["tool_choice"].is_null()) {
    const json& tc = body["tool_choice"];
    const bool ok = (tc.is_string() && (tc == "none" || tc == "auto" || tc == "required")) ||
                    (tc.is_object() && openai::StringField(tc, "type") == "function");
    if (!ok) {
      return OpenAiError(400, "'tool_choice' must be none, auto, required or a function",
                         "invalid_request_error", "tool_choice");
    }
    if (tc == "none") tools = nullptr;
  }
  auto flat = openai::FlattenRequest(body.contains("messages") ? body["messages"] : json(), tools);
  if (!flat.ok()) return BadRequest(flat.status(), "messages");
  auto hints = RetentionHints(body, *flat);
  if (!hints.ok()) return BadRequest(hints.status());
  const std::shared_ptr<RequestTrace>& trace = request.trace;
  TraceMark(trace, "parse");

  auto turn = std::make_shared<Turn>();
  turn->uid = request.tenant_uid;
  turn->name = SessionNameOf(body, request);
  turn->tools = tools != nullptr && tools->is_array() && !tools->empty();
  turn->stream = *stream;
  turn->include_usage = include_usage;
  turn->created_s = std::time(nullptr);
  char id[32];
  std::snprintf(id, sizeof(id), "chatcmpl-%016llx",
                static_cast<unsigned long long>(next_id_.fetch_add(1) * 0x9e3779b97f4a7c15ull));
  turn->id = id;
  if (!hints->empty()) {
    turn->retain_ttl_s = (*hints)["ttl_s"].get<double>();
    turn->kvkeep["retention_hints"] = *hints;
  }
  std::vector<uint64_t> keys;
  for (const auto& m : *flat) keys.push_back(m.key);
  turn->chain = openai::ChainKeys(keys);
  turn->call = std::make_shared<ServiceCall>(service_, turn->uid);

  if (inflight_.fetch_add(1) >= options_.max_inflight) {
    inflight_.fetch_sub(1);
    // Issue 17: overload is a 429 with Retry-After, which OpenAI clients back off on.
    return OpenAiError(429, "too many generations in flight; retry shortly", "overloaded");
  }
  auto match = matcher_.Acquire(turn->uid, turn->name, turn->chain);
  if (!match) {
    inflight_.fetch_sub(1);
    return FromStatus(Status::Busy("session '" + turn->name + "' has a request in flight"));
  }
  TraceMark(trace, "match");
  size_t from = 0;
  if (match->kind == openai::Match::Kind::kContinue) {
    turn->session = match->session_id;
    turn->appended = from = match->stored;
    turn->pending_tools = match->pending_tools;
    turn->pending_text = match->pending_text;
    turn->kvkeep["matched"] = "continued";
    if (match->reopen) {
      auto r = turn->call->Call(Verb::kSessionOpen, {{"session", turn->session}});
      if (!r.ok()) {
        if (r.status().IsNotFound()) {
          matcher_.Forget(turn->uid, turn->session);  // deleted while closed
        } else {
          matcher_.Abandon(turn->uid, turn->session);
        }
        inflight_.fetch_sub(1);
        return FromStatus(r.status());
      }
      TraceMark(trace, "open");
    }
  } else {
    auto opened = OpenSession(*turn);
    if (!opened.ok()) {
      inflight_.fetch_sub(1);
      return FromStatus(opened.status());
    }
    turn->session = *opened;
    TraceMark(trace, "open");
    turn->kvkeep["matched"] = match->kind == openai::Match::Kind::kFork ? "forked" : "new";
    if (match->kind == openai::Match::Kind::kFork) {
      turn->kvkeep["forked_from"] = match->session_id;
      turn->kvkeep["shared_messages"] = match->shared;
    }
  }
  if (Status st = AppendNew(*turn, *flat, from); !st.ok()) return Fail(*turn, st);
  TraceMark(trace, "append");

  json g = std::move(*gen);
  g["session"] = turn->session;
  if (std::string forced = ScriptedReply(*flat); !forced.empty()) g["forced"] = forced;
  const std::string model_id = options_.model_id;

  if (turn->stream) {
    auto out = std::make_shared<HttpStream>();
    out->Write(Sse(Chunk(turn->id, turn->created_s, model_id,
                         {{"role", "assistant"}, {"content", ""}}, nullptr)));
    auto first = std::make_shared<std::once_flag>();
    auto on_token = [turn, out, model_id, trace, first](const std::string& text) {
      if (trace) std::call_once(*first, [&] { trace->Mark("first_token"); });
      if (turn->tools || text.empty()) return;  // tool calls are known only at the end
      out->Write(Sse(Chunk(turn->id, turn->created_s, model_id, {{"content", text}}, nullptr)));
    };
    auto on_done = [this, turn, out, model_id, trace](Result<json> result) {
      TraceMark(trace, "generated");
      int status = 0;
      json fin = Finish(*turn, result, &status);
      if (status != 200) {
        out->Write(Sse(fin));
      } else {
        json delta = json::object();
        if (turn->tools) {
          if (!fin["message"]["content"].is_null()) delta["content"] = fin["message"]["content"];
          if (fin["message"].contains("tool_calls")) {
            json calls = fin["message"]["tool_calls"];
            for (size_t i = 0; i < calls.size(); ++i) calls[i]["index"] = i;
            delta["tool_calls"] = std::move(calls);
          }
          if (!delta.empty()) {
            out->Write(Sse(Chunk(turn->id, turn->created_s, model_id, delta, nullptr)));
          }
        }
        out->Write(
            Sse(Chunk(turn->id, turn->created_s, model_id, json::object(), fin["finish_reason"])));
        if (turn->include_usage) {
          json u = Chunk(turn->id, turn->created_s, model_id, json::object(), nullptr);
          u["choices"] = json::array();
          u["usage"] = fin["usage"];
          u["kvkeep"] = turn->kvkeep;
          out->Write(Sse(u));
        }
      }
      out->Write("data: [DONE]\n\n");
      out->Close();
    };
    std::weak_ptr<ServiceCall> weak = turn->call;
    out->SetOnAbandon([weak] {
      if (auto c = weak.lock()) c->Cancel();
    });
    if (Status st = turn->call->StartGenerate(std::move(g), on_token, on_done); !st.ok()) {
      return Fail(*turn, st);
    }
    HttpResponse r;
    r.content_type = "text/event-stream";
    r.headers.push_back({"Cache-Control", "no-cache"});
    r.stream = std::move(out);
    return r;
  }

  struct Waiter {
    std::mutex mu;
    std::condition_variable cv;
    std::optional<Result<json>> done;  // guarded by mu
  };
  auto waiter = std::make_shared<Waiter>();
  auto on_done = [waiter, trace](Result<json> result) {
    TraceMark(trace, "generated");  // engine finished, reply stored (the bulk pool)
    std::lock_guard<std::mutex> lock(waiter->mu);
    waiter->done = std::move(result);
    waiter->cv.notify_all();
  };
  std::function<void(const std::string&)> on_first_token;
  if (trace) {
    auto first = std::make_shared<std::once_flag>();
    on_first_token = [trace, first](const std::string&) {
      std::call_once(*first, [&] { trace->Mark("first_token"); });  // the engine thread
    };
  }
  if (Status st = turn->call->StartGenerate(std::move(g), on_first_token, on_done); !st.ok()) {
    return Fail(*turn, st);
  }
  Result<json> done = Status::Unavailable("kvkeepd is shutting down");
  {
    // Waits for the generation; a client that leaves cancels it. After a cancel, the
    // completion is waited for a bounded time (it does not come once the daemon stopped).
    std::unique_lock<std::mutex> lock(waiter->mu);
    int ticks_after_cancel = -1;
    while (!waiter->done && ticks_after_cancel < 10) {
      if (waiter->cv.wait_for(lock, std::chrono::milliseconds(200)) == std::cv_status::no_timeout) {
        continue;
      }
      if (ticks_after_cancel >= 0) {
        ++ticks_after_cancel;
      } else if (!request.peer_connected()) {
        ticks_after_cancel = 0;
        lock.unlock();
        turn->call->Cancel();
        lock.lock();
      }
    }
    if (waiter->done) done = std::move(*waiter->done);
  }
  TraceMark(trace, "wake");  // this thread runs again
  if (!done.ok()) return Fail(*turn, done.status());
  int status = 0;
  json fin = Finish(*turn, done, &status);
  HttpResponse reply = JsonResponse(200, {{"id", turn->id},
                                          {"object", "chat.completion"},
                                          {"created", turn->created_s},
                                          {"model", model_id},
                                          {"choices",
                                           {{{"index", 0},
                                             {"message", fin["message"]},
                                             {"logprobs", nullptr},
                                             {"finish_reason", fin["finish_reason"]}}}},
                                          {"usage", fin["usage"]},
                                          {"system_fingerprint", nullptr},
                                          {"kvkeep", turn->kvkeep}});
  TraceMark(trace, "reply");  // tool_begin, retention, matcher, the JSON body
  return reply;
}

}  // namespace kvkeep
