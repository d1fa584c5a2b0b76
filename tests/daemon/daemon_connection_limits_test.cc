// Connection and output limits: connections per uid and in total are refused with one
// clear error line (and their slots come back), a slow reader is dropped once the daemon's
// unsent output passes max_output_bytes_total, and a half-closed stream still ends with
// its terminal line.
#include <thread>

#include "tests/daemon/daemon_harness.h"

namespace kvkeep::testing {
namespace {

// Connects and checks the daemon admitted the client (it answers hello).
bool Admitted(LineClient& c, const std::string& socket) {
  if (!c.Connect(socket)) return false;
  json t = c.Terminal({{"id", "h"}, {"verb", "hello"}});
  return t.contains("result");
}

TEST(DaemonConnectionLimitsTest, PerUidCapRefusesWithAClearErrorAndTheSlotComesBack) {
  DaemonFixture f({"--max-connections-per-uid", "4"});
  ASSERT_TRUE(f.daemon.Start()) << f.daemon.Log();
  std::vector<std::unique_ptr<LineClient>> clients;
  // The harness's start-up probe may still hold a slot for a moment.
  std::this_thread::sleep_for(std::chrono::milliseconds(200));
  for (int i = 0; i < 4; ++i) {
    clients.push_back(std::make_unique<LineClient>());
    ASSERT_TRUE(Admitted(*clients.back(), f.daemon.socket_path())) << i;
  }
  LineClient refused(f.daemon.socket_path());
  ASSERT_TRUE(refused.connected());
  auto line = refused.ReadJson(10000);
  ASSERT_TRUE(line.has_value());
  EXPECT_EQ((*line)["error"]["code"], "resource_exhausted") << line->dump();
  EXPECT_NE((*line)["error"]["message"].get<std::string>().find("max_connections_per_uid"),
            std::string::npos);
  EXPECT_FALSE(refused.ReadLine(5000).has_value());  // then closed
  EXPECT_NE(f.daemon.Log().find("refused a connection"), std::string::npos) << f.daemon.Log();

  clients.pop_back();  // one leaves; its slot is free again
  bool readmitted = false;
  for (int i = 0; i < 50 && !readmitted; ++i) {
    LineClient again;
    readmitted = Admitted(again, f.daemon.socket_path());
    if (!readmitted) std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  EXPECT_TRUE(readmitted);
}

TEST(DaemonConnectionLimitsTest, TotalCapRefusesEveryUidBeyondIt) {
  DaemonFixture f({"--max-connections", "3"});
  ASSERT_TRUE(f.daemon.Start()) << f.daemon.Log();
  std::this_thread::sleep_for(std::chrono::milliseconds(200));
  std::vector<std::unique_ptr<LineClient>> clients;
  for (int i = 0; i < 3; ++i) {
    clients.push_back(std::make_unique<LineClient>());
    ASSERT_TRUE(Admitted(*clients.back(), f.daemon.socket_path())) << i;
  }
  LineClient refused(f.daemon.socket_path());
  auto line = refused.ReadJson(10000);
  ASSERT_TRUE(line.has_value());
  EXPECT_NE((*line)["error"]["message"].get<std::string>().find("limits.max_connections"),
            std::string::npos)
      << line->dump();
}

TEST(DaemonConnectionLimitsTest, SlowReadersAreDroppedAtTheDaemonWideOutputBudget) {
  // Each slow reader stays far under its own 64 MiB cap; together they pass 8 MiB.
  DaemonFixture f({"--max-output-bytes-total", std::to_string(8 << 20)});
  ASSERT_TRUE(f.daemon.Start()) << f.daemon.Log();
  LineClient owner(f.daemon.socket_path());
  std::string big(512 << 10, 'x');
  owner.Ok({{"id", 1}, {"verb", "session.open"}, {"session", "big"}});
  for (int i = 0; i < 4; ++i) {
    // Content beside one token: it costs no context (defect 1 is not this test's business).
    json r =
        owner.Terminal({{"id", 2},
                        {"verb", "session.append"},
                        {"session", "big"},
                        {"messages", {{{"role", "tool"}, {"content", big}, {"tokens", {5}}}}}});
    ASSERT_TRUE(r.contains("result")) << r["error"].dump();
  }
  // Three clients ask for the 2 MiB session 8 times each and never read.
  std::vector<std::unique_ptr<LineClient>> slow;
  for (int s = 0; s < 3; ++s) {
    slow.push_back(std::make_unique<LineClient>(f.daemon.socket_path()));
    for (int i = 0; i < 8; ++i) {
      ASSERT_TRUE(slow.back()->Send({{"id", i}, {"verb", "session.info"}, {"session", "big"}}));
    }
  }
  bool dropped = false;
  for (int i = 0; i < 200 && !dropped; ++i) {
    dropped = f.daemon.Log().find("limits.max_output_bytes_total") != std::string::npos;
    if (!dropped) std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  EXPECT_TRUE(dropped) << f.daemon.Log();
  // A client that reads is still served.
  json info =
      owner.Ok({{"id", 3}, {"verb", "session.info"}, {"session", "big"}, {"messages", false}});
  EXPECT_EQ(info["num_messages"], 4);
  json stats = owner.Ok({{"id", 4}, {"verb", "stats"}});
  EXPECT_GE(stats.dump().find("slow_readers_dropped"), 0u);
}

TEST(DaemonConnectionLimitsTest, AHalfClosedStreamEndsWithItsTerminalLine) {
  DaemonFixture f;
  ASSERT_TRUE(f.daemon.Start()) << f.daemon.Log();
  for (int round = 0; round < 5; ++round) {
    LineClient c(f.daemon.socket_path());
    const std::string id = "h" + std::to_string(round);
    c.Ok({{"id", 1}, {"verb", "session.open"}, {"session", id}, {"system", "sys"}});
    c.Ok({{"id", 2},
          {"verb", "session.append"},
          {"session", id},
          {"messages", {{{"role", "user"}, {"content", "go on"}}}}});
    ASSERT_TRUE(c.Send({{"id", 3},
                        {"verb", "session.generate"},
                        {"session", id},
                        {"max_tokens", 2000},
                        {"stream", true}}));
    ASSERT_TRUE(c.ReadJson().has_value());  // the stream has started
    c.ShutdownWrite();
    json last;
    while (auto line = c.ReadJson(30000)) last = *line;
    ASSERT_TRUE(last.is_object()) << "round " << round;
    EXPECT_EQ(last["id"], 3) << last.dump();
    EXPECT_TRUE(last.contains("result") || last.contains("error"))
        << "round " << round << ": the stream ended on " << last.dump();
  }
}

}  // namespace
}  // namespace kvkeep::testing
