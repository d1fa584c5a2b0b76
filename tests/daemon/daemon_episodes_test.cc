// The real kvkeepd: session.query over a real socket, episodes and routed turns in
// session.info, everything surviving a restart, and a corrupt stored index rebuilt from
// the stored messages (a clear log line, the same answers).
#include "daemon/store.h"
#include "tests/daemon/daemon_harness.h"

namespace kvkeep::testing {
namespace {

json Conversation() {
  const std::vector<std::string>& texts = FourTopicConversation();
  json msgs = json::array();
  for (size_t i = 0; i < texts.size(); ++i) {
    msgs.push_back({{"role", i % 2 ? "assistant" : "user"}, {"content", texts[i]}});
  }
  return msgs;
}

// session.query once every message is indexed (the worker runs after the append's reply).
json QueryWhenIndexed(LineClient& c, const std::string& session, const std::string& text, int k) {
  json r;
  for (int i = 0; i < 600; ++i) {
    auto lines = c.Call(
        {{"id", 50}, {"verb", "session.query"}, {"session", session}, {"text", text}, {"k", k}});
    r = lines.empty() ? json() : lines.back();
    if (r.contains("result") && r["result"]["indexed_messages"] == r["result"]["num_messages"]) {
      return r["result"];
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  ADD_FAILURE() << "never indexed: " << r.dump();
  return json();
}

TEST(DaemonEpisodesTest, QueryRouteRestartAndRebuild) {
  DaemonFixture f({"--embedder", "hashed", "--episode-budget-tokens", "100000"});
  ASSERT_TRUE(f.daemon.Start()) << f.daemon.Log();
  json before;
  {
    LineClient c(f.daemon.socket_path());
    ASSERT_TRUE(c.connected());
    // "e" has its own small budget; "u" has the global one, far away.
    c.Ok({{"id", 1}, {"verb", "session.open"}, {"session", "e"}, {"episode_budget_tokens", 20}});
    c.Ok({{"id", 2}, {"verb", "session.open"}, {"session", "u"}});
    for (const char* s : {"e", "u"}) {
      c.Ok({{"id", 3}, {"verb", "session.append"}, {"session", s}, {"messages", Conversation()}});
      c.Ok({{"id", 4},
            {"verb", "session.append"},
            {"session", s},
            {"messages", {{{"role", "user"}, {"content", "Do I need crampons on the glacier?"}}}}});
      // Routing reads the index: a turn is routed only once its history is indexed.
      QueryWhenIndexed(c, s, "crampons", 1);
      c.Ok({{"id", 5}, {"verb", "session.generate"}, {"session", s}, {"forced", "yes"}});
    }
    // Both sessions indexed first: they share the uid's IDF, which a query vector uses.
    QueryWhenIndexed(c, "u", "crampons", 1);
    before = QueryWhenIndexed(c, "e", "crampons on the glacier ice", 3);
    ASSERT_EQ(before["hits"].size(), 3u) << before.dump();
    EXPECT_EQ(before["hits"][0]["first_message"], 16);  // the user's question itself
    EXPECT_EQ(before["hits"][1]["text"], "Did you need crampons on the ice?");
    EXPECT_EQ(before["hits"][1]["first_message"], 9);

    json info = c.Ok({{"id", 6}, {"verb", "session.info"}, {"session", "e"}});
    json ep = info["episodes"];
    EXPECT_EQ(ep["embedder"], "hashed");
    EXPECT_TRUE(ep["over_budget"].get<bool>()) << ep.dump();
    EXPECT_EQ(ep["budget_tokens"], 20);
    EXPECT_EQ(ep["num_episodes"], 4);
    ASSERT_EQ(ep["turns"].size(), 1u) << ep.dump();
    EXPECT_EQ(ep["turns"][0]["message_seq"], 16);
    EXPECT_FALSE(ep["turns"][0]["episode"].is_null());
    EXPECT_EQ(ep["turns"][0]["served_by"], "episode_cache");  // the engine's cache served it
    json under = c.Ok({{"id", 7}, {"verb", "session.info"}, {"session", "u"}})["episodes"];
    EXPECT_FALSE(under["over_budget"].get<bool>());
    EXPECT_EQ(under["turns"].size(), 0u);
    EXPECT_EQ(under["num_episodes"], 0);

    // Bad requests: clear errors, and the connection goes on.
    EXPECT_EQ(
        c.ErrorCode(
            {{"id", 8}, {"verb", "session.query"}, {"session", "e"}, {"text", "x"}, {"k", 0}}),
        "invalid_argument");
    EXPECT_EQ(c.ErrorCode({{"id", 9},
                           {"verb", "session.query"},
                           {"session", "e"},
                           {"text", "x"},
                           {"k", "three"}}),
              "invalid_argument");
    EXPECT_EQ(c.ErrorCode({{"id", 10}, {"verb", "session.query"}, {"session", "e"}, {"text", "x"}}),
              "invalid_argument");
    EXPECT_EQ(
        c.ErrorCode(
            {{"id", 11}, {"verb", "session.query"}, {"session", "e"}, {"text", ""}, {"k", 2}}),
        "invalid_argument");
    EXPECT_EQ(
        c.ErrorCode(
            {{"id", 12}, {"verb", "session.query"}, {"session", "nope"}, {"text", "x"}, {"k", 2}}),
        "not_found");
    // Closed and kept: its index waits in the store; reopened, it answers as before.
    c.Ok({{"id", 13}, {"verb", "session.close"}, {"session", "e"}, {"keep", true}});
    EXPECT_EQ(
        c.ErrorCode(
            {{"id", 14}, {"verb", "session.query"}, {"session", "e"}, {"text", "x"}, {"k", 2}}),
        "invalid_argument");
    c.Ok({{"id", 15}, {"verb", "session.open"}, {"session", "e"}});
    json again = QueryWhenIndexed(c, "e", "crampons on the glacier ice", 3);
    ASSERT_EQ(again["hits"].size(), 3u);
    for (size_t i = 0; i < 3; ++i) {
      EXPECT_EQ(again["hits"][i]["segment"], before["hits"][i]["segment"]) << i;
      EXPECT_EQ(again["hits"][i]["score"], before["hits"][i]["score"]) << i;
    }
  }
  f.daemon.Signal(SIGTERM);
  ASSERT_EQ(f.daemon.WaitExit(60000), 0) << f.daemon.Log();

  // exact: the stored index itself; else rebuilt, where every vector gets today's IDF (the
  // originals kept the IDF of their append) and the routed turns and the session's own
  // budget, kept only in the lost blob, are gone.
  auto check_restored = [&](const char* what, bool exact) {
    ASSERT_TRUE(f.daemon.Start()) << f.daemon.Log();
    LineClient c(f.daemon.socket_path());
    json after = QueryWhenIndexed(c, "e", "crampons on the glacier ice", 3);
    ASSERT_EQ(after["hits"].size(), 3u) << what;
    for (size_t i = 0; i < 3; ++i) {
      EXPECT_EQ(after["hits"][i]["segment"], before["hits"][i]["segment"]) << what << i;
      EXPECT_NEAR(after["hits"][i]["score"].get<double>(), before["hits"][i]["score"].get<double>(),
                  exact ? 1e-6 : 0.1)
          << what << i;
    }
    json ep = c.Ok({{"id", 6}, {"verb", "session.info"}, {"session", "e"}})["episodes"];
    EXPECT_EQ(ep["indexed_messages"], 18) << what;
    EXPECT_EQ(ep["turns"].size(), exact ? 1u : 0u) << what << ep.dump();
    EXPECT_EQ(ep["num_episodes"], exact ? 4 : 0) << what;
    f.daemon.Signal(SIGTERM);
    ASSERT_EQ(f.daemon.WaitExit(60000), 0) << f.daemon.Log();
  };
  check_restored("restart", true);

  // A damaged blob: the daemon says so and rebuilds the index from the stored messages.
  {
    auto store = Store::Open(f.dir.File("state/kvkeep.db"));
    ASSERT_TRUE(store.ok()) << store.status().ToString();
    auto blob = (*store)->GetEpisodeBlob(static_cast<uint32_t>(::getuid()), "e");
    ASSERT_TRUE(blob.ok() && blob->has_value());
    std::string bad = **blob;
    bad[bad.size() / 2] ^= 0x5a;
    ASSERT_TRUE((*store)->PutEpisodeBlob(static_cast<uint32_t>(::getuid()), "e", bad, 1).ok());
  }
  check_restored("rebuild", false);
  EXPECT_NE(f.daemon.Log().find("stored index unusable"), std::string::npos) << f.daemon.Log();
}

}  // namespace
}  // namespace kvkeep::testing
