// Verbs beyond the basic turn: fork, close, list, token messages, forced tokens, stats.
#include "tests/daemon/daemon_harness.h"

namespace kvkeep::testing {
namespace {

class DaemonVerbsTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    fixture_ = new DaemonFixture();
    ASSERT_TRUE(fixture_->daemon.Start()) << fixture_->daemon.Log();
  }
  static void TearDownTestSuite() { delete fixture_; }
  const std::string& socket() { return fixture_->daemon.socket_path(); }
  static DaemonFixture* fixture_;
};
DaemonFixture* DaemonVerbsTest::fixture_ = nullptr;

TEST_F(DaemonVerbsTest, ForkCopiesTheConversationAndSharesItsKv) {
  LineClient c(socket());
  c.Ok({{"id", 1}, {"verb", "session.open"}, {"session", "parent"}, {"system", "fork me"}});
  c.Ok({{"id", 2},
        {"verb", "session.append"},
        {"session", "parent"},
        {"messages", {{{"role", "user"}, {"content", std::string(100, 'q')}}}}});
  json g =
      c.Ok({{"id", 3}, {"verb", "session.generate"}, {"session", "parent"}, {"max_tokens", 3}});
  json fork =
      c.Ok({{"id", 4}, {"verb", "session.fork"}, {"session", "parent"}, {"new_session", "child"}});
  EXPECT_EQ(fork["session"], "child");
  EXPECT_EQ(fork["parent"], "parent");
  json pi = c.Ok({{"id", 5}, {"verb", "session.info"}, {"session", "parent"}});
  json ci = c.Ok({{"id", 6}, {"verb", "session.info"}, {"session", "child"}});
  EXPECT_EQ(pi["messages"], ci["messages"]);
  EXPECT_EQ(pi["num_tokens"], ci["num_tokens"]);
  // The branches diverge; the child's first turn reuses the parent's cached blocks.
  c.Ok({{"id", 7},
        {"verb", "session.append"},
        {"session", "child"},
        {"messages", {{{"role", "user"}, {"content", "child only"}}}}});
  json cg =
      c.Ok({{"id", 8}, {"verb", "session.generate"}, {"session", "child"}, {"max_tokens", 2}});
  EXPECT_GE(cg["usage"]["cached_tokens"].get<int64_t>(),
            g["usage"]["prompt_tokens"].get<int64_t>() / 16 * 16);
  EXPECT_EQ(c.Ok({{"id", 9}, {"verb", "session.info"}, {"session", "parent"}})["num_messages"],
            pi["num_messages"]);
  EXPECT_EQ(
      c.ErrorCode(
          {{"id", 10}, {"verb", "session.fork"}, {"session", "parent"}, {"new_session", "child"}}),
      "already_exists");
}

TEST_F(DaemonVerbsTest, InfoToolEventsStayCurrentAfterTheFirstRead) {
  LineClient c(socket());
  c.Ok({{"id", 1}, {"verb", "session.open"}, {"session", "tools"}});
  c.Ok({{"id", 2}, {"verb", "session.tool_begin"}, {"session", "tools"}, {"tool", "ls"}});
  c.Ok({{"id", 3}, {"verb", "session.tool_end"}, {"session", "tools"}, {"content", "a b"}});
  // The first read loads the events; later begins and ends must show up without a reload.
  json first = c.Ok({{"id", 4}, {"verb", "session.info"}, {"session", "tools"}});
  ASSERT_EQ(first["tool_events"].size(), 1u);
  c.Ok({{"id", 5},
        {"verb", "session.tool_begin"},
        {"session", "tools"},
        {"tool", "grep"},
        {"args", "-rn x"}});
  json open_event = c.Ok({{"id", 6}, {"verb", "session.info"}, {"session", "tools"}});
  ASSERT_EQ(open_event["tool_events"].size(), 2u);
  EXPECT_EQ(open_event["tool_events"][1]["tool"], "grep");
  EXPECT_EQ(open_event["tool_events"][1]["args"], "-rn x");
  EXPECT_TRUE(open_event["tool_events"][1]["duration_ms"].is_null());
  c.Ok({{"id", 7}, {"verb", "session.tool_end"}, {"session", "tools"}, {"content", "x:1"}});
  json closed = c.Ok({{"id", 8}, {"verb", "session.info"}, {"session", "tools"}});
  ASSERT_EQ(closed["tool_events"].size(), 2u);
  EXPECT_FALSE(closed["tool_events"][1]["duration_ms"].is_null());
  EXPECT_FALSE(closed["tool_events"][1]["end_at"].is_null());
  EXPECT_EQ(closed["tool_events"][0], first["tool_events"][0]);
}

