// The OpenAI translation layer without sockets: request flattening and match keys,
// tool-call parsing, mini-swe-agent's bash blocks, the session matcher and ToolKey.
#include <gtest/gtest.h>

#include "daemon/openai_messages.h"
#include "daemon/openai_sessions.h"
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

}  // namespace
}  // namespace kvkeep
