// Lifecycle: the default model, socket mode, SIGHUP reload, SIGTERM with a generation in
// flight or large lines on the bulk pool, and refusing to start over a live daemon's
// socket.
#include <sys/stat.h>

#include <atomic>
#include <memory>
#include <thread>
#include <vector>

#include "engine/embedder_factory.h"
#include "policy/step_log.h"
#include "tests/daemon/daemon_harness.h"

namespace kvkeep::testing {
namespace {

TEST(DaemonLifecycleTest, NoModelFlagMakesTheTinyModelInTheStateDir) {
  TempDir dir;
  // Started by hand: without --model.
  pid_t pid = fork();
  ASSERT_GE(pid, 0);
  const std::string socket = dir.File("s.sock");
  const std::string state = dir.File("state");
  if (pid == 0) {
    std::string bin = BinaryDir() + "/kvkeepd";
    // No default model installed there: the daemon falls back to the tiny model.
    setenv("KVKEEP_MODELS_DIR", dir.File("no-models").c_str(), 1);
    execl(bin.c_str(), bin.c_str(), "--socket", socket.c_str(), "--state-dir", state.c_str(),
          "--log-level", "warn", "--num-kv-blocks", "256", static_cast<char*>(nullptr));
    _exit(127);
  }
  LineClient c;
  for (int i = 0; i < 600 && !c.Connect(socket); ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  ASSERT_TRUE(c.connected());
  json hello = c.Ok({{"id", 1}, {"verb", "hello"}});
  EXPECT_EQ(hello["model"]["id"], "tiny");
  EXPECT_TRUE(DefaultEnv()->FileExists(state + "/models/tiny/config.json"));
  EXPECT_TRUE(DefaultEnv()->FileExists(state + "/kvkeep.db"));
  struct stat st;
  ASSERT_EQ(stat(socket.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0660u);  // the default mode
  kill(pid, SIGTERM);
  int status = 0;
  waitpid(pid, &status, 0);
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0);
}

TEST(DaemonLifecycleTest, SighupReloadsTheLogLevel) {
  TempDir dir;
  const std::string config = dir.File("kvkeepd.json");
  ASSERT_TRUE(DefaultEnv()->WriteFileAtomic(config, R"({"log_level": "warn"})").ok());
  DaemonProcess d(dir.File("s.sock"), dir.File("state"), {"--config", config});
  ASSERT_TRUE(d.Start()) << d.Log();
  auto reload_and_wait_for = [&](const std::string& contents, const std::string& needle) {
    ASSERT_TRUE(DefaultEnv()->WriteFileAtomic(config, contents).ok());
    d.Signal(SIGHUP);
    for (int i = 0; i < 100 && d.Log().find(needle) == std::string::npos; ++i) {
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    EXPECT_NE(d.Log().find(needle), std::string::npos) << d.Log();
  };
  reload_and_wait_for(R"({"log_level": "info"})", "log level warn -> info");
  // A broken file is refused and the daemon keeps running with what it has.
  reload_and_wait_for(R"({"log_level": )", "configuration not reloaded");
  reload_and_wait_for(R"({"log_level": "info", "policy": "none"})", "needs a restart");
  EXPECT_TRUE(d.Alive());
  LineClient c(d.socket_path());
  EXPECT_EQ(c.Ok({{"id", 1}, {"verb", "hello"}})["policy"], "ttl");
}

TEST(DaemonLifecycleTest, SigtermCancelsOrFinishesInFlightWorkAndExitsCleanly) {
  DaemonFixture f;
  ASSERT_TRUE(f.daemon.Start()) << f.daemon.Log();
  LineClient c(f.daemon.socket_path());
  c.Ok({{"id", 1}, {"verb", "session.open"}, {"session", "t"}});
  c.Ok({{"id", 2},
        {"verb", "session.append"},
        {"session", "t"},
        {"messages", {{{"role", "user"}, {"content", "long answer please"}}}}});
  ASSERT_TRUE(c.Send({{"id", 3},
                      {"verb", "session.generate"},
                      {"session", "t"},
                      {"max_tokens", 4000},
                      {"stream", true}}));
  ASSERT_EQ((*c.ReadJson())["event"], "token");
  std::thread killer([&] { f.daemon.Kill(SIGTERM); });
  // The stream ends with a terminal line before the connection closes: its result when
  // it finished within the grace period, else `cancelled`.
  std::optional<json> last;
  while (auto line = c.ReadJson(20000)) last = line;
  killer.join();
  ASSERT_TRUE(last.has_value());
  EXPECT_EQ((*last)["id"], 3);
  if (last->contains("error")) {
    EXPECT_EQ((*last)["error"]["code"], "cancelled") << last->dump();
  } else {
    EXPECT_TRUE(last->contains("result")) << last->dump();
  }
  EXPECT_FALSE(DefaultEnv()->FileExists(f.daemon.socket_path()));
}

// --step-log: the served steps (not the start-up) are written when the daemon stops, and
// they account for the turn's work: its prompt prefilled, its tokens decoded.
TEST(DaemonLifecycleTest, StepLogIsWrittenAtShutdown) {
  TempDir dir;
  const std::string path = dir.File("steps.csv");
  DaemonFixture f({"--step-log", path});
  ASSERT_TRUE(f.daemon.Start()) << f.daemon.Log();
  LineClient c(f.daemon.socket_path());
  c.Ok({{"id", 1}, {"verb", "session.open"}, {"session", "t"}});
  c.Ok({{"id", 2},
        {"verb", "session.append"},
        {"session", "t"},
        {"messages", {{{"role", "user"}, {"content", "count to ten"}}}}});
  json gen = c.Ok({{"id", 3}, {"verb", "session.generate"}, {"session", "t"}, {"max_tokens", 6}});
  const int64_t prompt = gen["usage"]["prompt_tokens"],
                completion = gen["usage"]["generated_tokens"];
  EXPECT_FALSE(DefaultEnv()->FileExists(path));  // written at shutdown
  const int status = f.daemon.Kill(SIGTERM);
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0);
  auto steps = ReadStepLog(DefaultEnv(), path);
  ASSERT_TRUE(steps.ok()) << steps.status().ToString() << "\n" << f.daemon.Log();
  int64_t prefilled = 0, decoded = 0;
  for (const StepTiming& t : *steps) {
    EXPECT_GT(t.step_s, 0);
    prefilled += t.prefill_tokens;
    decoded += t.decode_sequences;
  }
  EXPECT_EQ(prefilled, prompt);        // the first token comes from the prefill
  EXPECT_EQ(decoded, completion - 1);  // each later one from a decode step
}

// The shutdown use-after-free (issue 11, reported by hard5): a large line is handled on
// the bulk pool, which Run() joins after the I/O threads have stopped; the job then posts
// its connection's next step (BulkDone) to the stopped io_context. That handler owns the
// connection, so the connection outlived the Server and, destroyed with the io_context,
// gave its admission ticket and output count back to the Server's freed ConnectionLimits.
// Shut down while two 7 MiB appends are being handled, in rounds: the daemon must exit 0
// with no sanitizer report (under ASan, `make asan` and CI, the old order failed here with
// heap-use-after-free in ~Connection, ConnectionLimits::UpdateOutput). The episode index is off: at
// shutdown it finishes embedding what it holds, which for 7 MiB messages takes minutes.
TEST(DaemonLifecycleTest, SigtermWhileLargeLinesAreHandledExitsCleanly) {
  for (int round = 0; round < 3; ++round) {
    DaemonFixture f({"--episode-index", "off"});
    ASSERT_TRUE(f.daemon.Start()) << f.daemon.Log();
    std::vector<std::unique_ptr<LineClient>> clients;
    std::vector<std::string> lines;
    for (int i = 0; i < 2; ++i) {
      clients.push_back(std::make_unique<LineClient>(f.daemon.socket_path()));
      const std::string session = "big-" + std::to_string(i);
      clients.back()->Ok({{"id", 1}, {"verb", "session.open"}, {"session", session}});
      json append = {
          {"id", 2},
          {"verb", "session.append"},
          {"session", session},
          {"messages",
           {{{"role", "user"}, {"content", std::string(7 << 20, 'x')}, {"tokens", {5}}}}}};
      lines.push_back(append.dump() + "\n");
    }
    std::atomic<int> sent{0};
    std::vector<std::thread> senders;
    for (int i = 0; i < 2; ++i) {
      senders.emplace_back([&, i] {
        clients[i]->SendRaw(lines[i]);  // may fail once the daemon has closed: fine
        sent.fetch_add(1);
      });
    }
    while (sent.load() < 2) std::this_thread::yield();
    std::this_thread::sleep_for(std::chrono::milliseconds(5 * round));
    f.daemon.Signal(SIGTERM);
    const int status = f.daemon.WaitExit(120000);  // -1 (then SIGKILL): it did not exit
    for (std::thread& t : senders) t.join();
    const std::string log = f.daemon.Log();
    EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0)
        << "round " << round << ", wait status " << status << "\n"
        << log.substr(0, 6000);
    EXPECT_EQ(log.find("AddressSanitizer"), std::string::npos) << log.substr(0, 6000);
    EXPECT_EQ(log.find("runtime error"), std::string::npos) << log.substr(0, 6000);
  }
}

// SIGTERM while the episode index embeds a large append with MiniLM (minutes of segments on
// the CPU): the job in hand stops between chunks, so the daemon exits within seconds, and
// the acknowledged message is there after a restart. Before, shutdown waited for the whole
// job: over 13 minutes for a 7 MiB append at load 10.
TEST(DaemonLifecycleTest, SigtermWhileTheIndexEmbedsALargeAppendExitsPromptly) {
  if (!DefaultEnv()->FileExists(DefaultSentenceModelDir(DefaultEnv()) + "/model.safetensors")) {
    GTEST_SKIP() << "no sentence model (MiniLM): run scripts/setup";
  }
  DaemonFixture f({"--embedder", "bert"});
  ASSERT_TRUE(f.daemon.Start()) << f.daemon.Log();
  LineClient c(f.daemon.socket_path());
  c.Ok({{"id", 1}, {"verb", "session.open"}, {"session", "big"}});
  std::string prose;
  while (prose.size() < (2u << 20)) prose += "The build failed again after the last change. ";
  c.Ok({{"id", 2},
        {"verb", "session.append"},
        {"session", "big"},
        {"messages", {{{"role", "tool"}, {"content", prose}, {"tokens", {5}}}}}});
  std::this_thread::sleep_for(std::chrono::milliseconds(500));  // the worker is embedding
  const auto asked = std::chrono::steady_clock::now();
  f.daemon.Signal(SIGTERM);
  const int status = f.daemon.WaitExit(60000);  // -1 (then SIGKILL): it did not exit
  const auto waited_ms = std::chrono::duration_cast<std::chrono::milliseconds>(
                             std::chrono::steady_clock::now() - asked)
                             .count();
  std::printf("exited %lld ms after SIGTERM\n", static_cast<long long>(waited_ms));
  ASSERT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0)
      << "wait status " << status << " after " << waited_ms << " ms\n"
      << f.daemon.Log().substr(0, 4000);
  ASSERT_TRUE(f.daemon.Start()) << f.daemon.Log();
  LineClient again(f.daemon.socket_path());
  const json info = again.Ok({{"id", 3}, {"verb", "session.info"}, {"session", "big"}});
  ASSERT_EQ(info["messages"].size(), 1u) << info.dump().substr(0, 400);
  EXPECT_EQ(info["messages"][0]["content"].get<std::string>().size(), prose.size());
}

TEST(DaemonLifecycleTest, RefusesToStealALiveDaemonsSocket) {
  DaemonFixture f;
  ASSERT_TRUE(f.daemon.Start()) << f.daemon.Log();
  DaemonProcess second(f.daemon.socket_path(), f.dir.File("state2"));
  second.Start();  // the socket answers (the first daemon), so Start returns at once
  int status = second.WaitExit(30000);
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 1) << status;
  EXPECT_NE(second.Log().find("another daemon is listening"), std::string::npos) << second.Log();
  LineClient c(f.daemon.socket_path());
  EXPECT_EQ(c.Ok({{"id", 1}, {"verb", "hello"}})["server"], "kvkeepd");
}

}  // namespace
}  // namespace kvkeep::testing
