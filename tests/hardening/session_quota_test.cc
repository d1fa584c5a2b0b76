// Defect 9 of issue 11: closed sessions counted against no limit. A uid may keep at most
// max_stored_sessions_per_uid sessions, open or closed (kept); closing frees an open slot,
// only deleting frees a stored one, forks count, and the count survives a restart.
#include "tests/daemon/daemon_harness.h"

namespace kvkeep::testing {
namespace {

TEST(SessionQuotaTest, ClosedSessionsCountAgainstTheStoredSessionLimit) {
  DaemonFixture f({"--max-sessions-per-uid", "2", "--max-stored-sessions-per-uid", "3"});
  ASSERT_TRUE(f.daemon.Start()) << f.daemon.Log();
  {
    LineClient c(f.daemon.socket_path());
    json hello = c.Ok({{"id", 1}, {"verb", "hello"}});
    EXPECT_EQ(hello["limits"]["max_stored_sessions_per_uid"], 3);
    for (const char* id : {"q-a", "q-b", "q-c"}) {
      c.Ok({{"id", 2}, {"verb", "session.open"}, {"session", id}});
      c.Ok({{"id", 3}, {"verb", "session.close"}, {"session", id}});  // kept
    }
    // Nothing is open, but three are kept: a fourth is refused, and so is a fork.
    json e = c.Terminal({{"id", 4}, {"verb", "session.open"}, {"session", "q-d"}});
    ASSERT_TRUE(e.contains("error")) << e.dump();
    EXPECT_EQ(e["error"]["code"], "too_many_sessions");
    EXPECT_NE(e["error"]["message"].get<std::string>().find("max_stored_sessions_per_uid"),
              std::string::npos);
    c.Ok({{"id", 5}, {"verb", "session.open"}, {"session", "q-a"}});  // reopening is fine
    EXPECT_EQ(
        c.ErrorCode(
            {{"id", 6}, {"verb", "session.fork"}, {"session", "q-a"}, {"new_session", "q-e"}}),
        "too_many_sessions");
    // The refused ones stored nothing.
    EXPECT_EQ(c.ErrorCode({{"id", 7}, {"verb", "session.info"}, {"session", "q-d"}}), "not_found");
    // Deleting one frees a stored slot.
    c.Ok({{"id", 8}, {"verb", "session.close"}, {"session", "q-b"}, {"keep", false}});
    c.Ok({{"id", 9}, {"verb", "session.open"}, {"session", "q-d"}});
  }
  // After a restart the count is rebuilt from the store: still full.
  ASSERT_EQ(f.daemon.Kill(SIGTERM), 0) << f.daemon.Log();
  ASSERT_TRUE(f.daemon.Start()) << f.daemon.Log();
  LineClient c(f.daemon.socket_path());
  c.Ok({{"id", 1}, {"verb", "session.close"}, {"session", "q-a"}});  // one open, three kept
  json again = c.Terminal({{"id", 1}, {"verb", "session.open"}, {"session", "q-f"}});
  ASSERT_TRUE(again.contains("error")) << again.dump();
  EXPECT_NE(again["error"]["message"].get<std::string>().find("max_stored_sessions_per_uid"),
            std::string::npos)
      << again.dump();
  c.Ok({{"id", 2}, {"verb", "session.close"}, {"session", "q-c"}, {"keep", false}});
  c.Ok({{"id", 3}, {"verb", "session.open"}, {"session", "q-f"}});
}

}  // namespace
}  // namespace kvkeep::testing
