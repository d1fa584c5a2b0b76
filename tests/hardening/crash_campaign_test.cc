// The crash campaign (issue 11, item 7): kvkeepd (a real process, a real SQLite WAL file)
// is killed with SIGKILL at a random moment while several clients concurrently replay a
// real agent trajectory (tests/fixtures/replay/mini-swe-agent-v2.traj.json: system, user,
// then assistant turns and tool results). After each kill:
//   - the database passes PRAGMA quick_check (opened as the crash left it, WAL included);
//   - the daemon restarts on the same state directory;
//   - every session ever opened is there, every acknowledged message is in it in order
//     (a message whose reply never arrived may be there or not), and every acknowledged
//     tool event is there;
//   - every session of the killed round continues: an append and a real generation.
// Rounds: KVKEEP_CRASH_ROUNDS (default 3 under `make test`; tests/hardening/crash_campaign.sh
// runs more). Kill times are drawn from the test seed (KVKEEP_TEST_SEED replays a run).
#include <sqlite3.h>

#include <atomic>
#include <fstream>
#include <map>
#include <mutex>
#include <random>

#include "tests/daemon/daemon_harness.h"

namespace kvkeep::testing {
namespace {

struct Message {
  std::string role;
  std::string content;
};

// The trajectory's messages with their content flattened to text.
std::vector<Message> LoadTrajectory() {
  std::ifstream in(SourceDir() + "/tests/fixtures/replay/mini-swe-agent-v2.traj.json");
  const json traj = json::parse(in);
  std::vector<Message> out;
  for (const json& m : traj["messages"]) {
    std::string text;
    if (m["content"].is_string()) {
      text = m["content"];
    } else if (m["content"].is_array()) {
      for (const json& part : m["content"]) {
        if (part.contains("text")) text += part["text"].get<std::string>();
      }
    }
    out.push_back({m["role"], text});
  }
  return out;
}

// What one session's client saw acknowledged.
struct SessionLog {
  std::vector<Message> acked;  // messages whose verb got a result
  size_t acked_tool_events = 0;
};

// Replays the trajectory into `session` until the daemon goes away. Every message is
// recorded in *log only after its verb's result arrived.
void ReplayUntilKilled(const std::string& socket, const std::string& session,
                       const std::vector<Message>& traj, SessionLog* log) {
  LineClient c(socket);
  if (!c.connected()) return;
  int64_t id = 0;
  const auto ok = [&](const json& request) {
    json t = c.Terminal(request);
    return t.is_object() && t.contains("result") ? t["result"] : json();
  };
  if (ok({{"id", ++id},
          {"verb", "session.open"},
          {"session", session},
          {"system", traj[0].content}})
          .is_null()) {
    return;
  }
  log->acked.push_back({"system", traj[0].content});
  for (int loop = 0;; ++loop) {
    for (size_t i = 1; i < traj.size(); ++i) {
      const Message& m = traj[i];
      const std::string text = m.content + (loop > 0 ? " #" + std::to_string(loop) : "");
      if (m.role == "user") {
        if (ok({{"id", ++id},
                {"verb", "session.append"},
                {"session", session},
                {"messages", {{{"role", "user"}, {"content", text}}}}})
                .is_null()) {
          return;
        }
        log->acked.push_back({"user", text});
      } else if (m.role == "assistant") {
        json g = ok(
            {{"id", ++id}, {"verb", "session.generate"}, {"session", session}, {"forced", text}});
        if (g.is_null()) return;
        log->acked.push_back({"assistant", g["text"]});
      } else if (m.role == "tool") {
        if (ok({{"id", ++id},
                {"verb", "session.tool_begin"},
                {"session", session},
                {"tool", "bash"},
                {"args", "step " + std::to_string(i)}})
                .is_null()) {
          return;
        }
        if (ok({{"id", ++id},
                {"verb", "session.tool_end"},
                {"session", session},
                {"content", text}})
                .is_null()) {
          return;
        }
        log->acked.push_back({"tool", text});
        ++log->acked_tool_events;
      }
    }
  }
}

std::string QuickCheck(const std::string& db_path) {
  sqlite3* db = nullptr;
  std::string result = "cannot open";
  if (sqlite3_open_v2(db_path.c_str(), &db, SQLITE_OPEN_READWRITE, nullptr) == SQLITE_OK) {
    sqlite3_stmt* stmt = nullptr;
    if (sqlite3_prepare_v2(db, "PRAGMA quick_check", -1, &stmt, nullptr) == SQLITE_OK &&
        sqlite3_step(stmt) == SQLITE_ROW) {
      result = reinterpret_cast<const char*>(sqlite3_column_text(stmt, 0));
    }
    sqlite3_finalize(stmt);
  }
  sqlite3_close(db);
  return result;
}

int Rounds() {
  const char* env = std::getenv("KVKEEP_CRASH_ROUNDS");
  return env != nullptr && std::atoi(env) > 0 ? std::atoi(env) : 3;
}

TEST(CrashCampaignTest, KillNineDuringAReplayLosesNothingAcknowledged) {
  const std::vector<Message> traj = LoadTrajectory();
  ASSERT_GE(traj.size(), 4u);
  ASSERT_EQ(traj[0].role, "system");
  constexpr int kClients = 4;
  const int rounds = Rounds();
  std::mt19937_64 rng(TestSeed());
  DaemonFixture f;
  std::map<std::string, SessionLog> logs;  // every session of every round
  int64_t checked = 0;  // acknowledged messages compared after restarts, all rounds
  for (int round = 0; round < rounds; ++round) {
    SCOPED_TRACE("round " + std::to_string(round));
    ASSERT_TRUE(f.daemon.Start()) << f.daemon.Log();
    std::vector<std::string> names;
    std::vector<std::thread> clients;
    for (int k = 0; k < kClients; ++k) {
      names.push_back("r" + std::to_string(round) + "-c" + std::to_string(k));
      logs[names.back()];  // std::map: the reference stays valid while others are added
    }
    for (int k = 0; k < kClients; ++k) {
      clients.emplace_back(ReplayUntilKilled, f.daemon.socket_path(), names[k], std::cref(traj),
                           &logs[names[k]]);
    }
    const int kill_after_ms = 200 + static_cast<int>(rng() % 1800);
    std::this_thread::sleep_for(std::chrono::milliseconds(kill_after_ms));
    const int status = f.daemon.Kill(SIGKILL);
    ASSERT_TRUE(WIFSIGNALED(status)) << "the daemon had already exited: " << f.daemon.Log();
    for (auto& t : clients) t.join();

    const std::string check = QuickCheck(f.dir.File("state") + "/kvkeep.db");
    ASSERT_EQ(check, "ok") << "after a kill at " << kill_after_ms << " ms";
    ASSERT_TRUE(f.daemon.Start()) << f.daemon.Log();
    LineClient c(f.daemon.socket_path());
    ASSERT_TRUE(c.connected());
    for (auto& [name, log] : logs) {
      SCOPED_TRACE("session " + name);
      if (log.acked.empty()) continue;  // its open was never acknowledged
      const json info = c.Ok({{"id", 1}, {"verb", "session.info"}, {"session", name}});
      ASSERT_TRUE(info.is_object());
      const json& stored = info["messages"];
      checked += static_cast<int64_t>(log.acked.size());
      ASSERT_GE(stored.size(), log.acked.size()) << "an acknowledged message was lost";
      // At most the one in-flight verb's message beyond what was acknowledged.
      EXPECT_LE(stored.size(), log.acked.size() + 1);
      for (size_t i = 0; i < log.acked.size(); ++i) {
        ASSERT_EQ(stored[i]["role"], log.acked[i].role) << "message " << i;
        ASSERT_EQ(stored[i]["content"], log.acked[i].content) << "message " << i;
      }
      EXPECT_GE(info["tool_events"].size(), log.acked_tool_events);
      EXPECT_EQ(info["generating"], false);
      // What is stored is now the history the next round must keep.
      log.acked.clear();
      for (const json& m : stored) log.acked.push_back({m["role"], m["content"]});
      log.acked_tool_events = info["tool_events"].size();
    }
    // The killed round's sessions continue: an append and a real generation.
    for (const std::string& name : names) {
      if (logs[name].acked.empty()) continue;
      c.Ok({{"id", 2},
            {"verb", "session.append"},
            {"session", name},
            {"messages", {{{"role", "user"}, {"content", "still there?"}}}}});
      const json g =
          c.Ok({{"id", 3}, {"verb", "session.generate"}, {"session", name}, {"max_tokens", 2}});
      ASSERT_TRUE(g.is_object()) << "session " << name << " cannot continue";
      logs[name].acked.push_back({"user", "still there?"});
      logs[name].acked.push_back({"assistant", g["text"]});
    }
    const int term = f.daemon.Kill(SIGTERM);
    EXPECT_TRUE(WIFEXITED(term) && WEXITSTATUS(term) == 0) << f.daemon.Log();
  }
  // The campaign must have had something to lose.
  EXPECT_GT(checked, int64_t{rounds} * kClients * 2);
  std::printf("crash campaign: %d kills, %zu sessions, %lld acknowledged messages checked\n",
              rounds, logs.size(), static_cast<long long>(checked));
}

}  // namespace
}  // namespace kvkeep::testing
