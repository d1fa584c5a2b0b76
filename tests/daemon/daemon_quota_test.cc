// Issue 11, defect 1: what one uid may store. Message content sent beside a single token,
// tool args and fork copies all count against limits.max_stored_bytes_per_uid; past it
// the verb is refused with resource_exhausted and nothing is stored; deleting sessions
// gives the bytes back; the count survives a restart (rebuilt from the store).
#include <csignal>

#include "tests/daemon/daemon_harness.h"

namespace kvkeep::testing {
namespace {

constexpr int64_t kLimit = 200000;

json AppendBig(const std::string& session, int id, size_t bytes) {
  // One token beside a large content: the tokens do not bound what is stored.
  return {
      {"id", id},
      {"verb", "session.append"},
      {"session", session},
      {"messages", {{{"role", "user"}, {"content", std::string(bytes, 'x')}, {"tokens", {5}}}}}};
}

int64_t StoredBytesOf(LineClient& c) {
  return c.Ok({{"id", 99}, {"verb", "hello"}})["stored_bytes"].get<int64_t>();
}

TEST(DaemonQuotaTest, StoredBytesPerUidAreCappedAndComeBackWhenDeleted) {
  DaemonFixture f({"--max-stored-bytes-per-uid", std::to_string(kLimit)});
  ASSERT_TRUE(f.daemon.Start()) << f.daemon.Log();
  LineClient c(f.daemon.socket_path());
  EXPECT_EQ(c.Ok({{"id", 1}, {"verb", "hello"}})["limits"]["max_stored_bytes_per_uid"], kLimit);
  c.Ok({{"id", 1}, {"verb", "session.open"}, {"session", "q1"}});
  for (int i = 0; i < 3; ++i) c.Ok(AppendBig("q1", 2, 50000));
  const int64_t used = StoredBytesOf(c);
  EXPECT_GE(used, 150000);
  EXPECT_LT(used, 151000);

  json refused = c.Call(AppendBig("q1", 3, 60000)).back();
  ASSERT_TRUE(refused.contains("error")) << refused.dump();
  EXPECT_EQ(refused["error"]["code"], "resource_exhausted");
  EXPECT_NE(refused["error"]["message"].get<std::string>().find("max_stored_bytes_per_uid"),
            std::string::npos);
  EXPECT_EQ(c.Ok({{"id", 4}, {"verb", "session.info"}, {"session", "q1"}})["num_messages"], 3);
  // A fork copies 150 KB: refused, and no session is left behind.
  EXPECT_EQ(
      c.ErrorCode({{"id", 5}, {"verb", "session.fork"}, {"session", "q1"}, {"new_session", "q2"}}),
      "resource_exhausted");
  EXPECT_EQ(c.ErrorCode({{"id", 6}, {"verb", "session.info"}, {"session", "q2"}}), "not_found");
  // Tool args count too.
  EXPECT_EQ(c.ErrorCode({{"id", 7},
                         {"verb", "session.tool_begin"},
                         {"session", "q1"},
                         {"tool", "bash"},
                         {"args", std::string(60000, 'a')}}),
            "resource_exhausted");
  EXPECT_EQ(StoredBytesOf(c), used);  // refusals stored nothing

  // Deleting gives the bytes back.
  c.Ok({{"id", 8}, {"verb", "session.close"}, {"session", "q1"}, {"keep", false}});
  EXPECT_EQ(StoredBytesOf(c), 0);
  c.Ok({{"id", 9}, {"verb", "session.open"}, {"session", "q3"}});
  for (int i = 0; i < 3; ++i) c.Ok(AppendBig("q3", 10, 50000));

  // The count is rebuilt from the store on restart: still full.
  c.Close();
  f.daemon.Kill(SIGTERM);
  ASSERT_TRUE(f.daemon.Start()) << f.daemon.Log();
  LineClient d(f.daemon.socket_path());
  EXPECT_GE(StoredBytesOf(d), 150000);
  EXPECT_EQ(d.Call(AppendBig("q3", 11, 60000)).back()["error"]["code"], "resource_exhausted");
  d.Ok(AppendBig("q3", 12, 1000));  // small ones still fit
}

}  // namespace
}  // namespace kvkeep::testing
