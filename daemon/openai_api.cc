#include "daemon/openai_api.h"

#include <spdlog/spdlog.h>

#include <chrono>
#include <condition_variable>
#include <ctime>
#include <future>

#include "daemon/protocol.h"
#include "daemon/service_call.h"
#include "policy/tool_key.h"

namespace kvkeep {

using nlohmann::json;
using protocol::Verb;

namespace {

// How a Status is answered over HTTP: the one mapping from the service's error codes to
// HTTP statuses and OpenAI's error types (docs/openai.md, "Errors", is this table).
struct HttpErrorRow {
  StatusCode code;
  int http_status;
  const char* type;  // OpenAI's error.type
  const char* wire;  // error.code; null: the Status code's name (StatusCodeName)
  bool retry_after;  // a momentary refusal: Retry-After: 1
};
constexpr HttpErrorRow kHttpErrors[] = {
    {StatusCode::kInvalidArgument, 400, "invalid_request_error", nullptr, false},
    // The context would not fit max_context_tokens or the KV pool: the request's size.
    {StatusCode::kResourceExhausted, 400, "invalid_request_error", "context_length_exceeded",
     false},
    // No such session for the tenant; another tenant's answers the same (no oracle).
    {StatusCode::kNotFound, 404, "invalid_request_error", nullptr, false},
    {StatusCode::kPermissionDenied, 403, "permission_error", nullptr, false},
    {StatusCode::kAlreadyExists, 409, "invalid_request_error", nullptr, false},
    {StatusCode::kBusy, 429, "rate_limit_error", nullptr, true},
    {StatusCode::kTooManySessions, 429, "rate_limit_error", nullptr, true},
    {StatusCode::kTooManyRequests, 429, "rate_limit_error", nullptr, true},
    // limits.max_stored_bytes_per_uid: retrying soon does not help; OpenAI's shape for it.
    {StatusCode::kQuotaExceeded, 429, "insufficient_quota", nullptr, false},
    // Draining for shutdown, or a damaged session. (--http-max-inflight's `overloaded`,
    // the HTTP layer's own refusal, is a 429 with Retry-After, as issue 17 asks.)
    {StatusCode::kUnavailable, 503, "server_error", nullptr, true},
    {StatusCode::kCancelled, 499, "invalid_request_error", nullptr, false},  // client left
    {StatusCode::kDeadlineExceeded, 504, "server_error", nullptr, false},
};
constexpr HttpErrorRow kInternalError = {StatusCode::kInternal, 500, "server_error", nullptr,
                                         false};

const HttpErrorRow& RowOf(StatusCode code) {
  for (const HttpErrorRow& row : kHttpErrors) {
    if (row.code == code) return row;
  }
  return kInternalError;  // Internal, IOError, Corruption, NotSupported
}

const char* TypeOfStatus(int status) {
  for (const HttpErrorRow& row : kHttpErrors) {
    if (row.http_status == status) return row.type;
  }
  return status == 401  ? "authentication_error"
         : status < 500 ? "invalid_request_error"
                        : "server_error";
}

}  // namespace

int HttpStatusOf(const Status& st) { return RowOf(st.code()).http_status; }

HttpResponse FromStatus(const Status& st) {
  const HttpErrorRow& row = RowOf(st.code());
  HttpResponse r = JsonResponse(
      row.http_status,
      {{"error",
        {{"message", row.http_status == 500 ? st.ToString() : st.message()},
         {"type", row.type},
         {"param", nullptr},
         {"code", row.wire != nullptr ? row.wire : std::string(StatusCodeName(st.code()))}}}});
  if (row.retry_after) r.headers.push_back({"Retry-After", "1"});
  // The openai SDKs retry 429s on their own unless told not to; a full quota stays full.
  if (!row.retry_after && row.http_status == 429) r.headers.push_back({"x-should-retry", "false"});
  return r;
}

HttpResponse JsonResponse(int status, const json& body) {
  HttpResponse r;
  r.status = status;
  r.body = body.dump(-1, ' ', false, json::error_handler_t::replace);
  return r;
}

HttpResponse OpenAiError(int status, const std::string& message, const std::string& code,
                         const std::string& param) {
  HttpResponse r = JsonResponse(status, {{"error",
                                          {{"message", message},
                                           {"type", TypeOfStatus(status)},
                                           {"param", param.empty() ? json(nullptr) : json(param)},
                                           {"code", code}}}});
  if (status == 429 || status == 503) r.headers.push_back({"Retry-After", "1"});
  return r;
}

OpenAiApi::OpenAiApi(OpenAiOptions options, Service* service)
    : options_(std::move(options)), service_(service), created_s_(std::time(nullptr)) {}

HttpResponse OpenAiApi::Handle(const HttpRequest& request) {
  const std::string& p = request.path;
  const bool get = request.method == "GET" || request.method == "HEAD";
  if (p == "/v1/chat/completions" || p == "/chat/completions") {
    if (request.method != "POST") return OpenAiError(405, "use POST", "method_not_allowed");
    return ChatCompletions(request);
  }
  if (p == "/v1/models" || p == "/models") {
    return get ? Models() : OpenAiError(405, "use GET", "method_not_allowed");
  }
  if (p == "/health") {
    return get ? JsonResponse(200, {{"status", "ok"}})
               : OpenAiError(405, "use GET", "method_not_allowed");
  }
  if (p == "/metrics") {
    return get ? Metrics(request) : OpenAiError(405, "use GET", "method_not_allowed");
  }
  return OpenAiError(404, "no route " + request.method + " " + p, "not_found");
}

HttpResponse OpenAiApi::Models() const {
  return JsonResponse(200, {{"object", "list"},
                            {"data",
                             {{{"id", options_.model_id},
                               {"object", "model"},
                               {"created", created_s_},
                               {"owned_by", "kvkeep"}}}}});
}

HttpResponse OpenAiApi::Metrics(const HttpRequest& request) {
  auto call = std::make_shared<ServiceCall>(service_, request.tenant_uid);
  auto stats = call->Call(Verb::kStats, {{"format", "prometheus"}});
  if (!stats.ok()) return FromStatus(stats.status());
  HttpResponse r;
  r.content_type = "text/plain; version=0.0.4";
  r.body = (*stats)["text"].get<std::string>();
  return r;
}

Result<std::string> OpenAiApi::OpenSession(Turn& turn) {
  for (int attempt = 0;; ++attempt) {
    auto opened = turn.call->Call(Verb::kSessionOpen, json::object());
    if (opened.ok()) return (*opened)["session"].get<std::string>();
    if (opened.status().code() != StatusCode::kTooManySessions || attempt > 0) {
      return opened.status();
    }
    auto victim = matcher_.EvictionCandidate(turn.uid);
    if (!victim) return opened.status();
    auto closed = turn.call->Call(Verb::kSessionClose, {{"session", *victim}, {"keep", true}});
    if (!closed.ok()) return opened.status();
    matcher_.MarkClosed(turn.uid, *victim);
    spdlog::debug("openai: closed idle session {} of uid {} to open another", *victim, turn.uid);
  }
}

Status OpenAiApi::AppendNew(Turn& turn, const std::vector<openai::FlatMessage>& messages,
                            size_t from) {
  json batch = json::array();
  auto flush = [&]() -> Status {
    if (batch.empty()) return Status::OK();
    const size_t n = batch.size();
    auto r = turn.call->Call(Verb::kSessionAppend,
                             {{"session", turn.session}, {"messages", std::move(batch)}});
    batch = json::array();
    if (!r.ok()) return r.status();
    turn.appended += n;
    return Status::OK();
  };
  for (size_t i = from; i < messages.size(); ++i) {
    const openai::FlatMessage& m = messages[i];
    const bool result_of_tool =
        turn.pending_tools > 0 &&
        (m.role == "tool" || (turn.pending_text && m.role == "user" && i == from));
    if (result_of_tool) {
      RETURN_IF_ERROR(flush());
      json body = {{"session", turn.session}, {"content", m.content}, {"role", m.role}};
      if (!m.tool_call_id.empty()) body["tool_call_id"] = m.tool_call_id;
      auto r = turn.call->Call(Verb::kSessionToolEnd, std::move(body));
      if (!r.ok()) return r.status();
      --turn.pending_tools;
      ++turn.appended;
      continue;
    }
    turn.pending_tools = 0;  // anything else ends the tool phase
    json jm = {{"role", m.role}, {"content", m.content}};
    if (!m.name.empty()) jm["name"] = m.name;
    if (!m.tool_call_id.empty()) jm["tool_call_id"] = m.tool_call_id;
    batch.push_back(std::move(jm));
  }
  return flush();
}

void OpenAiApi::ApplyRetention(Turn& turn) {
  if (turn.retain_ttl_s <= 0) return;
  json& echo = turn.kvkeep["retention_hints"];
  auto r = service_->Retain(turn.uid, turn.session, turn.retain_ttl_s);
  echo["applied"] = r.ok();
  if (r.ok()) {
    for (const char* k : {"pinned_blocks", "uid_pinned_blocks", "quota_blocks"}) {
      echo[k] = (*r)[k];
    }
  } else {
    echo["reason"] = r.status().message();
  }
}

std::string OpenAiApi::ScriptedReply(const std::vector<openai::FlatMessage>& messages) const {
  size_t assistants = 0;
  for (const auto& m : messages) assistants += m.role == "assistant";
  return assistants < options_.scripted_replies.size() ? options_.scripted_replies[assistants] : "";
}

HttpResponse OpenAiApi::Fail(Turn& turn, const Status& status) {
  int unused = 0;
  (void)Finish(turn, status, &unused);
  return FromStatus(status);
}

json OpenAiApi::Finish(Turn& turn, const Result<json>& result, int* http_status) {
  inflight_.fetch_sub(1);
  if (!result.ok()) {
    if (result.status().IsNotFound()) {  // deleted behind our back: the next request starts anew
      matcher_.Forget(turn.uid, turn.session);
    } else {
      matcher_.Release(
          turn.uid, turn.session, turn.name,
          std::vector<uint64_t>(turn.chain.begin(), turn.chain.begin() + turn.appended), 0, false);
    }
    *http_status = HttpStatusOf(result.status());
    return json::parse(FromStatus(result.status()).body);
  }
  const json& r = *result;
  const std::string text = r["text"].get<std::string>();
  openai::ParsedOutput out =
      turn.tools ? openai::ParseOutput(text, turn.id.substr(9)) : openai::ParsedOutput{text, {}};
  std::string finish = r["finish_reason"].get<std::string>();
  if (finish == "context_limit") {  // OpenAI has no such reason: `length`, and say why
    turn.kvkeep["finish_reason"] = finish;
    finish = "length";
  }
  int pending = 0;
  bool pending_text = false;
  auto begin_tool = [&](const std::string& key, const std::string& args) {
    auto b = turn.call->Call(Verb::kSessionToolBegin,
                             {{"session", turn.session}, {"tool", key}, {"args", args}});
    if (b.ok()) {
      ++pending;
    } else {
      spdlog::warn("openai: tool_begin on {}: {}", turn.session, b.status().ToString());
    }
  };
  if (!out.tool_calls.empty()) {
    finish = "tool_calls";
    for (const json& c : out.tool_calls) {
      const std::string name = c["function"]["name"].get<std::string>();
      const std::string args = c["function"]["arguments"].get<std::string>();
      json a = json::parse(args, nullptr, false);
      std::string command;
      if (a.is_object() && a.contains("command") && a["command"].is_string()) {
        command = a["command"].get<std::string>();
      }
      begin_tool(ToolKey(name, command), args);
    }
  } else if (auto cmd = openai::SingleBashBlock(text)) {
    begin_tool(ToolKey("bash", *cmd), *cmd);
    pending_text = pending > 0;
  }
  std::vector<uint64_t> chain(turn.chain.begin(), turn.chain.begin() + turn.appended);
  // The key of the reply as the client receives it: invalid UTF-8 (a token ending inside a
  // character) is replaced when the JSON is written, so the echo carries the replacement.
  out.content = json::parse(json(out.content).dump(-1, ' ', false, json::error_handler_t::replace))
                    .get<std::string>();
  const uint64_t reply_key = openai::MatchKey("assistant", out.content, out.tool_calls);
  chain.push_back(openai::ChainNext(chain.empty() ? 0 : chain.back(), reply_key));
  ApplyRetention(turn);
  matcher_.Release(turn.uid, turn.session, turn.name, std::move(chain), pending, pending_text);

  const json& u = r["usage"];
  const int64_t prompt = u.value("prompt_tokens", 0), completion = u.value("generated_tokens", 0);
  json usage = {{"prompt_tokens", prompt},
                {"completion_tokens", completion},
                {"total_tokens", prompt + completion},
                {"prompt_tokens_details", {{"cached_tokens", u.value("cached_tokens", 0)}}},
                {"completion_tokens_details", {{"reasoning_tokens", 0}}}};
  turn.kvkeep["session"] = turn.session;
  turn.kvkeep["cached_tokens"] = u.value("cached_tokens", 0);
  turn.kvkeep["recomputed_tokens"] = u.value("recomputed_tokens", 0);
  if (u.contains("cached_by_tier")) turn.kvkeep["cached_by_tier"] = u["cached_by_tier"];
  turn.kvkeep["ttft_ms"] = u.value("ttft_ms", 0.0);
  turn.kvkeep["tool_events_begun"] = pending;
  json message = {{"role", "assistant"},
                  {"content", out.content.empty() && !out.tool_calls.empty() ? json(nullptr)
                                                                             : json(out.content)}};
  if (!out.tool_calls.empty()) message["tool_calls"] = out.tool_calls;
  *http_status = 200;
  return {{"message", std::move(message)}, {"finish_reason", finish}, {"usage", std::move(usage)}};
}

}  // namespace kvkeep
