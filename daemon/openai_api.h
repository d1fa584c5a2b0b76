// OpenAiApi: the OpenAI-compatible HTTP API (docs/openai.md) over the Service's verbs.
//   POST /v1/chat/completions  -> session matching (openai_sessions.h), session.open /
//                                 append / tool_end for the new messages, session.generate,
//                                 tool-call parsing and automatic tool_begin
//   GET  /v1/models, /health, /metrics (the stats verb's Prometheus text)
// It holds no conversation state of its own beyond the matcher's hashes: messages, tokens
// and tool events live in the Service and its store, as for JSON-lines clients.
//
// Thread-safety: Handle is called concurrently from the HTTP connection threads.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "daemon/http_server.h"
#include "daemon/openai_messages.h"
#include "daemon/openai_sessions.h"
#include "daemon/service.h"
#include "daemon/service_call.h"

namespace kvkeep {

struct OpenAiOptions {
  std::string model_id;
  int32_t max_tokens = 4096;    // the daemon's per-generate limit
  int32_t max_json_depth = 64;  // deeper request bodies are refused before parsing
  int32_t max_inflight = 256;   // HTTP generations in flight; beyond: 503 + Retry-After
  // TESTING ONLY (--testing-scripted-replies): the assistant replies of a conversation, in
  // order; reply i is forced when the request holds i assistant messages.
  std::vector<std::string> scripted_replies;
};

// An error response in OpenAI's shape {"error": {"message", "type", "param", "code"}}.
HttpResponse OpenAiError(int status, const std::string& message, const std::string& code,
                         const std::string& param = "");

// The HTTP status of a Status and its OpenAI-shaped error, from one table (openai_api.cc,
// kHttpErrors; docs/openai.md "Errors"): 400 invalid argument or context too long, 403
// permission, 404 not found, 409 exists, 429 busy / too many sessions or requests (with
// Retry-After) / storage quota (type insufficient_quota, x-should-retry: false), 503
// unavailable (with Retry-After), 499 cancelled, 504 deadline, 500 the rest.
int HttpStatusOf(const Status& status);
HttpResponse FromStatus(const Status& status);
HttpResponse JsonResponse(int status, const nlohmann::json& body);

class OpenAiApi {
 public:
  OpenAiApi(OpenAiOptions options, Service* service);

  HttpResponse Handle(const HttpRequest& request);

 private:
  // One chat completion: what the request asked for and where it lives.
  struct Turn {
    uid_t uid = 0;
    std::string name;
    std::string session;
    std::vector<uint64_t> chain;  // the request's messages (after appending: the session's)
    size_t appended = 0;          // request messages now held by the session
    int pending_tools = 0;
    bool pending_text = false;
    bool tools = false;  // tools were offered: parse tool calls (and buffer the stream)
    bool stream = false;
    bool include_usage = false;
    double retain_ttl_s = 0;  // the request's retention hint (0: none)
    std::string id;           // chatcmpl-...
    int64_t created_s = 0;
    nlohmann::json kvkeep = nlohmann::json::object();  // the response's extension object
    std::shared_ptr<ServiceCall> call;
  };
  HttpResponse ChatCompletions(const HttpRequest& request);
  HttpResponse Models() const;
  HttpResponse Metrics(const HttpRequest& request);
  // Opens a session for the tenant, closing its least recently used idle one when the
  // open-session quota is full.
  Result<std::string> OpenSession(Turn& turn);
  // Appends the request's messages after the first `from` to the session; a tool result
  // after a reply with tool calls goes through session.tool_end.
  Status AppendNew(Turn& turn, const std::vector<openai::FlatMessage>& messages, size_t from);
  // Builds the reply from the generation's result, records tool_begin, updates the matcher.
  // An error gives its OpenAI error object (for a stream's error event) and its status.
  nlohmann::json Finish(Turn& turn, const Result<nlohmann::json>& result, int* http_status);
  // Finish with an error, answered as FromStatus answers it (with its headers).
  HttpResponse Fail(Turn& turn, const Status& status);
  // Applies the request's retention hint to the session through Service::Retain (within
  // the uid's quota) and records the outcome in the reply's kvkeep.retention_hints.
  void ApplyRetention(Turn& turn);
  std::string ScriptedReply(const std::vector<openai::FlatMessage>& messages) const;

  const OpenAiOptions options_;
  Service* const service_;
  openai::SessionMatcher matcher_;
  std::atomic<int32_t> inflight_{0};
  std::atomic<uint64_t> next_id_{1};
  const int64_t created_s_;
};

}  // namespace kvkeep
