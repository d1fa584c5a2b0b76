// Each configurable limit, with its documented error, against a real kvkeepd.
#include <thread>

#include "tests/daemon/daemon_harness.h"

namespace kvkeep::testing {
namespace {

class DaemonLimitsTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    fixture_ = new DaemonFixture({"--max-line-bytes", "1024", "--max-json-depth", "8",
                                  "--max-sessions-per-uid", "3", "--max-inflight", "2",
                                  "--max-output-buffer-bytes", "65536", "--max-tokens", "1000"});
    ASSERT_TRUE(fixture_->daemon.Start()) << fixture_->daemon.Log();
  }
  static void TearDownTestSuite() { delete fixture_; }
  void TearDown() override { ASSERT_TRUE(fixture_->daemon.Alive()) << fixture_->daemon.Log(); }
  const std::string& socket() { return fixture_->daemon.socket_path(); }
  static DaemonFixture* fixture_;
};
DaemonFixture* DaemonLimitsTest::fixture_ = nullptr;

TEST_F(DaemonLimitsTest, HelloReportsTheLimitsInForce) {
  LineClient c(socket());
  json limits = c.Ok({{"id", 1}, {"verb", "hello"}})["limits"];
  EXPECT_EQ(limits["max_line_bytes"], 1024);
  EXPECT_EQ(limits["max_json_depth"], 8);
  EXPECT_EQ(limits["max_sessions_per_uid"], 3);
  EXPECT_EQ(limits["max_inflight_per_connection"], 2);
  EXPECT_EQ(limits["max_output_buffer_bytes"], 65536);
  EXPECT_EQ(limits["max_tokens"], 1000);
}

TEST_F(DaemonLimitsTest, LineLength) {
  LineClient c(socket());
  std::string ok_line = json{{"id", 1}, {"verb", "hello"}, {"pad", std::string(900, 'x')}}.dump();
  ASSERT_LE(ok_line.size(), 1024u);
  ASSERT_TRUE(c.SendRaw(ok_line + "\n"));
  EXPECT_TRUE(c.ReadJson()->contains("result"));
  std::string long_line =
      json{{"id", 2}, {"verb", "hello"}, {"pad", std::string(5000, 'x')}}.dump();
  ASSERT_TRUE(c.SendRaw(long_line + "\n" + json{{"id", 3}, {"verb", "hello"}}.dump() + "\n"));
  json e = *c.ReadJson();
  EXPECT_EQ(e["error"]["code"], "line_too_long");
  json next = *c.ReadJson();
  EXPECT_EQ(next["id"], 3);
  EXPECT_TRUE(next.contains("result"));
}

TEST_F(DaemonLimitsTest, JsonDepth) {
  LineClient c(socket());
  auto nested = [](int arrays) {
    return "{\"id\": 1, \"verb\": \"hello\", \"x\": " + std::string(arrays, '[') +
           std::string(arrays, ']') + "}\n";
  };
  ASSERT_TRUE(c.SendRaw(nested(7)));  // depth 8: allowed
  EXPECT_TRUE(c.ReadJson()->contains("result"));
  ASSERT_TRUE(c.SendRaw(nested(8)));  // depth 9
  EXPECT_EQ((*c.ReadJson())["error"]["code"], "too_deep");
}

TEST_F(DaemonLimitsTest, OpenSessionsPerUid) {
  LineClient c(socket());
  for (const char* id : {"lim-a", "lim-b", "lim-c"}) {
    c.Ok({{"id", 1}, {"verb", "session.open"}, {"session", id}});
  }
  EXPECT_EQ(c.ErrorCode({{"id", 2}, {"verb", "session.open"}, {"session", "lim-d"}}),
            "too_many_sessions");
  EXPECT_EQ(
      c.ErrorCode(
          {{"id", 3}, {"verb", "session.fork"}, {"session", "lim-a"}, {"new_session", "lim-e"}}),
      "too_many_sessions");
  // Closing (kept) frees a slot; reopening the kept one needs a slot again.
  c.Ok({{"id", 4}, {"verb", "session.close"}, {"session", "lim-c"}});
  c.Ok({{"id", 5}, {"verb", "session.open"}, {"session", "lim-d"}});
  EXPECT_EQ(c.ErrorCode({{"id", 6}, {"verb", "session.open"}, {"session", "lim-c"}}),
            "too_many_sessions");
  c.Ok({{"id", 7}, {"verb", "session.close"}, {"session", "lim-d"}, {"keep", false}});
  json reopened = c.Ok({{"id", 8}, {"verb", "session.open"}, {"session", "lim-c"}});
  EXPECT_EQ(reopened["created"], false);
  // Leave the slots free for the other tests.
  for (const char* id : {"lim-a", "lim-b", "lim-c"}) {
    c.Ok({{"id", 9}, {"verb", "session.close"}, {"session", id}, {"keep", false}});
  }
}

