// The KV policy through the real daemon: session.retain pins, releases and is bounded by
// a per-uid quota on the blocks the engine really keeps for the pinned sessions (a second
// uid has its own quota and cannot see the first's sessions);
// SIGHUP switches the policy and keeps existing pins; tool_end durations are learned
// under their tool key, reported in stats and session.info, and survive a restart (a
// real SQLite file).
#include <grp.h>
#include <sys/stat.h>

#include "tests/daemon/daemon_harness.h"

namespace kvkeep::testing {
namespace {

json Tokens(int n, int salt) {
  json t = json::array();
  for (int k = 0; k < n; ++k) t.push_back(((k + 100 * salt) * 104729) % 250 + 3);
  return t;
}

// Opens session `s` with n user tokens.
void OpenWith(LineClient& c, const std::string& s, int n, int salt) {
  c.Ok({{"id", 1}, {"verb", "session.open"}, {"session", s}});
  c.Ok({{"id", 2},
        {"verb", "session.append"},
        {"session", s},
        {"messages", {{{"role", "user"}, {"tokens", Tokens(n, salt)}}}}});
}

json Retain(const std::string& s, double ttl_s) {
  return {{"id", 3}, {"verb", "session.retain"}, {"session", s}, {"ttl_s", ttl_s}};
}

// Runs as uid 65534: its own quota, and root's sessions are not_found.
std::string OtherUidRetains(const std::string& socket) {
  LineClient c;
  if (!c.Connect(socket)) return "could not connect as uid 65534";
  std::string failures;
  json theirs = c.Terminal(Retain("a", 10));
  if (theirs["error"]["code"] != "not_found") failures += "root's session: " + theirs.dump();
  c.Terminal({{"id", 1}, {"verb", "session.open"}, {"session", "mine"}});
  c.Terminal({{"id", 2},
              {"verb", "session.append"},
              {"session", "mine"},
              {"messages", {{{"role", "user"}, {"tokens", Tokens(70, 7)}}}}});
  c.Terminal({{"id", 4}, {"verb", "session.generate"}, {"session", "mine"}, {"max_tokens", 2}});
  json own = c.Terminal(Retain("mine", 10));
  if (!own.contains("result") || own["result"]["uid_pinned_blocks"].get<int64_t>() < 1 ||
      own["result"]["uid_pinned_blocks"].get<int64_t>() > 10) {
    failures += "own retain under its own quota: " + own.dump();
  }
  return failures;
}

// Stats after the daemon has applied a turn's end (the engine publishes them per step).
json WaitForStats(LineClient& c, const std::function<bool(const json&)>& done) {
  json stats;
  for (int i = 0; i < 200; ++i) {
    stats = c.Ok({{"id", 9}, {"verb", "stats"}});
    if (done(stats)) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  return stats;
}

// One turn of session s; returns the change in the device blocks the engine keeps for
// retained sessions once it has ended (stats, counted from the engine's tables).
int64_t TurnAndRetainedGrowth(LineClient& c, const std::string& s) {
  const int64_t before =
      c.Ok({{"id", 9}, {"verb", "stats"}})["sessions"]["retained_blocks"].get<int64_t>();
  const int64_t turns_before =
      c.Ok({{"id", 9}, {"verb", "stats"}})["sessions"]["retained"].get<int64_t>();
  c.Ok({{"id", 4}, {"verb", "session.generate"}, {"session", s}, {"max_tokens", 2}});
  json st = WaitForStats(c, [&](const json& j) {
    return j["sessions"]["retained"].get<int64_t>() >= turns_before &&
           j["sessions"]["retained_blocks"].get<int64_t>() != before;
  });
  return st["sessions"]["retained_blocks"].get<int64_t>() - before;
}

TEST(DaemonPolicyTest, RetainPinsReleasesAndEnforcesAPerUidQuota) {
  DaemonFixture f({"--policy", "ttl", "--retain-quota-blocks", "10", "--socket-mode", "0666"});
  ASSERT_TRUE(f.daemon.Start()) << f.daemon.Log();
  LineClient c(f.daemon.socket_path());
  // a, b, c: one turn each, so the engine keeps real blocks for them.
  int64_t blocks[3];
  for (int i = 0; i < 3; ++i) {
    const std::string s(1, char('a' + i));
    OpenWith(c, s, 40, i);
    blocks[i] = TurnAndRetainedGrowth(c, s);
  }
  ASSERT_LE(blocks[0] + blocks[1], 10) << blocks[0] << " " << blocks[1];
  ASSERT_GT(blocks[0] + blocks[1] + blocks[2], 10) << blocks[2];
  ASSERT_LE(blocks[0] + blocks[2], 10);
  json a = c.Ok(Retain("a", 60));
  EXPECT_EQ(a["pinned_blocks"], blocks[0]);
  EXPECT_EQ(a["uid_pinned_blocks"], blocks[0]);
  EXPECT_EQ(a["quota_blocks"], 10);
  EXPECT_EQ(c.Ok(Retain("b", 60))["uid_pinned_blocks"], blocks[0] + blocks[1]);
  json over = c.Terminal(Retain("c", 60));
  ASSERT_TRUE(over.contains("error")) << over.dump();
  EXPECT_EQ(over["error"]["code"], "resource_exhausted");
  EXPECT_NE(over["error"]["message"].get<std::string>().find("retain_quota_blocks"),
            std::string::npos)
      << over.dump();
  // The same hint on session.generate is refused the same way, before any generation.
  json gen = c.Terminal({{"id", 4},
                         {"verb", "session.generate"},
                         {"session", "c"},
                         {"max_tokens", 2},
                         {"retain", {{"ttl_s", 30}}}});
  EXPECT_EQ(gen["error"]["code"], "resource_exhausted") << gen.dump();
  // Renewing a pin does not count it twice; ttl_s 0 releases it.
  EXPECT_EQ(c.Ok(Retain("a", 120))["uid_pinned_blocks"], blocks[0] + blocks[1]);
  EXPECT_EQ(c.Ok(Retain("b", 0))["uid_pinned_blocks"], blocks[0]);
  EXPECT_EQ(c.Ok(Retain("c", 60))["uid_pinned_blocks"], blocks[0] + blocks[2]);
  // Bad hints.
  EXPECT_EQ(c.ErrorCode(Retain("a", -1)), "invalid_argument");
  EXPECT_EQ(c.ErrorCode(Retain("a", 1e9)), "invalid_argument");
  EXPECT_EQ(c.ErrorCode({{"id", 5}, {"verb", "session.retain"}, {"session", "a"}}),
            "invalid_argument");
  EXPECT_EQ(c.ErrorCode(Retain("missing", 5)), "not_found");
  // A hinted session's turn leaves its KV pinned on the device.
  json g = c.Ok({{"id", 6},
                 {"verb", "session.generate"},
                 {"session", "c"},
                 {"max_tokens", 2},
                 {"retain", {{"ttl_s", 60}, {"priority", 2}}}});
  ASSERT_TRUE(g.is_object());
  json stats = c.Ok({{"id", 7}, {"verb", "stats"}});
  EXPECT_GT(stats["pools"]["device"]["blocks_pinned"].get<int64_t>(), 0) << stats.dump();
  json info = c.Ok({{"id", 8}, {"verb", "session.info"}, {"session", "c"}, {"messages", false}});
  EXPECT_EQ(info["retention"]["retain"]["priority"], 2) << info.dump();
  EXPECT_GT(info["retention"]["retain"]["expires_in_s"].get<double>(), 50);

  if (geteuid() != 0) {
    GTEST_SKIP() << "needs root to run a client as a second uid (per-uid quota, not_found)";
  }
  ASSERT_EQ(chmod(f.dir.path().c_str(), 0755), 0);
  int fds[2];
  ASSERT_EQ(pipe(fds), 0);
  pid_t child = fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    close(fds[0]);
    std::string failures = "dropping privileges failed";
    if (setgroups(0, nullptr) == 0 && setresgid(65534, 65534, 65534) == 0 &&
        setresuid(65534, 65534, 65534) == 0) {
      failures = OtherUidRetains(f.daemon.socket_path());
    }
    (void)!write(fds[1], failures.data(), failures.size());
    _exit(0);
  }
  close(fds[1]);
  std::string failures;
  char buf[4096];
  ssize_t n;
  while ((n = read(fds[0], buf, sizeof(buf))) > 0) failures.append(buf, n);
  close(fds[0]);
  int status = 0;
  waitpid(child, &status, 0);
  EXPECT_EQ(failures, "");
}

// The quota counts what each pin really holds: a session with no turn yet holds nothing, a
// session that grew after its turn holds only its last turn's blocks until its next turn
// ends, then the grown count; released and expired pins count nothing.
TEST(DaemonPolicyTest, RetainQuotaCountsTheBlocksTheEngineHolds) {
  DaemonFixture f({"--policy", "ttl", "--retain-quota-blocks", "10"});
  ASSERT_TRUE(f.daemon.Start()) << f.daemon.Log();
  LineClient c(f.daemon.socket_path());
  // "big": 400 tokens appended, no turn: the engine keeps no block for it (its size
  // alone, 25+ blocks, would pass the quota).
  OpenWith(c, "big", 400, 9);
  json big = c.Ok(Retain("big", 60));
  EXPECT_EQ(big["pinned_blocks"], 0) << big.dump();
  OpenWith(c, "a", 40, 0);
  OpenWith(c, "b", 40, 1);
  const int64_t a_blocks = TurnAndRetainedGrowth(c, "a");
  const int64_t b_blocks = TurnAndRetainedGrowth(c, "b");
  ASSERT_GT(a_blocks, 0);
  ASSERT_LE(a_blocks + b_blocks, 10);
  // "a" grows by 60 appended tokens: not counted before its turn has run.
  EXPECT_EQ(c.Ok(Retain("a", 60))["uid_pinned_blocks"], a_blocks);
  c.Ok({{"id", 2},
        {"verb", "session.append"},
        {"session", "a"},
        {"messages", {{{"role", "user"}, {"tokens", Tokens(60, 5)}}}}});
  EXPECT_EQ(c.Ok(Retain("big", 60))["uid_pinned_blocks"], a_blocks);
  const int64_t a_grown = a_blocks + TurnAndRetainedGrowth(c, "a");
  ASSERT_GT(a_grown, a_blocks);
  // Counted after it: the uid's pins now hold a_grown real blocks.
  EXPECT_EQ(c.Ok(Retain("big", 60))["uid_pinned_blocks"], a_grown);
  // b fits exactly when a_grown + b_blocks <= 10, and the error says so otherwise.
  json b = c.Terminal(Retain("b", 60));
  if (a_grown + b_blocks <= 10) {
    ASSERT_TRUE(b.contains("result")) << b.dump();
    EXPECT_EQ(b["result"]["uid_pinned_blocks"], a_grown + b_blocks);
    ASSERT_EQ(c.Ok(Retain("b", 0))["uid_pinned_blocks"], a_grown);
  } else {
    EXPECT_EQ(b["error"]["code"], "resource_exhausted") << b.dump();
  }
  // An expired pin counts nothing.
  c.Ok(Retain("a", 0.3));
  std::this_thread::sleep_for(std::chrono::milliseconds(500));
  EXPECT_EQ(c.Ok(Retain("big", 60))["uid_pinned_blocks"], 0);
  EXPECT_EQ(c.Ok(Retain("b", 60))["uid_pinned_blocks"], b_blocks);
}

TEST(DaemonPolicyTest, SighupSwitchesThePolicyAndKeepsPins) {
  TempDir dir;
  const std::string config = dir.File("kvkeepd.json");
  ASSERT_TRUE(DefaultEnv()->WriteFileAtomic(config, R"({"policy": "ttl"})").ok());
  DaemonProcess d(dir.File("s.sock"), dir.File("state"), {"--config", config});
  ASSERT_TRUE(d.Start()) << d.Log();
  LineClient c(d.socket_path());
  OpenWith(c, "a", 70, 0);
  c.Ok({{"id", 4}, {"verb", "session.generate"}, {"session", "a"}, {"max_tokens", 2}});
  c.Ok({{"id", 5},
        {"verb", "session.tool_begin"},
        {"session", "a"},
        {"tool", "bash"},
        {"args", R"({"command": "cd /testbed && python -m pytest -q"})"}});
  json before = WaitForStats(c, [](const json& s) { return s["pins"]["granted"] == 1; });
  ASSERT_EQ(before["policy"], "ttl");
  ASSERT_EQ(before["pins"]["granted"], 1) << before.dump();
  const int64_t pinned = before["pools"]["device"]["blocks_pinned"].get<int64_t>();
  EXPECT_GT(pinned, 0);
  json info = c.Ok({{"id", 6}, {"verb", "session.info"}, {"session", "a"}, {"messages", false}});
  EXPECT_EQ(info["retention"]["pending_tool"]["key"], "pytest") << info.dump();

  ASSERT_TRUE(DefaultEnv()->WriteFileAtomic(config, R"({"policy": "fixed-ttl"})").ok());
  d.Signal(SIGHUP);
  json after = WaitForStats(c, [](const json& s) { return s["policy"] == "fixed-ttl"; });
  EXPECT_EQ(after["policy"], "fixed-ttl") << d.Log();
  EXPECT_EQ(after["pools"]["device"]["blocks_pinned"],
            pinned);  // the pin and its blocks carried over
  EXPECT_EQ(after["pins"]["granted"], 1);
  EXPECT_EQ(after["pins"]["violated"], 0);
  EXPECT_EQ(c.Ok({{"id", 7}, {"verb", "hello"}})["policy"], "fixed-ttl");

  // To or from none needs a restart: refused, the running policy stays.
  ASSERT_TRUE(DefaultEnv()->WriteFileAtomic(config, R"({"policy": "none"})").ok());
  d.Signal(SIGHUP);
  for (int i = 0; i < 100 && d.Log().find("needs a restart") == std::string::npos; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  EXPECT_NE(d.Log().find("needs a restart"), std::string::npos) << d.Log();
  EXPECT_EQ(c.Ok({{"id", 8}, {"verb", "stats"}})["policy"], "fixed-ttl");
}

// Three pytest runs and one grep: their durations are keyed, reported with quantiles, and
// the same figures come back after a restart on the same state directory.
TEST(DaemonPolicyTest, ToolDurationsAreLearnedPerKeyAndSurviveARestart) {
  DaemonFixture f({"--policy", "ttl"});
  ASSERT_TRUE(f.daemon.Start()) << f.daemon.Log();
  json keys;
  {
    LineClient c(f.daemon.socket_path());
    OpenWith(c, "a", 20, 0);
    const std::vector<std::pair<std::string, int>> calls = {
        {"cd /testbed && python -m pytest tests/x.py -q", 30},
        {"grep -rn foo .", 5},
        {"timeout 60 pytest -q", 60},
        {"PYTHONPATH=. pytest", 90}};
    for (const auto& [command, sleep_ms] : calls) {
      c.Ok({{"id", 3},
            {"verb", "session.tool_begin"},
            {"session", "a"},
            {"tool", "bash"},
            {"args", json{{"command", command}}.dump()}});
      std::this_thread::sleep_for(std::chrono::milliseconds(sleep_ms));
      c.Ok({{"id", 4}, {"verb", "session.tool_end"}, {"session", "a"}, {"content", "ok"}});
    }
    json stats = WaitForStats(c, [](const json& s) {
      return s["tool_keys"].contains("pytest") && s["tool_keys"]["pytest"]["samples"] == 3;
    });
    keys = stats["tool_keys"];
    ASSERT_EQ(keys["pytest"]["samples"], 3) << stats.dump();
    ASSERT_EQ(keys["grep"]["samples"], 1);
    EXPECT_GE(keys["pytest"]["p50_s"].get<double>(), 0.055);
    EXPECT_GE(keys["pytest"]["p99_s"].get<double>(), 0.085);
    EXPECT_LE(keys["pytest"]["p50_s"].get<double>(), keys["pytest"]["p99_s"].get<double>());
    const json prom = c.Ok({{"id", 5}, {"verb", "stats"}, {"format", "prometheus"}});
    EXPECT_NE(prom["text"].get<std::string>().find("kvkeep_tool_p99_seconds{key=\"pytest\"}"),
              std::string::npos);
    f.daemon.Kill(SIGTERM);
  }
  ASSERT_TRUE(f.daemon.Start()) << f.daemon.Log();
  LineClient c(f.daemon.socket_path());
  json restarted = c.Ok({{"id", 6}, {"verb", "stats"}})["tool_keys"];
  for (const char* key : {"pytest", "grep"}) {
    EXPECT_EQ(restarted[key]["samples"], keys[key]["samples"]) << key;
    EXPECT_NEAR(restarted[key]["p50_s"].get<double>(), keys[key]["p50_s"].get<double>(), 1e-6);
    EXPECT_NEAR(restarted[key]["p99_s"].get<double>(), keys[key]["p99_s"].get<double>(), 1e-6);
  }
}

// --calibrate-cost-model times the engine at start, logs the fit against the measured
// samples and saves it; the next start loads it from the state directory.
TEST(DaemonPolicyTest, CostModelIsCalibratedSavedAndLoaded) {
  TempDir dir;
  const std::string config = dir.File("kvkeepd.json");
  ASSERT_TRUE(DefaultEnv()
                  ->WriteFileAtomic(config, R"({"log_level": "info", "policy": "ttl",
                                                "engine": {"host_blocks": 64},
                                                "ttl": {"calibrate": true}})")
                  .ok());
  DaemonProcess d(dir.File("s.sock"), dir.File("state"), {"--config", config});
  ASSERT_TRUE(d.Start()) << d.Log();
  auto text = DefaultEnv()->ReadFile(dir.File("state") + "/cost_model.json");
  ASSERT_TRUE(text.ok()) << d.Log();
  const json model = json::parse(*text);
  EXPECT_GT(model["prefill_per_token_s"].get<double>() + model["prefill_attention_s"].get<double>(),
            0)
      << *text;
  EXPECT_GT(
      model["decode_fixed_s"].get<double>() + model["decode_per_context_token_s"].get<double>(), 0);
  // The tier probe allocated the host tier and timed swaps both ways; the engine kept it.
  EXPECT_GT(model["host_to_device_bytes_per_s"].get<double>(), 0) << *text;
  EXPECT_GT(model["host_duplex_share"].get<double>(), 0) << *text;
  EXPECT_NE(d.Log().find("cost model calibrated"), std::string::npos) << d.Log();
  EXPECT_NE(d.Log().find("measured_s"), std::string::npos);
  d.Kill(SIGTERM);
  ASSERT_TRUE(
      DefaultEnv()->WriteFileAtomic(config, R"({"log_level": "info", "policy": "ttl"})").ok());
  ASSERT_TRUE(d.Start()) << d.Log();
  EXPECT_NE(d.Log().find("cost model from"), std::string::npos) << d.Log();
}

}  // namespace
}  // namespace kvkeep::testing
