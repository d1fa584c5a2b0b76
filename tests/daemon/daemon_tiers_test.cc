// KV tiers through the daemon: with a small device pool, a host tier and a disk tier, a
// session's blocks are demoted to disk by other sessions' turns; after kill -9 and a
// restart, the session's next turn is served from disk (usage.cached_by_tier.disk > 0) and
// answers exactly as a daemon that was never restarted. stats reports every tier.
#include <csignal>

#include "tests/daemon/daemon_harness.h"

namespace kvkeep::testing {
namespace {

const std::vector<std::string> kTierFlags = {"--kv-blocks", "12",         "--host-blocks",
                                             "8",           "--disk-gib", "0.01"};

json Tokens(int n, int salt) {
  json t = json::array();
  for (int k = 0; k < n; ++k) t.push_back(((k + 100 * salt) * 104729) % 250 + 3);
  return t;
}

// Turn 1 of session "a", then four other sessions push a's blocks down to disk.
json FirstTurnAndChurn(LineClient& c) {
  c.Ok({{"id", 1}, {"verb", "session.open"}, {"session", "a"}});
  c.Ok({{"id", 2},
        {"verb", "session.append"},
        {"session", "a"},
        {"messages", {{{"role", "user"}, {"tokens", Tokens(70, 0)}}}}});
  json g = c.Ok({{"id", 3}, {"verb", "session.generate"}, {"session", "a"}, {"max_tokens", 8}});
  for (int i = 1; i <= 4; ++i) {
    const std::string s = "o" + std::to_string(i);
    c.Ok({{"id", 4}, {"verb", "session.open"}, {"session", s}});
    c.Ok({{"id", 5},
          {"verb", "session.append"},
          {"session", s},
          {"messages", {{{"role", "user"}, {"tokens", Tokens(70, i)}}}}});
    c.Ok({{"id", 6}, {"verb", "session.generate"}, {"session", s}, {"max_tokens", 4}});
  }
  return g;
}

json SecondTurn(LineClient& c) {
  c.Ok({{"id", 7},
        {"verb", "session.append"},
        {"session", "a"},
        {"messages", {{{"role", "user"}, {"tokens", Tokens(5, 9)}}}}});
  return c.Ok({{"id", 8}, {"verb", "session.generate"}, {"session", "a"}, {"max_tokens", 8}});
}

TEST(DaemonTiersTest, KillNineThenNextTurnIsServedFromDiskWithTheSameAnswer) {
  // Reference: the same conversation without a restart.
  json want;
  {
    DaemonFixture ref(kTierFlags);
    ASSERT_TRUE(ref.daemon.Start()) << ref.daemon.Log();
    LineClient c(ref.daemon.socket_path());
    FirstTurnAndChurn(c);
    want = SecondTurn(c);
  }
  DaemonFixture f(kTierFlags);
  ASSERT_TRUE(f.daemon.Start()) << f.daemon.Log();
  {
    LineClient c(f.daemon.socket_path());
    FirstTurnAndChurn(c);
    json stats = c.Ok({{"id", 9}, {"verb", "stats"}});
    EXPECT_EQ(stats["pools"]["host"]["blocks_total"], 8);
    EXPECT_GT(stats["pools"]["disk"]["blocks_total"].get<int64_t>(), 0);
    EXPECT_GT(stats["tiers"]["disk"]["blocks"].get<int64_t>(), 0) << stats.dump();
    EXPECT_GT(stats["tiers"]["demoted_blocks"].get<int64_t>(), 0);
    const json prom = c.Ok({{"id", 10}, {"verb", "stats"}, {"format", "prometheus"}});
    EXPECT_NE(prom["text"].get<std::string>().find("kvkeep_disk_blocks_used"), std::string::npos);
    // The disk worker writes in the background: give it a moment before the kill.
    std::this_thread::sleep_for(std::chrono::milliseconds(300));
    ASSERT_TRUE(WIFSIGNALED(f.daemon.Kill(SIGKILL)));
  }
  ASSERT_TRUE(f.daemon.Start()) << f.daemon.Log();
  LineClient c(f.daemon.socket_path());
  json got = SecondTurn(c);
  EXPECT_GT(got["usage"]["cached_by_tier"]["disk"].get<int64_t>(), 0) << got.dump();
  EXPECT_EQ(got["usage"]["cached_tokens"].get<int64_t>(),
            got["usage"]["cached_by_tier"]["device"].get<int64_t>() +
                got["usage"]["cached_by_tier"]["host"].get<int64_t>() +
                got["usage"]["cached_by_tier"]["disk"].get<int64_t>());
  EXPECT_EQ(got["tokens"], want["tokens"]);
  EXPECT_EQ(got["text"], want["text"]);
}

}  // namespace
}  // namespace kvkeep::testing