TEST_F(DaemonLimitsTest, InflightPerConnectionAndMaxTokens) {
  LineClient c(socket());
  for (const char* id : {"inf-a", "inf-b", "inf-c"}) {
    c.Ok({{"id", 1}, {"verb", "session.open"}, {"session", id}});
    c.Ok({{"id", 2},
          {"verb", "session.append"},
          {"session", id},
          {"messages", {{{"role", "user"}, {"content", "hi"}}}}});
  }
  EXPECT_EQ(
      c.ErrorCode(
          {{"id", 3}, {"verb", "session.generate"}, {"session", "inf-a"}, {"max_tokens", 1001}}),
      "invalid_argument");
  // Three generations pipelined in one write: the third exceeds the in-flight limit.
  std::string batch;
  for (int i = 0; i < 3; ++i) {
    batch += json{{"id", 10 + i},
                  {"verb", "session.generate"},
                  {"session", std::string("inf-") + char('a' + i)},
                  {"max_tokens", 200}}
                 .dump() +
             "\n";
  }
  ASSERT_TRUE(c.SendRaw(batch));
  std::map<int, json> terminal;
  while (terminal.size() < 3) {
    auto line = c.ReadJson();
    ASSERT_TRUE(line.has_value());
    terminal[(*line)["id"].get<int>()] = *line;
  }
  EXPECT_TRUE(terminal[10].contains("result")) << terminal[10].dump();
  EXPECT_TRUE(terminal[11].contains("result")) << terminal[11].dump();
  EXPECT_EQ(terminal[12]["error"]["code"], "too_many_requests");
  for (const char* id : {"inf-a", "inf-b", "inf-c"}) {
    c.Ok({{"id", 4}, {"verb", "session.close"}, {"session", id}, {"keep", false}});
  }
}

TEST_F(DaemonLimitsTest, SlowReaderIsDisconnectedAndItsStreamCancelled) {
  LineClient setup(socket());
  setup.Ok({{"id", 1}, {"verb", "session.open"}, {"session", "slow"}});
  setup.Ok({{"id", 2},
            {"verb", "session.append"},
            {"session", "slow"},
            {"messages", {{{"role", "user"}, {"content", "hi"}}}}});
  LineClient slow(socket());
  std::string burst = json{{"id", 0},
                           {"verb", "session.generate"},
                           {"session", "slow"},
                           {"max_tokens", 1000},
                           {"stream", true}}
                          .dump() +
                      "\n";
  const int kRequests = 4000;  // ~2 KiB replies each: far beyond socket buffers + 64 KiB
  for (int i = 1; i <= kRequests; ++i) {
    burst += json{{"id", i}, {"verb", "stats"}}.dump() + "\n";
  }
  std::thread writer([&] { slow.SendRaw(burst); });      // may fail once the daemon drops us
  std::this_thread::sleep_for(std::chrono::seconds(2));  // never read meanwhile
  // Now drain: the daemon must have closed the connection well before all replies.
  int lines = 0;
  while (slow.ReadLine(20000)) ++lines;
  writer.join();
  EXPECT_LT(lines, kRequests);
  // The stream was cancelled: the session is free again, nothing was appended.
  json info;
  for (int i = 0; i < 200; ++i) {
    info = setup.Ok({{"id", 3}, {"verb", "session.info"}, {"session", "slow"}});
    if (info["generating"] == false) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(25));
  }
  EXPECT_EQ(info["generating"], false);
  EXPECT_EQ(info["num_messages"], 1);
  json stats = setup.Ok({{"id", 4}, {"verb", "stats"}});
  EXPECT_GE(stats["server"]["slow_readers_dropped"].get<int>(), 1);
  setup.Ok({{"id", 5}, {"verb", "session.close"}, {"session", "slow"}, {"keep", false}});
}

}  // namespace
}  // namespace kvkeep::testing
