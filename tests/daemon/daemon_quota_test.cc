// Issue 11, defect 1: what one uid may store. Message content sent beside a single token,
// tool args and fork copies all count against limits.max_stored_bytes_per_uid; past it
// the verb is refused with resource_exhausted and nothing is stored; deleting sessions
// gives the bytes back; the count survives a restart (rebuilt from the store). Also the
// rest of defects 1 and 9: messages per append, and generations in flight per uid across
// all of its connections.
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

// Defect 9: an append of 200,000 empty messages was accepted: with empty `tokens` they fit
// any context, and each became a row.
TEST(DaemonQuotaTest, MessagesPerAppendAreCapped) {
  DaemonFixture f({"--max-messages-per-append", "100"});
  ASSERT_TRUE(f.daemon.Start()) << f.daemon.Log();
  LineClient c(f.daemon.socket_path());
  EXPECT_EQ(c.Ok({{"id", 1}, {"verb", "hello"}})["limits"]["max_messages_per_append"], 100);
  c.Ok({{"id", 1}, {"verb", "session.open"}, {"session", "many"}});
  const auto append = [](int n) {
    json msgs = json::array();
    for (int i = 0; i < n; ++i) {
      msgs.push_back({{"role", "user"}, {"content", ""}, {"tokens", json::array()}});
    }
    return json{{"id", 2}, {"verb", "session.append"}, {"session", "many"}, {"messages", msgs}};
  };
  const auto info = [&] {
    return c.Ok({{"id", 3}, {"verb", "session.info"}, {"session", "many"}, {"messages", false}});
  };
  for (const int n : {200000, 101}) {
    json refused = c.Terminal(append(n));
    ASSERT_TRUE(refused.contains("error")) << n << ": " << refused.dump().substr(0, 300);
    EXPECT_EQ(refused["error"]["code"], "invalid_argument");
    EXPECT_NE(refused["error"]["message"].get<std::string>().find("max_messages_per_append"),
              std::string::npos)
        << refused.dump().substr(0, 300);
    EXPECT_EQ(info()["num_messages"], 0);
  }
  c.Ok(append(100));  // at the cap: accepted
  EXPECT_EQ(info()["num_messages"], 100);
}

TEST(DaemonQuotaTest, TheDefaultMessagesPerAppendIsReportedAndValidated) {
  DaemonFixture f;
  ASSERT_TRUE(f.daemon.Start()) << f.daemon.Log();
  LineClient c(f.daemon.socket_path());
  EXPECT_EQ(c.Ok({{"id", 1}, {"verb", "hello"}})["limits"]["max_messages_per_append"], 4096);
  DaemonFixture bad({"--max-messages-per-append", "0"});
  EXPECT_FALSE(bad.daemon.Start());
}

// Defect 1: max_inflight_per_connection alone let one uid keep 64 generations in flight on
// each of its (up to 1,024) connections.
TEST(DaemonQuotaTest, InflightRequestsPerUidAreCappedAcrossConnections) {
  DaemonFixture f({"--max-inflight-per-uid", "2"});
  ASSERT_TRUE(f.daemon.Start()) << f.daemon.Log();
  std::vector<std::unique_ptr<LineClient>> conns;
  for (int i = 0; i < 3; ++i) {
    conns.push_back(std::make_unique<LineClient>(f.daemon.socket_path()));
    const std::string sid = "inflight-" + std::to_string(i);
    conns[i]->Ok({{"id", 1}, {"verb", "session.open"}, {"session", sid}});
    conns[i]->Ok({{"id", 2},
                  {"verb", "session.append"},
                  {"session", sid},
                  {"messages", {{{"role", "user"}, {"content", "count to a thousand"}}}}});
  }
  EXPECT_EQ(conns[0]->Ok({{"id", 3}, {"verb", "hello"}})["limits"]["max_inflight_per_uid"], 2);
  // Two long streamed generations on two connections, each seen producing a token.
  for (int i = 0; i < 2; ++i) {
    ASSERT_TRUE(conns[i]->Send({{"id", 10},
                                {"verb", "session.generate"},
                                {"session", "inflight-" + std::to_string(i)},
                                {"max_tokens", 1000},
                                {"stream", true}}));
    auto first = conns[i]->ReadJson();
    ASSERT_TRUE(first.has_value());
    ASSERT_EQ((*first)["event"], "token") << first->dump();
  }
  // A third connection of the same uid is refused, naming the limit.
  json refused = conns[2]->Terminal(
      {{"id", 11}, {"verb", "session.generate"}, {"session", "inflight-2"}, {"max_tokens", 2}});
  ASSERT_TRUE(refused.contains("error")) << refused.dump();
  EXPECT_EQ(refused["error"]["code"], "too_many_requests");
  EXPECT_NE(refused["error"]["message"].get<std::string>().find("limits.max_inflight_per_uid"),
            std::string::npos)
      << refused.dump();
  // The first was still in flight when the third was refused: cancelling it ends it now.
  std::vector<json> gen_lines;
  EXPECT_TRUE(conns[0]
                  ->Call({{"id", 12}, {"verb", "cancel"}, {"target", 10}}, &gen_lines)
                  .back()
                  .contains("result"));
  json end;
  for (const json& line : gen_lines) {
    if (line.contains("error") || line.contains("result")) end = line;
  }
  while (end.is_null()) {
    auto line = conns[0]->ReadJson();
    ASSERT_TRUE(line.has_value()) << "generation 10 never ended";
    if (line->contains("error") || line->contains("result")) end = *line;
  }
  EXPECT_EQ(end["error"]["code"], "cancelled") << end.dump();
  // Its slot came back: the third connection's generate now runs.
  json ok = conns[2]->Terminal(
      {{"id", 13}, {"verb", "session.generate"}, {"session", "inflight-2"}, {"max_tokens", 2}});
  EXPECT_TRUE(ok.contains("result")) << ok.dump();
}

}  // namespace
}  // namespace kvkeep::testing
