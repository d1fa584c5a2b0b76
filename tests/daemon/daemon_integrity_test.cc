// The daemon over a store in trouble: concurrent appenders killed with -9 lose no
// acknowledged message (group commit), and a tampered row makes its session damaged
// (reported, refused) while the others are served; a SQLite write that fails under a
// running daemon (--testing-store-fault) is a clear error, loses nothing acknowledged and
// lets writes succeed once the fault clears.
#include <sqlite3.h>

#include <atomic>
#include <mutex>

#include "tests/daemon/daemon_harness.h"

namespace kvkeep::testing {
namespace {

TEST(DaemonIntegrityTest, ConcurrentAppendersKilledWithNineLoseNoAcknowledgedMessage) {
  DaemonFixture f;
  ASSERT_TRUE(f.daemon.Start()) << f.daemon.Log();
  constexpr int kClients = 8;
  std::vector<int> acked(kClients, 0);
  std::atomic<bool> stop{false};
  std::vector<std::thread> threads;
  for (int t = 0; t < kClients; ++t) {
    threads.emplace_back([&, t] {
      LineClient c(f.daemon.socket_path());
      const std::string id = "c" + std::to_string(t);
      json open = c.Terminal({{"id", 0}, {"verb", "session.open"}, {"session", id}});
      if (!open.contains("result")) return;
      for (int i = 0; !stop.load(); ++i) {
        json r = c.Terminal(
            {{"id", i + 1},
             {"verb", "session.append"},
             {"session", id},
             {"messages", {{{"role", "user"}, {"content", id + "/" + std::to_string(i)}}}}});
        if (!r.contains("result")) return;  // the daemon died under us
        acked[t] = i + 1;
      }
    });
  }
  std::this_thread::sleep_for(std::chrono::milliseconds(1500));
  int status = f.daemon.Kill(SIGKILL);
  stop = true;
  for (auto& th : threads) th.join();
  ASSERT_TRUE(WIFSIGNALED(status));
  ASSERT_TRUE(f.daemon.Start()) << f.daemon.Log();
  LineClient c(f.daemon.socket_path());
  int total = 0;
  for (int t = 0; t < kClients; ++t) {
    const std::string id = "c" + std::to_string(t);
    json info = c.Ok({{"id", 1}, {"verb", "session.info"}, {"session", id}});
    ASSERT_TRUE(info.is_object()) << id;
    // Every acknowledged append is there, in order; one more may have committed unacked.
    ASSERT_GE(info["messages"].size(), static_cast<size_t>(acked[t])) << id;
    ASSERT_LE(info["messages"].size(), static_cast<size_t>(acked[t] + 1)) << id;
    for (int i = 0; i < acked[t]; ++i) {
      EXPECT_EQ(info["messages"][i]["content"], id + "/" + std::to_string(i));
    }
    total += acked[t];
  }
  EXPECT_GT(total, kClients);  // the clients really ran
  EXPECT_EQ(f.daemon.Log().find("damaged"), std::string::npos) << f.daemon.Log();
}

TEST(DaemonIntegrityTest, ATamperedRowIsReportedAndItsSessionRefusedNotServed) {
  DaemonFixture f;
  ASSERT_TRUE(f.daemon.Start()) << f.daemon.Log();
  {
    LineClient c(f.daemon.socket_path());
    for (const char* id : {"hurt", "fine"}) {
      c.Ok({{"id", 1}, {"verb", "session.open"}, {"session", id}, {"system", "sys"}});
      c.Ok({{"id", 2},
            {"verb", "session.append"},
            {"session", id},
            {"messages", {{{"role", "user"}, {"content", "hello"}}}}});
    }
  }
  ASSERT_EQ(f.daemon.Kill(SIGTERM), 0);
  sqlite3* db = nullptr;
  ASSERT_EQ(sqlite3_open(f.dir.File("state/kvkeep.db").c_str(), &db), SQLITE_OK);
  ASSERT_EQ(sqlite3_exec(db,
                         "UPDATE messages SET content = 'hullo' WHERE session_id = 'hurt' AND "
                         "seq = 1",
                         nullptr, nullptr, nullptr),
            SQLITE_OK);
  sqlite3_close(db);

  ASSERT_TRUE(f.daemon.Start()) << f.daemon.Log();
  EXPECT_NE(f.daemon.Log().find("session 'hurt' of uid"), std::string::npos) << f.daemon.Log();
  LineClient c(f.daemon.socket_path());
  json info = c.Ok({{"id", 1}, {"verb", "session.info"}, {"session", "hurt"}});
  EXPECT_NE(info["damaged"].get<std::string>().find("checksum"), std::string::npos) << info.dump();
  EXPECT_EQ(c.ErrorCode({{"id", 2},
                         {"verb", "session.append"},
                         {"session", "hurt"},
                         {"messages", {{{"role", "user"}, {"content", "more"}}}}}),
            "unavailable");
  EXPECT_EQ(c.ErrorCode({{"id", 3}, {"verb", "session.generate"}, {"session", "hurt"}}),
            "unavailable");
  json fine = c.Ok({{"id", 4}, {"verb", "session.info"}, {"session", "fine"}});
  EXPECT_FALSE(fine.contains("damaged"));
  c.Ok({{"id", 5}, {"verb", "session.generate"}, {"session", "fine"}, {"max_tokens", 2}});
}

struct StoreFaultCase {
  const char* code;     // --testing-store-fault's CODE
  const char* message;  // sqlite3_errstr of it, which the client's error names
};

class DaemonStoreFaultTest : public ::testing::TestWithParam<StoreFaultCase> {};

json AppendText(int id, const std::string& session, const std::string& text) {
  return {{"id", id},
          {"verb", "session.append"},
          {"session", session},
          {"messages", {{{"role", "user"}, {"content", text}}}}};
}

// Issue 11, item 6, through a real socket: the daemon's 3rd, 4th and 5th store writes fail.
// Writes (no episode index, no tool events, so nothing else writes): 1 open f, 2 append
// a0, 3 append a1 (fails), 4 open g (fails), 5 append a1 again (fails), 6 append a1.
TEST_P(DaemonStoreFaultTest, AFailedWriteIsAClearErrorLosesNothingAndWritesResume) {
  const StoreFaultCase& fault = GetParam();
  DaemonFixture f(
      {"--episode-index", "off", "--testing-store-fault", std::string("3:") + fault.code + ":3"});
  ASSERT_TRUE(f.daemon.Start()) << f.daemon.Log();
  LineClient c(f.daemon.socket_path());
  c.Ok({{"id", 1}, {"verb", "session.open"}, {"session", "f"}});
  c.Ok(AppendText(2, "f", "a0"));
  const auto expect_fault = [&](const json& request) {
    json t = c.Terminal(request);
    ASSERT_TRUE(t.contains("error")) << request.dump() << " -> " << t.dump();
    EXPECT_EQ(t["error"]["code"], "unavailable") << t.dump();
    const std::string msg = t["error"]["message"];
    EXPECT_NE(msg.find(fault.message), std::string::npos) << msg;
    EXPECT_NE(msg.find("nothing of it was stored"), std::string::npos) << msg;
  };
  expect_fault(AppendText(3, "f", "a1"));
  expect_fault({{"id", 4}, {"verb", "session.open"}, {"session", "g"}});
  EXPECT_EQ(c.ErrorCode({{"id", 5}, {"verb", "session.info"}, {"session", "g"}}), "not_found");
  expect_fault(AppendText(6, "f", "a1"));
  ASSERT_TRUE(f.daemon.Alive()) << f.daemon.Log();
  // The fault cleared: the same write succeeds, and so does a generation's reply.
  c.Ok(AppendText(7, "f", "a1"));
  json gen = c.Ok({{"id", 8}, {"verb", "session.generate"}, {"session", "f"}, {"max_tokens", 2}});
  ASSERT_TRUE(gen.is_object());
  json info = c.Ok({{"id", 9}, {"verb", "session.info"}, {"session", "f"}});
  ASSERT_EQ(info["num_messages"], 3) << info.dump();
  EXPECT_EQ(info["messages"][0]["content"], "a0");
  EXPECT_EQ(info["messages"][1]["content"], "a1");
  EXPECT_EQ(info["messages"][2]["role"], "assistant");
  const std::string reply = gen["text"];
  EXPECT_NE(f.daemon.Log().find("TESTING ONLY"), std::string::npos);

  // Everything acknowledged survives kill -9, and a daemon without the flag serves it.
  c.Close();
  ASSERT_EQ(WTERMSIG(f.daemon.Kill(SIGKILL)), SIGKILL);
  DaemonProcess again(f.dir.File("s.sock"), f.dir.File("state"), {"--episode-index", "off"});
  ASSERT_TRUE(again.Start()) << again.Log();
  LineClient d(again.socket_path());
  json after = d.Ok({{"id", 10}, {"verb", "session.info"}, {"session", "f"}});
  ASSERT_EQ(after["num_messages"], 3) << after.dump();
  EXPECT_EQ(after["messages"][1]["content"], "a1");
  EXPECT_EQ(after["messages"][2]["content"], reply);
  EXPECT_FALSE(after.contains("damaged")) << after.dump();
  EXPECT_EQ(d.ErrorCode({{"id", 11}, {"verb", "session.info"}, {"session", "g"}}), "not_found");
  d.Ok(AppendText(12, "f", "a2"));
}

INSTANTIATE_TEST_SUITE_P(Faults, DaemonStoreFaultTest,
                         ::testing::Values(StoreFaultCase{"full", "database or disk is full"},
                                           StoreFaultCase{"busy", "database is locked"},
                                           StoreFaultCase{"ioerr", "disk I/O error"}),
                         [](const auto& info) { return std::string(info.param.code); });

TEST(DaemonStoreFaultTest, AMalformedFaultSpecIsRefusedAtStart) {
  DaemonFixture f({"--testing-store-fault", "0:full"});
  EXPECT_FALSE(f.daemon.Start());
  EXPECT_NE(f.daemon.Log().find("--testing-store-fault must be"), std::string::npos)
      << f.daemon.Log();
}

}  // namespace
}  // namespace kvkeep::testing
