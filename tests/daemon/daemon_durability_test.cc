// kill -9 in the middle of a conversation: after a restart every acknowledged message is
// still there, and the conversation continues (re-prefilling from the stored tokens).
#include "tests/daemon/daemon_harness.h"

namespace kvkeep::testing {
namespace {

TEST(DaemonDurabilityTest, KillNineLosesNoAcknowledgedMessage) {
  DaemonFixture f;
  ASSERT_TRUE(f.daemon.Start()) << f.daemon.Log();
  std::vector<std::pair<std::string, std::string>> acked;  // role, content
  int64_t tokens_before = 0;
  {
    LineClient c(f.daemon.socket_path());
    ASSERT_TRUE(c.connected());
    c.Ok({{"id", 1}, {"verb", "session.open"}, {"session", "d"}, {"system", "sys"}});
    acked.push_back({"system", "sys"});
    for (int t = 0; t < 3; ++t) {
      std::string user = "question " + std::to_string(t);
      c.Ok({{"id", 2},
            {"verb", "session.append"},
            {"session", "d"},
            {"messages", {{{"role", "user"}, {"content", user}}}}});
      acked.push_back({"user", user});
      json g = c.Ok({{"id", 3},
                     {"verb", "session.generate"},
                     {"session", "d"},
                     {"forced", "answer " + std::to_string(t)}});
      ASSERT_EQ(g["text"], "answer " + std::to_string(t));
      acked.push_back({"assistant", g["text"]});
      c.Ok({{"id", 4}, {"verb", "session.tool_begin"}, {"session", "d"}, {"tool", "grep"}});
      json te = c.Ok({{"id", 5},
                      {"verb", "session.tool_end"},
                      {"session", "d"},
                      {"content", "match " + std::to_string(t)}});
      acked.push_back({"tool", "match " + std::to_string(t)});
      tokens_before = te["num_tokens"];
    }
    c.Ok({{"id", 6}, {"verb", "session.open"}, {"session", "closed-kept"}});
    c.Ok({{"id", 7}, {"verb", "session.close"}, {"session", "closed-kept"}, {"keep", true}});
    // A generation in flight when the daemon dies: not acknowledged, so not promised.
    ASSERT_TRUE(c.Send({{"id", 8},
                        {"verb", "session.generate"},
                        {"session", "d"},
                        {"max_tokens", 500},
                        {"stream", true}}));
    ASSERT_TRUE(c.ReadJson().has_value());  // its first token event: the engine is busy
    int status = f.daemon.Kill(SIGKILL);
    ASSERT_TRUE(WIFSIGNALED(status));
  }
  ASSERT_TRUE(f.daemon.Start()) << f.daemon.Log();  // also replaces the stale socket file
  LineClient c(f.daemon.socket_path());
  json info = c.Ok({{"id", 1}, {"verb", "session.info"}, {"session", "d"}});
  ASSERT_TRUE(info.is_object());
  ASSERT_EQ(info["messages"].size(), acked.size()) << info.dump();
  for (size_t i = 0; i < acked.size(); ++i) {
    EXPECT_EQ(info["messages"][i]["role"], acked[i].first) << i;
    EXPECT_EQ(info["messages"][i]["content"], acked[i].second) << i;
  }
  EXPECT_EQ(info["num_tokens"], tokens_before);
  EXPECT_EQ(info["generating"], false);
  ASSERT_EQ(info["tool_events"].size(), 3u);
  EXPECT_EQ(info["tool_events"][2]["tool"], "grep");
  EXPECT_FALSE(info["tool_events"][2]["duration_ms"].is_null());
  json kept = c.Ok({{"id", 2}, {"verb", "session.info"}, {"session", "closed-kept"}});
  EXPECT_EQ(kept["closed"], true);

  // The conversation continues; its KV was lost with the process, so it is re-prefilled.
  c.Ok({{"id", 3},
        {"verb", "session.append"},
        {"session", "d"},
        {"messages", {{{"role", "user"}, {"content", "and now?"}}}}});
  json g = c.Ok({{"id", 4}, {"verb", "session.generate"}, {"session", "d"}, {"max_tokens", 4}});
  ASSERT_TRUE(g.is_object());
  EXPECT_EQ(g["usage"]["cached_tokens"], 0);
  EXPECT_GT(g["usage"]["prompt_tokens"].get<int64_t>(), tokens_before);
  EXPECT_EQ(g["usage"]["recomputed_tokens"], g["usage"]["prompt_tokens"]);
  EXPECT_EQ(g["num_messages"], acked.size() + 2);
  // And the next turn hits the cache again.
  c.Ok({{"id", 5},
        {"verb", "session.append"},
        {"session", "d"},
        {"messages", {{{"role", "user"}, {"content", "more"}}}}});
  json g2 = c.Ok({{"id", 6}, {"verb", "session.generate"}, {"session", "d"}, {"max_tokens", 4}});
  EXPECT_GE(g2["usage"]["cached_tokens"].get<int64_t>(),
            g["usage"]["prompt_tokens"].get<int64_t>() / 16 * 16);

  // SIGTERM: graceful, exit 0, socket removed.
  int status = f.daemon.Kill(SIGTERM);
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << f.daemon.Log();
  EXPECT_FALSE(DefaultEnv()->FileExists(f.daemon.socket_path()));
}

}  // namespace
}  // namespace kvkeep::testing
