// The OpenAI translation layer without sockets: request flattening and match keys,
// tool-call parsing, mini-swe-agent's bash blocks, the session matcher, ToolKey, and the
// mapping of Status codes to HTTP statuses and OpenAI error objects, and request traces.
#include <gtest/gtest.h>

#include <iterator>
#include <string>

#include <spdlog/spdlog.h>

#include "base/clock.h"
#include "daemon/openai_api.h"
#include "daemon/openai_messages.h"
#include "daemon/openai_sessions.h"
#include "daemon/request_trace.h"
#include "policy/tool_key.h"

namespace kvkeep {
namespace {

using nlohmann::json;
using openai::Match;

TEST(OpenAiMessagesTest, FlattensRolesPartsAndTools) {
  json messages = json::array({
      {{"role", "developer"}, {"content", "be brief"}},
      {{"role", "user"},
       {"content",
        {{{"type", "text"}, {"text", "a"}},
         {{"type", "text"},
          {"text", "b"},
          {"cache_control", {{"type", "ephemeral"}, {"ttl", "1h"}}}}}}},
      {{"role", "assistant"},
       {"content", nullptr},
       {"tool_calls",
        {{{"id", "x"}, {"function", {{"name", "bash"}, {"arguments", "{\"command\": \"ls\"}"}}}}}}},
      {{"role", "tool"}, {"tool_call_id", "x"}, {"content", "out"}},
  });
  json tools = json::array({{{"type", "function"}, {"function", {{"name", "bash"}}}}});
  auto flat = openai::FlattenRequest(messages, &tools);
  ASSERT_TRUE(flat.ok()) << flat.status().ToString();
  ASSERT_EQ(flat->size(), 4u);
  EXPECT_EQ((*flat)[0].role, "system");
  EXPECT_NE((*flat)[0].content.find("be brief\n\n# Tools"), std::string::npos);
  EXPECT_NE((*flat)[0].content.find("<tools>\n{\"function\""), std::string::npos);
  EXPECT_EQ((*flat)[1].content, "ab");
  EXPECT_EQ((*flat)[1].cache_ttl, "1h");
  EXPECT_EQ((*flat)[2].content,
            "\n<tool_call>\n{\"arguments\":{\"command\":\"ls\"},\"name\":\"bash\"}\n</tool_call>");
  EXPECT_EQ((*flat)[3].tool_call_id, "x");

  // Other tools: another first-message key, so another session.
  json other = json::array({{{"type", "function"}, {"function", {{"name", "python"}}}}});
  auto flat2 = openai::FlattenRequest(messages, &other);
  ASSERT_TRUE(flat2.ok());
  EXPECT_NE((*flat)[0].key, (*flat2)[0].key);
  EXPECT_EQ((*flat)[1].key, (*flat2)[1].key);
}

TEST(OpenAiMessagesTest, RejectsBadMessagesNamingTheField) {
  auto bad_role = openai::FlattenRequest(
      json::array({{{"role", "user"}, {"content", "x"}}, {{"role", "wizard"}, {"content", "x"}}}),
      nullptr);
  EXPECT_EQ(bad_role.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(bad_role.status().message().find("messages[1].role"), std::string::npos);
  EXPECT_FALSE(openai::FlattenRequest(json::array(), nullptr).ok());
  EXPECT_FALSE(openai::FlattenRequest(json("x"), nullptr).ok());
  EXPECT_FALSE(
      openai::FlattenRequest(json::array({{{"role", "user"}, {"content", 5}}}), nullptr).ok());
  json image = json::array(
      {{{"role", "user"}, {"content", {{{"type", "image_url"}, {"image_url", "http://x"}}}}}});
  EXPECT_FALSE(openai::FlattenRequest(image, nullptr).ok());
  json ttl = json::array({{{"role", "user"},
                           {"content",
                            {{{"type", "text"},
                              {"text", "a"},
                              {"cache_control", {{"type", "ephemeral"}, {"ttl", "2h"}}}}}}}});
  EXPECT_FALSE(openai::FlattenRequest(ttl, nullptr).ok());
  json tools = json::array({{{"type", "function"}, {"function", {{"name", 3}}}}});
  EXPECT_FALSE(
      openai::FlattenRequest(json::array({{{"role", "user"}, {"content", "x"}}}), &tools).ok());
}

// Found by schemathesis (tests/openai/test_openapi_fuzz.py): a "type" that is not a string
// threw out of json::value and ended the daemon. Each is a 400 naming the field.
TEST(OpenAiMessagesTest, NonStringTypeFieldsAreRefusedNotThrown) {
  json user = json::array({{{"role", "user"}, {"content", "x"}}});
  json tools = json::array({{{"type", json::object()}, {"function", {{"name", "f"}}}}});
  auto r = openai::FlattenRequest(user, &tools);
  EXPECT_EQ(r.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(r.status().message().find("tools[0].type"), std::string::npos);
  json part = json::array({{{"role", "user"}, {"content", {{{"type", 1}, {"text", "a"}}}}}});
  EXPECT_EQ(openai::FlattenRequest(part, nullptr).status().code(), StatusCode::kInvalidArgument);
  json cc = json::array(
      {{{"role", "user"},
        {"content", {{{"type", "text"}, {"text", "a"}, {"cache_control", {{"type", {1}}}}}}}}});
  EXPECT_EQ(openai::FlattenRequest(cc, nullptr).status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(openai::StringField(json{{"type", {{"a", 1}}}}, "type"), "");
  EXPECT_EQ(openai::StringField(json{{"type", "text"}}, "type"), "text");
  EXPECT_EQ(openai::StringField(json("not an object"), "type"), "");
}

TEST(OpenAiMessagesTest, EchoedReplyMatchesWhatWasGenerated) {
  auto out = openai::ParseOutput(
      "ok\n<tool_call>\n{\"name\": \"bash\", \"arguments\": {\"command\": \"ls\"}}\n</tool_call>",
      "r1");
  ASSERT_EQ(out.tool_calls.size(), 1u);
  const uint64_t generated = openai::MatchKey("assistant", out.content, out.tool_calls);
  // A client echoes the reply with reformatted arguments and its own whitespace.
  json echoed_calls =
      json::array({{{"id", "call_r1_0"},
                    {"type", "function"},
                    {"function", {{"name", "bash"}, {"arguments", "{ \"command\" : \"ls\" }"}}}}});
  EXPECT_EQ(openai::MatchKey("assistant", "ok\n", echoed_calls), generated);
  EXPECT_NE(openai::MatchKey("assistant", "ok, edited", echoed_calls), generated);
  EXPECT_NE(openai::MatchKey("user", "ok", echoed_calls), generated);
}

TEST(OpenAiMessagesTest, ParsesHermesToolCallsAndKeepsMalformedOnesAsText) {
  auto two = openai::ParseOutput(
      "<tool_call>{\"name\": \"a\", \"arguments\": {\"x\": 1}}</tool_call> and "
      "<tool_call>{\"name\": \"b\", \"arguments\": \"{}\"}</tool_call>",
      "q");
  ASSERT_EQ(two.tool_calls.size(), 2u);
  EXPECT_EQ(two.tool_calls[0]["id"], "call_q_0");
  EXPECT_EQ(two.tool_calls[0]["function"]["arguments"], "{\"x\":1}");
  EXPECT_EQ(two.tool_calls[1]["function"]["name"], "b");
  EXPECT_EQ(two.content, "and");
  for (const std::string bad :
       {"<tool_call>{not json</tool_call>", "<tool_call>{\"arguments\": {}}</tool_call>",
        "<tool_call>{\"name\": \"a\"}", "<tool_call>[1]</tool_call>"}) {
    auto p = openai::ParseOutput(bad, "q");
    EXPECT_TRUE(p.tool_calls.empty()) << bad;
    EXPECT_EQ(p.content, bad);
  }
  auto plain = openai::ParseOutput("just text", "q");
  EXPECT_TRUE(plain.tool_calls.empty());
  EXPECT_EQ(plain.content, "just text");
}

TEST(OpenAiMessagesTest, FindsMiniSweAgentsSingleBashBlock) {
  EXPECT_EQ(openai::SingleBashBlock("THOUGHT: x\n\n```mswea_bash_command\nls -la\n```\n"),
            "ls -la");
  EXPECT_EQ(openai::SingleBashBlock("```bash\ncat a\n```"), "cat a");
  EXPECT_FALSE(openai::SingleBashBlock("```bash\nls\n```\n```bash\npwd\n```").has_value());
  EXPECT_FALSE(openai::SingleBashBlock("```python\nprint(1)\n```").has_value());
  EXPECT_FALSE(openai::SingleBashBlock("no block").has_value());
  EXPECT_FALSE(openai::SingleBashBlock("```bash\nunterminated").has_value());
}

TEST(ToolKeyTest, NameOrTheCommandsFirstWord) {
  EXPECT_EQ(ToolKey("bash", "  ls -la /tmp"), "ls");
  EXPECT_EQ(ToolKey("bash", "pytest\n"), "pytest");
  EXPECT_EQ(ToolKey("search", ""), "search");
  EXPECT_EQ(ToolKey("bash", " \n"), "bash");
}

TEST(SessionMatcherTest, ContinuesForksAndKeepsTenantsApart) {
  openai::SessionMatcher m;
  const std::vector<uint64_t> conv = openai::ChainKeys({1, 2, 3});
  auto first = m.Acquire(7, "", {conv.begin(), conv.begin() + 2});
  ASSERT_TRUE(first);
  EXPECT_EQ(first->kind, Match::Kind::kNew);
  m.Release(7, "s1", "", {conv.begin(), conv.begin() + 3}, 0, false);

  // The stored [1, 2, 3] is a prefix of [1, 2, 3, 4]: continue with 3 messages held.
  auto longer = openai::ChainKeys({1, 2, 3, 4});
  auto cont = m.Acquire(7, "", longer);
  ASSERT_TRUE(cont);
  EXPECT_EQ(cont->kind, Match::Kind::kContinue);
  EXPECT_EQ(cont->session_id, "s1");
  EXPECT_EQ(cont->stored, 3u);
  // While s1 is busy, the same request forks instead of continuing it twice.
  auto concurrent = m.Acquire(7, "", longer);
  ASSERT_TRUE(concurrent);
  EXPECT_EQ(concurrent->kind, Match::Kind::kFork);
  m.Release(7, "s1", "", longer, 1, true);

  // Edited at message 1: fork from s1, sharing one message.
  auto edited = m.Acquire(7, "", openai::ChainKeys({1, 9, 3}));
  ASSERT_TRUE(edited);
  EXPECT_EQ(edited->kind, Match::Kind::kFork);
  EXPECT_EQ(edited->session_id, "s1");
  EXPECT_EQ(edited->shared, 1u);

  // Another tenant never matches s1.
  auto other = m.Acquire(8, "", longer);
  ASSERT_TRUE(other);
  EXPECT_EQ(other->kind, Match::Kind::kNew);

  // The pending tool state comes back with the session.
  auto again = m.Acquire(7, "", openai::ChainKeys({1, 2, 3, 4, 5}));
  ASSERT_TRUE(again);
  EXPECT_EQ(again->kind, Match::Kind::kContinue);
  EXPECT_EQ(again->pending_tools, 1);
  EXPECT_TRUE(again->pending_text);
}

TEST(SessionMatcherTest, NamedSessionsRouteByNameAndRefuseWhenBusy) {
  openai::SessionMatcher m;
  auto chain = openai::ChainKeys({1, 2});
  m.Release(7, "named", "conv", chain, 0, false);
  m.Release(7, "unnamed", "", chain, 0, false);
  auto named = m.Acquire(7, "conv", openai::ChainKeys({1, 2, 3}));
  ASSERT_TRUE(named);
  EXPECT_EQ(named->session_id, "named");
  EXPECT_FALSE(m.Acquire(7, "conv", openai::ChainKeys({1, 2, 3})).has_value());  // busy
  m.Abandon(7, "named");
  auto unknown = m.Acquire(7, "other-name", chain);
  ASSERT_TRUE(unknown);
  EXPECT_EQ(unknown->kind, Match::Kind::kNew);  // a new name never adopts unnamed sessions
  // LRU eviction candidate: the least recently used idle open one.
  EXPECT_EQ(m.EvictionCandidate(7), "unnamed");
  m.MarkClosed(7, "unnamed");
  EXPECT_EQ(m.EvictionCandidate(7), "named");
  m.MarkClosed(7, "named");
  EXPECT_FALSE(m.EvictionCandidate(7).has_value());
  auto reopened = m.Acquire(7, "conv", openai::ChainKeys({1, 2, 3}));
  ASSERT_TRUE(reopened);
  EXPECT_TRUE(reopened->reopen);
}

TEST(SessionMatcherTest, ForgetsADeletedSessionAndItsName) {
  openai::SessionMatcher m;
  m.Release(7, "gone", "conv", openai::ChainKeys({1, 2}), 0, false);
  m.Forget(7, "gone");
  auto next = m.Acquire(7, "conv", openai::ChainKeys({1, 2, 3}));
  ASSERT_TRUE(next);
  EXPECT_EQ(next->kind, Match::Kind::kNew);
  EXPECT_FALSE(m.EvictionCandidate(7).has_value());
}

// Every Status code, written out here independently of the table in openai_api.cc: its
// HTTP status, OpenAI error type, error code and retry headers (docs/openai.md, "Errors").
TEST(OpenAiErrorsTest, EveryStatusCodeMapsToItsHttpStatus) {
  struct Want {
    Status status;
    int http;
    const char* type;
    const char* code;
    const char* retry_after;     // "" when absent
    const char* x_should_retry;  // "" when absent
  };
  const Want wants[] = {
      {Status::InvalidArgument("x"), 400, "invalid_request_error", "invalid_argument", "", ""},
      {Status::ResourceExhausted("x"), 400, "invalid_request_error", "context_length_exceeded", "",
       ""},
      {Status::NotFound("x"), 404, "invalid_request_error", "not_found", "", ""},
      {Status::PermissionDenied("x"), 403, "permission_error", "permission_denied", "", ""},
      {Status::AlreadyExists("x"), 409, "invalid_request_error", "already_exists", "", ""},
      {Status::Busy("x"), 429, "rate_limit_error", "busy", "1", ""},
      {Status::TooManySessions("x"), 429, "rate_limit_error", "too_many_sessions", "1", ""},
      {Status::TooManyRequests("x"), 429, "rate_limit_error", "too_many_requests", "1", ""},
      {Status::QuotaExceeded("x"), 429, "insufficient_quota", "quota_exceeded", "", "false"},
      {Status::Unavailable("x"), 503, "server_error", "unavailable", "1", ""},
      {Status::Cancelled("x"), 499, "invalid_request_error", "cancelled", "", ""},
      {Status::DeadlineExceeded("x"), 504, "server_error", "deadline_exceeded", "", ""},
      {Status::Internal("x"), 500, "server_error", "internal", "", ""},
      {Status::IOError("x"), 500, "server_error", "io_error", "", ""},
      {Status::Corruption("x"), 500, "server_error", "corruption", "", ""},
      {Status::NotSupported("x"), 500, "server_error", "not_supported", "", ""},
  };
  // Every code but kOk is listed once (a new code must be added here and to the table).
  EXPECT_EQ(std::size(wants), static_cast<size_t>(StatusCode::kQuotaExceeded));
  for (const Want& w : wants) {
    SCOPED_TRACE(std::string(StatusCodeName(w.status.code())));
    const HttpResponse r = FromStatus(w.status);
    EXPECT_EQ(r.status, w.http);
    EXPECT_EQ(HttpStatusOf(w.status), w.http);
    const json body = json::parse(r.body);
    EXPECT_EQ(body["error"]["type"], w.type);
    EXPECT_EQ(body["error"]["code"], w.code);
    EXPECT_TRUE(body["error"]["param"].is_null());
    EXPECT_TRUE(body["error"]["message"].is_string());
    auto header = [&](const std::string& name) {
      for (const auto& [k, v] : r.headers) {
        if (k == name) return v;
      }
      return std::string();
    };
    EXPECT_EQ(header("Retry-After"), w.retry_after);
    EXPECT_EQ(header("x-should-retry"), w.x_should_retry);
  }
}

TEST(OpenAiErrorsTest, TransportErrorsGetTheirTypes) {
  EXPECT_EQ(json::parse(OpenAiError(401, "m", "invalid_api_key").body)["error"]["type"],
            "authentication_error");
  const HttpResponse overloaded = OpenAiError(429, "m", "overloaded");
  EXPECT_EQ(json::parse(overloaded.body)["error"]["type"], "rate_limit_error");
  ASSERT_EQ(overloaded.headers.size(), 1u);
  EXPECT_EQ(overloaded.headers[0].first, "Retry-After");
  EXPECT_EQ(json::parse(OpenAiError(413, "m", "request_too_large").body)["error"]["type"],
            "invalid_request_error");
}

TEST(RequestTraceTest, StepsAreTimesSinceThePreviousMarkAndOnlyAtDebug) {
  FakeClock clock;
  const auto level = spdlog::get_level();
  spdlog::set_level(spdlog::level::info);
  EXPECT_EQ(RequestTrace::StartIfDebug(&clock), nullptr);
  TraceMark(nullptr, "ignored");  // tracing off: a no-op
  spdlog::set_level(spdlog::level::debug);
  auto trace = RequestTrace::StartIfDebug(&clock);
  spdlog::set_level(level);
  ASSERT_NE(trace, nullptr);
  clock.AdvanceMicros(5);
  TraceMark(trace, "read");
  clock.AdvanceMicros(7);
  TraceMark(trace, "parse");
  TraceMark(trace, "match");
  EXPECT_EQ(trace->Line(), "read=5us parse=7us match=0us total=12us");
}

}  // namespace
}  // namespace kvkeep
