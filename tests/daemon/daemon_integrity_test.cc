// The daemon over a store in trouble: concurrent appenders killed with -9 lose no
// acknowledged message (group commit), and a tampered row makes its session damaged
// (reported, refused) while the others are served.
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

}  // namespace
}  // namespace kvkeep::testing