TEST_F(DaemonVerbsTest, CloseKeepListAndDelete) {
  LineClient c(socket());
  c.Ok({{"id", 1}, {"verb", "session.open"}, {"session", "keep-me"}});
  c.Ok({{"id", 2}, {"verb", "session.open"}, {"session", "drop-me"}});
  EXPECT_EQ(c.ErrorCode({{"id", 3}, {"verb", "session.open"}, {"session", "keep-me"}}),
            "already_exists");
  json generated = c.Ok({{"id", 4}, {"verb", "session.open"}});
  EXPECT_EQ(generated["session"].get<std::string>().rfind("s-", 0), 0u);
  c.Ok({{"id", 5}, {"verb", "session.close"}, {"session", "keep-me"}});
  c.Ok({{"id", 6}, {"verb", "session.close"}, {"session", "drop-me"}, {"keep", false}});
  EXPECT_EQ(c.ErrorCode({{"id", 7}, {"verb", "session.info"}, {"session", "drop-me"}}),
            "not_found");
  json kept = c.Ok({{"id", 8}, {"verb", "session.info"}, {"session", "keep-me"}});
  EXPECT_EQ(kept["closed"], true);
  EXPECT_EQ(c.ErrorCode({{"id", 9},
                         {"verb", "session.append"},
                         {"session", "keep-me"},
                         {"messages", {{{"role", "user"}, {"content", "x"}}}}}),
            "invalid_argument");
  auto ids = [&](bool closed) {
    std::set<std::string> out;
    json r = c.Ok({{"id", 10}, {"verb", "sessions.list"}, {"closed", closed}});
    for (const json& s : r["sessions"]) out.insert(s["session"]);
    return out;
  };
  EXPECT_EQ(ids(false).count("keep-me"), 0u);
  EXPECT_EQ(ids(true).count("keep-me"), 1u);
  EXPECT_EQ(ids(true).count("drop-me"), 0u);
  EXPECT_EQ(ids(false).count(generated["session"]), 1u);
  json reopened = c.Ok({{"id", 11}, {"verb", "session.open"}, {"session", "keep-me"}});
  EXPECT_EQ(reopened["created"], false);
}

TEST_F(DaemonVerbsTest, TokenMessagesAndForcedTokensAreUsedVerbatim) {
  LineClient c(socket());
  c.Ok({{"id", 1}, {"verb", "session.open"}, {"session", "tok"}});
  std::vector<int32_t> user = {104, 105, 33, 10};  // "hi!\n" as raw byte tokens
  json a = c.Ok({{"id", 2},
                 {"verb", "session.append"},
                 {"session", "tok"},
                 {"messages", {{{"role", "user"}, {"tokens", user}, {"content", "hi!"}}}}});
  EXPECT_EQ(a["appended_tokens"], 4);
  EXPECT_EQ(a["num_tokens"], 4);
  std::vector<int32_t> forced = {111, 107};  // "ok"
  json g = c.Ok({{"id", 3},
                 {"verb", "session.generate"},
                 {"session", "tok"},
                 {"forced_tokens", forced},
                 {"stream", true}});
  EXPECT_EQ(g["tokens"].get<std::vector<int32_t>>(), forced);
  EXPECT_EQ(g["text"], "ok");
  EXPECT_EQ(g["finish_reason"], "stop");
  EXPECT_EQ(g["usage"]["generated_tokens"], 2);
  // The prompt was the appended tokens plus the chat template's generation prompt.
  EXPECT_GT(g["usage"]["prompt_tokens"].get<int64_t>(), 4);
  json info = c.Ok({{"id", 4}, {"verb", "session.info"}, {"session", "tok"}});
  EXPECT_EQ(info["messages"][1]["role"], "assistant");
  EXPECT_EQ(info["messages"][1]["content"], "ok");
}

TEST_F(DaemonVerbsTest, StatsInJsonAndPrometheusAgree) {
  LineClient c(socket());
  c.Ok({{"id", 1}, {"verb", "session.open"}, {"session", "st"}});
  c.Ok({{"id", 2},
        {"verb", "session.append"},
        {"session", "st"},
        {"messages", {{{"role", "user"}, {"content", "stats please"}}}}});
  c.Ok({{"id", 3}, {"verb", "session.generate"}, {"session", "st"}, {"max_tokens", 2}});
  json s = c.Ok({{"id", 4}, {"verb", "stats"}});
  EXPECT_GE(s["latency_ms"]["ttft"]["count"].get<int64_t>(), 1);
  EXPECT_GT(s["pools"]["device"]["blocks_total"].get<int64_t>(), 0);
  std::string text = c.Ok({{"id", 5}, {"verb", "stats"}, {"format", "prometheus"}})["text"];
  const std::string key = "\nkvkeep_generated_tokens_total ";
  auto pos = text.find(key);
  ASSERT_NE(pos, std::string::npos) << text;
  EXPECT_EQ(std::stoll(text.substr(pos + key.size())), s["tokens"]["generated"].get<int64_t>());
  EXPECT_NE(text.find("kvkeep_ttft_seconds_bucket{le=\"+Inf\"}"), std::string::npos);
  EXPECT_NE(text.find("# TYPE kvkeep_ttft_seconds histogram"), std::string::npos);
}

}  // namespace
}  // namespace kvkeep::testing
