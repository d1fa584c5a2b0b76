// Isolation between uids: a second uid cannot see or touch the first uid's sessions
// (not_found, exactly as for a missing session) and lists only its own. Needs root to
// drop privileges in a forked child.
#include <grp.h>
#include <sys/stat.h>

#include <cstdio>
#include <random>

#include "tests/daemon/daemon_harness.h"

namespace kvkeep::testing {
namespace {

constexpr uid_t kOtherUid = 65534;  // nobody
constexpr gid_t kOtherGid = 65534;
const char* const kSharedQuestion = "a question long enough to fill a couple of KV blocks";

// Runs as the other uid; returns a description of every violated expectation.
std::string OtherUidChecks(const std::string& socket) {
  std::string failures;
  auto expect = [&](bool ok, const std::string& what) {
    if (!ok) failures += what + "\n";
  };
  LineClient c;
  if (!c.Connect(socket)) return "could not connect as uid 65534";
  json hello = c.Terminal({{"id", 1}, {"verb", "hello"}});
  expect(hello["result"]["uid"] == kOtherUid, "hello uid: " + hello.dump());
  expect(hello["result"]["admin"] == false, "nobody must not be admin");
  // Every verb on root's session answers exactly like a missing session.
  for (const char* verb :
       {"session.info", "session.append", "session.generate", "session.close", "session.fork",
        "session.tool_begin", "session.tool_end", "session.retain"}) {
    json req = {
        {"id", 2},     {"verb", verb},   {"messages", {{{"role", "user"}, {"content", "x"}}}},
        {"tool", "t"}, {"content", "x"}, {"keep", false},
        {"ttl_s", 5}};
    req["session"] = "secret";
    json theirs = c.Terminal(req);
    req["session"] = "missing";
    json missing = c.Terminal(req);
    expect(theirs["error"]["code"] == "not_found", std::string(verb) + ": " + theirs.dump());
    std::string msg = theirs["error"]["message"];
    std::string missing_msg = missing["error"]["message"];
    auto pos = missing_msg.find("missing");
    if (pos != std::string::npos) missing_msg.replace(pos, 7, "secret");
    expect(msg == missing_msg,
           std::string(verb) + ": messages differ: " + msg + " vs " + missing_msg);
  }
  json list = c.Terminal({{"id", 3}, {"verb", "sessions.list"}});
  expect(list["result"]["sessions"].empty(), "list before open: " + list.dump());
  json all = c.Terminal({{"id", 4}, {"verb", "sessions.list"}, {"all", true}});
  expect(all["error"]["code"] == "permission_denied", "list all: " + all.dump());
  // The same id is free in this uid's namespace: a different session.
  json open = c.Terminal({{"id", 5}, {"verb", "session.open"}, {"session", "secret"}});
  expect(open["result"]["created"] == true, "open own 'secret': " + open.dump());
  json info = c.Terminal({{"id", 6}, {"verb", "session.info"}, {"session", "secret"}});
  expect(info["result"]["num_messages"] == 0 && info["result"]["owner_uid"] == kOtherUid,
         "own 'secret' is fresh: " + info.dump());
  list = c.Terminal({{"id", 7}, {"verb", "sessions.list"}});
  expect(list["result"]["sessions"].size() == 1 &&
             list["result"]["sessions"][0]["session"] == "secret" &&
             list["result"]["sessions"][0]["owner_uid"] == kOtherUid,
         "list own: " + list.dump());
  // Tenants never share KV: the same conversation as root's gets no cached tokens.
  c.Terminal({{"id", 8}, {"verb", "session.open"}, {"session", "same"}, {"system", "root only"}});
  c.Terminal({{"id", 9},
              {"verb", "session.append"},
              {"session", "same"},
              {"messages", {{{"role", "user"}, {"content", kSharedQuestion}}}}});
  json g = c.Terminal(
      {{"id", 10}, {"verb", "session.generate"}, {"session", "same"}, {"max_tokens", 1}});
  expect(g["result"]["usage"]["cached_tokens"] == 0, "cross-tenant KV reuse: " + g.dump());
  return failures;
}

// Runs checks(socket) as uid 65534 in a forked child; returns its failures.
std::string RunAsOtherUid(const std::string& socket,
                          std::string (*checks)(const std::string& socket)) {
  int pipe_fds[2];
  if (pipe(pipe_fds) != 0) return "pipe failed";
  pid_t child = fork();
  if (child < 0) return "fork failed";
  if (child == 0) {
    close(pipe_fds[0]);
    std::string failures;
    if (setgroups(0, nullptr) != 0 || setresgid(kOtherGid, kOtherGid, kOtherGid) != 0 ||
        setresuid(kOtherUid, kOtherUid, kOtherUid) != 0) {
      failures = "dropping privileges failed";
    } else {
      failures = checks(socket);
    }
    (void)!write(pipe_fds[1], failures.data(), failures.size());
    _exit(0);
  }
  close(pipe_fds[1]);
  std::string failures;
  char buf[4096];
  ssize_t n;
  while ((n = read(pipe_fds[0], buf, sizeof(buf))) > 0) failures.append(buf, n);
  close(pipe_fds[0]);
  int status = 0;
  waitpid(child, &status, 0);
  if (!WIFEXITED(status)) failures += "the child did not exit\n";
  return failures;
}

TEST(DaemonIsolationTest, SecondUidCannotSeeOrTouchSessions) {
  if (geteuid() != 0) {
    GTEST_SKIP() << "needs root to run a client as a second uid (setresuid to 65534); "
                    "run the suite as root (e.g. in CI's container) to cover isolation";
  }
  DaemonFixture f({"--socket-mode", "0666"});
  ASSERT_EQ(chmod(f.dir.path().c_str(), 0755), 0);  // let nobody reach the socket
  ASSERT_TRUE(f.daemon.Start()) << f.daemon.Log();
  LineClient root(f.daemon.socket_path());
  root.Ok({{"id", 1}, {"verb", "session.open"}, {"session", "secret"}, {"system", "root only"}});
  root.Ok({{"id", 2},
           {"verb", "session.append"},
           {"session", "secret"},
           {"messages", {{{"role", "user"}, {"content", kSharedQuestion}}}}});
  json warm =
      root.Ok({{"id", 2}, {"verb", "session.generate"}, {"session", "secret"}, {"max_tokens", 1}});
  ASSERT_TRUE(warm.is_object());
  // Control: the same uid does reuse that KV from another session.
  root.Ok({{"id", 2}, {"verb", "session.open"}, {"session", "root-same"}, {"system", "root only"}});
  root.Ok({{"id", 2},
           {"verb", "session.append"},
           {"session", "root-same"},
           {"messages", {{{"role", "user"}, {"content", kSharedQuestion}}}}});
  json again = root.Ok(
      {{"id", 2}, {"verb", "session.generate"}, {"session", "root-same"}, {"max_tokens", 1}});
  EXPECT_GT(again["usage"]["cached_tokens"].get<int64_t>(), 0);
  root.Ok({{"id", 2}, {"verb", "session.close"}, {"session", "root-same"}, {"keep", false}});

  EXPECT_EQ(RunAsOtherUid(f.daemon.socket_path(), OtherUidChecks), "");

  // Root's session is untouched; root (admin) lists both uids' sessions with all: true,
  // and only its own without.
  json info = root.Ok({{"id", 3}, {"verb", "session.info"}, {"session", "secret"}});
  EXPECT_EQ(info["num_messages"], 3);
  json own = root.Ok({{"id", 4}, {"verb", "sessions.list"}});
  ASSERT_EQ(own["sessions"].size(), 1u);
  EXPECT_EQ(own["sessions"][0]["owner_uid"], 0);
  json all = root.Ok({{"id", 5}, {"verb", "sessions.list"}, {"all", true}});
  std::set<uint32_t> owners;
  for (const json& s : all["sessions"]) owners.insert(s["owner_uid"].get<uint32_t>());
  EXPECT_EQ(owners, (std::set<uint32_t>{0, kOtherUid}));
}

// What uid 65534 may learn from `stats`: its own activity only.
std::string OtherUidStatsChecks(const std::string& socket) {
  std::string failures;
  auto expect = [&](bool ok, const std::string& what) {
    if (!ok) failures += what + "\n";
  };
  LineClient c;
  if (!c.Connect(socket)) return "could not connect as uid 65534";
  json stats = c.Terminal({{"id", 1}, {"verb", "stats"}});
  const std::string text = stats.dump();
  expect(stats["result"]["scope"] == "uid" && stats["result"]["uid"] == kOtherUid,
         "stats is not the uid's own: " + text);
  expect(text.find("secret-project") == std::string::npos, "root's tool command leaks: " + text);
  for (const char* key : {"tool_keys", "server", "tokens", "engine", "latency_ms", "pools"}) {
    expect(!stats["result"].contains(key), std::string("daemon-wide '") + key + "': " + text);
  }
  expect(stats["result"]["sessions"]["open"] == 0, "sessions before open: " + text);
  c.Terminal({{"id", 2}, {"verb", "session.open"}, {"session", "mine"}});
  stats = c.Terminal({{"id", 3}, {"verb", "stats"}});
  expect(stats["result"]["sessions"]["open"] == 1 && stats["result"]["sessions"]["stored"] == 1,
         "own session not counted: " + stats.dump());
  json prom = c.Terminal({{"id", 4}, {"verb", "stats"}, {"format", "prometheus"}});
  const std::string prom_text = prom["result"].value("text", "");
  expect(prom_text.find("kvkeep_uid_sessions_open 1") != std::string::npos,
         "prometheus: own figures missing: " + prom_text);
  expect(prom_text.find("kvkeep_requests_total") == std::string::npos &&
             prom_text.find("secret-project") == std::string::npos,
         "prometheus: daemon-wide figures leak: " + prom_text);
  return failures;
}

// Issue 11, defect 9: `stats` showed the whole daemon's activity, tool commands included,
// to every uid.
TEST(DaemonIsolationTest, StatsShowsAnotherUidOnlyItsOwnActivity) {
  if (geteuid() != 0) {
    GTEST_SKIP() << "needs root to run a client as a second uid (setresuid to 65534)";
  }
  DaemonFixture f({"--socket-mode", "0666"});
  ASSERT_EQ(chmod(f.dir.path().c_str(), 0755), 0);
  ASSERT_TRUE(f.daemon.Start()) << f.daemon.Log();
  LineClient root(f.daemon.socket_path());
  root.Ok({{"id", 1}, {"verb", "session.open"}, {"session", "s"}});
  root.Ok({{"id", 2},
           {"verb", "session.tool_begin"},
           {"session", "s"},
           {"tool", "secret-project-deploy"},
           {"args", "--target prod"}});
  root.Ok({{"id", 3}, {"verb", "session.tool_end"}, {"session", "s"}, {"content", "the plan"}});
  // Control: the daemon's own uid (root) sees the daemon, the tool command included.
  // (the engine learns the tool's duration on its own thread: wait until it has)
  json all;
  for (int i = 0; i < 200; ++i) {
    all = root.Ok({{"id", 4}, {"verb", "stats"}});
    if (all.dump().find("secret-project") != std::string::npos) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(25));
  }
  ASSERT_NE(all.dump().find("secret-project"), std::string::npos) << all.dump();
  EXPECT_EQ(RunAsOtherUid(f.daemon.socket_path(), OtherUidStatsChecks), "");
}

// Issue 11, defect 1: device KV blocks per uid (limits.max_device_blocks_per_uid). Under
// lru every finished turn's session stays retained on the device. Root keeps one session
// of 160 tokens (10 full blocks); uid 65534 then runs kOtherSessions sessions of its own,
// more than the pool holds beside root's. With the cap, uid 65534 holds at most the cap
// (its own retained sessions go back to the cache first), so root's next turn is served
// wholly from device KV. Without it (the control), the same load reclaims root's session
// and its KV is gone.
constexpr int kPoolBlocks = 48;
constexpr int kCapBlocks = 20;
constexpr int kOtherSessions = 14;

json Tokens(int n, int salt) {
  json t = json::array();
  for (int k = 0; k < n; ++k) t.push_back(((k + 100 * salt) * 104729) % 250 + 3);
  return t;
}

// Opens session, appends one user message of tokens and generates 4 tokens.
void OpenAndRunOneTurn(LineClient* c, const std::string& session, const json& tokens) {
  c->Ok({{"id", 1}, {"verb", "session.open"}, {"session", session}});
  c->Ok({{"id", 2},
         {"verb", "session.append"},
         {"session", session},
         {"messages", {{{"role", "user"}, {"tokens", tokens}}}}});
  c->Ok({{"id", 3}, {"verb", "session.generate"}, {"session", session}, {"max_tokens", 4}});
}

// Runs as uid 65534: the sessions, then (with the cap) what its stats say of its blocks.
bool g_capped = false;  // set before the fork
std::string OtherUidFillsThePool(const std::string& socket) {
  std::string failures;
  LineClient c;
  if (!c.Connect(socket)) return "could not connect as uid 65534";
  for (int i = 0; i < kOtherSessions; ++i) {
    const std::string s = "load-" + std::to_string(i);
    c.Terminal({{"id", 1}, {"verb", "session.open"}, {"session", s}});
    c.Terminal({{"id", 2},
                {"verb", "session.append"},
                {"session", s},
                {"messages", {{{"role", "user"}, {"tokens", Tokens(96, i + 1)}}}}});
    json g =
        c.Terminal({{"id", 3}, {"verb", "session.generate"}, {"session", s}, {"max_tokens", 4}});
    if (!g.contains("result")) failures += "generate " + s + ": " + g.dump() + "\n";
  }
  json stats = c.Terminal({{"id", 4}, {"verb", "stats"}})["result"];
  const int64_t held = stats["kv"]["held_device_blocks"].get<int64_t>();
  if (g_capped && held > kCapBlocks) failures += "holds over the cap: " + stats.dump() + "\n";
  if (held <= 0 || stats["kv"]["device_blocks"].get<int64_t>() <= 0) {
    failures += "its own KV blocks are not in its stats: " + stats.dump() + "\n";
  }
  return failures;
}

// Root's session before and after uid 65534's load; returns root's second turn's usage.
json RootTurnAroundOtherUidsLoad(bool capped) {
  // lru: root's session, the least recently used, is the first victim of the other uid's
  // load, so the uncapped control shows what the cap prevents (ttl's GDSF order may keep it
  // and reclaim the other uid's own sessions instead).
  std::vector<std::string> flags = {
      "--socket-mode", "0666", "--kv-blocks", std::to_string(kPoolBlocks), "--policy", "lru"};
  if (capped)
    flags.insert(flags.end(), {"--max-device-blocks-per-uid", std::to_string(kCapBlocks)});
  DaemonFixture f(flags);
  EXPECT_EQ(chmod(f.dir.path().c_str(), 0755), 0);
  EXPECT_TRUE(f.daemon.Start()) << f.daemon.Log();
  LineClient root(f.daemon.socket_path());
  OpenAndRunOneTurn(&root, "keep", Tokens(160, 0));
  g_capped = capped;
  EXPECT_EQ(RunAsOtherUid(f.daemon.socket_path(), OtherUidFillsThePool), "");
  json stats = root.Ok({{"id", 4}, {"verb", "stats"}});
  if (capped) {
    EXPECT_LE(stats["kv_by_uid"][std::to_string(kOtherUid)]["held_device_blocks"].get<int64_t>(),
              kCapBlocks)
        << stats["kv_by_uid"].dump();
    EXPECT_GT(stats["sessions"]["released_by_uid_cap"].get<int64_t>(), 0);
  }
  root.Ok({{"id", 5},
           {"verb", "session.append"},
           {"session", "keep"},
           {"messages", {{{"role", "user"}, {"tokens", Tokens(8, 99)}}}}});
  json g =
      root.Ok({{"id", 6}, {"verb", "session.generate"}, {"session", "keep"}, {"max_tokens", 4}});
  return g["usage"];
}

TEST(DaemonIsolationTest, AnotherUidCannotPushRetainedKvOffTheDevicePastItsCap) {
  if (geteuid() != 0) {
    GTEST_SKIP() << "needs root to run a client as a second uid (setresuid to 65534)";
  }
  const json capped = RootTurnAroundOtherUidsLoad(/*capped=*/true);
  // Root's 160 message tokens fill 10 blocks; at least those 10 come from the device.
  EXPECT_GE(capped["cached_by_tier"]["device"].get<int64_t>(), 160) << capped.dump();
  const json control = RootTurnAroundOtherUidsLoad(/*capped=*/false);
  std::printf("root's next turn, cached by tier: with the cap %s, without %s\n",
              capped["cached_by_tier"].dump().c_str(), control["cached_by_tier"].dump().c_str());
  EXPECT_LT(control["cached_by_tier"]["device"].get<int64_t>(), 160)
      << "without the cap the other uid's load should have pushed root's KV off: "
      << control.dump();
}

// Issue 11, defect 1: host-tier KV blocks per uid (limits.max_host_blocks_per_uid). Root
// runs a session of 160 tokens, then a second one that takes it past its own 20 device
// blocks, so the first goes back to the cache as the next evicted. uid 65534, held to 20
// device blocks too, then runs kOtherSessions sessions of distinct tokens, whose blocks
// leave the device for the host tier (40 slots, no disk tier) after root's. With
// the host cap of 20, uid 65534's own oldest host blocks leave the host as it reaches the
// cap, so root's blocks stay there and its next turn takes all 160 tokens from the device
// and the host. Without it (the control), the same load reclaims root's host blocks and
// they are recomputed from the stored messages.
constexpr int kHostBlocks = 40;
constexpr int kHostCapBlocks = 20;

json DistinctTokens(int n, int salt) {
  std::mt19937 rng(static_cast<uint32_t>(salt) * 7919u + 1u);
  json t = json::array();
  for (int k = 0; k < n; ++k) t.push_back(static_cast<int>(rng() % 250) + 3);
  return t;
}

std::string OtherUidFillsTheHostTier(const std::string& socket) {
  std::string failures;
  LineClient c;
  if (!c.Connect(socket)) return "could not connect as uid 65534";
  for (int i = 0; i < kOtherSessions; ++i) {
    const std::string s = "spill-" + std::to_string(i);
    c.Terminal({{"id", 1}, {"verb", "session.open"}, {"session", s}});
    c.Terminal({{"id", 2},
                {"verb", "session.append"},
                {"session", s},
                {"messages", {{{"role", "user"}, {"tokens", DistinctTokens(96, i + 1)}}}}});
    json g =
        c.Terminal({{"id", 3}, {"verb", "session.generate"}, {"session", s}, {"max_tokens", 4}});
    if (!g.contains("result")) failures += "generate " + s + ": " + g.dump() + "\n";
  }
  json stats = c.Terminal({{"id", 4}, {"verb", "stats"}})["result"];
  if (g_capped && stats["kv"]["host_blocks"].get<int64_t>() > kHostCapBlocks) {
    failures += "keeps over the host cap: " + stats.dump() + "\n";
  }
  return failures;
}

json RootTurnAroundOtherUidsHostLoad(bool capped) {
  std::vector<std::string> flags = {"--socket-mode",
                                    "0666",
                                    "--kv-blocks",
                                    std::to_string(kPoolBlocks),
                                    "--host-blocks",
                                    std::to_string(kHostBlocks),
                                    "--max-device-blocks-per-uid",
                                    std::to_string(kCapBlocks)};
  if (capped)
    flags.insert(flags.end(), {"--max-host-blocks-per-uid", std::to_string(kHostCapBlocks)});
  DaemonFixture f(flags);
  EXPECT_EQ(chmod(f.dir.path().c_str(), 0755), 0);
  EXPECT_TRUE(f.daemon.Start()) << f.daemon.Log();
  LineClient root(f.daemon.socket_path());
  EXPECT_EQ(root.Ok({{"id", 1}, {"verb", "hello"}})["limits"]["max_host_blocks_per_uid"],
            capped ? kHostCapBlocks : 0);
  OpenAndRunOneTurn(&root, "keep", DistinctTokens(160, 0));
  OpenAndRunOneTurn(&root, "push", DistinctTokens(160, 77));
  EXPECT_EQ(root.Ok({{"id", 4}, {"verb", "stats"}})["sessions"]["released_by_uid_cap"], 1);
  g_capped = capped;
  EXPECT_EQ(RunAsOtherUid(f.daemon.socket_path(), OtherUidFillsTheHostTier), "");
  json stats = root.Ok({{"id", 5}, {"verb", "stats"}});
  const json& kv = stats["kv_by_uid"];
  EXPECT_GT(stats["tiers"]["demoted_blocks"].get<int64_t>(), kHostBlocks) << stats["tiers"].dump();
  if (capped) {
    EXPECT_LE(kv[std::to_string(kOtherUid)]["host_blocks"].get<int64_t>(), kHostCapBlocks)
        << kv.dump();
  }
  root.Ok({{"id", 7},
           {"verb", "session.append"},
           {"session", "keep"},
           {"messages", {{{"role", "user"}, {"tokens", DistinctTokens(8, 99)}}}}});
  json g =
      root.Ok({{"id", 8}, {"verb", "session.generate"}, {"session", "keep"}, {"max_tokens", 4}});
  // Acknowledged messages are never lost: a dropped block is recomputed from them.
  EXPECT_EQ(g["finish_reason"], "length") << g.dump();
  EXPECT_GE(g["usage"]["prompt_tokens"].get<int64_t>(), 160 + 4 + 8) << g.dump();
  return g["usage"];
}

TEST(DaemonIsolationTest, AnotherUidCannotPushHostTierKvOutPastItsCap) {
  if (geteuid() != 0) {
    GTEST_SKIP() << "needs root to run a client as a second uid (setresuid to 65534)";
  }
  auto device_and_host = [](const json& usage) {
    return usage["cached_by_tier"]["device"].get<int64_t>() +
           usage["cached_by_tier"]["host"].get<int64_t>();
  };
  const json capped = RootTurnAroundOtherUidsHostLoad(/*capped=*/true);
  EXPECT_GT(capped["cached_by_tier"]["host"].get<int64_t>(), 0)
      << "root's KV should have left the device for the host: " << capped.dump();
  EXPECT_GE(device_and_host(capped), 160) << capped.dump();
  const json control = RootTurnAroundOtherUidsHostLoad(/*capped=*/false);
  std::printf("root's next turn, cached by tier: with the host cap %s, without %s\n",
              capped["cached_by_tier"].dump().c_str(), control["cached_by_tier"].dump().c_str());
  EXPECT_LT(device_and_host(control), 160)
      << "without the cap the other uid's load should have pushed root's host KV out: "
      << control.dump();
}

// A turn that alone may hold more device blocks than the cap is refused, naming it.
TEST(DaemonIsolationTest, ATurnOverTheDeviceBlockCapIsAClearError) {
  DaemonFixture f({"--kv-blocks", std::to_string(kPoolBlocks), "--max-device-blocks-per-uid",
                   std::to_string(kCapBlocks)});
  ASSERT_TRUE(f.daemon.Start()) << f.daemon.Log();
  LineClient c(f.daemon.socket_path());
  EXPECT_EQ(c.Ok({{"id", 1}, {"verb", "hello"}})["limits"]["max_device_blocks_per_uid"],
            kCapBlocks);
  c.Ok({{"id", 2}, {"verb", "session.open"}, {"session", "big"}});
  c.Ok({{"id", 3},
        {"verb", "session.append"},
        {"session", "big"},
        {"messages", {{{"role", "user"}, {"tokens", Tokens(160, 0)}}}}});
  json t = c.Terminal(
      {{"id", 4}, {"verb", "session.generate"}, {"session", "big"}, {"max_tokens", 400}});
  ASSERT_TRUE(t.contains("error")) << t.dump();
  EXPECT_EQ(t["error"]["code"], "resource_exhausted");
  EXPECT_NE(t["error"]["message"].get<std::string>().find("limits.max_device_blocks_per_uid is 20"),
            std::string::npos)
      << t.dump();
  // Within the cap the same session generates, and its blocks show in its stats.
  json g = c.Ok({{"id", 5}, {"verb", "session.generate"}, {"session", "big"}, {"max_tokens", 4}});
  EXPECT_EQ(g["finish_reason"], "length");
  json stats = c.Ok({{"id", 6}, {"verb", "stats"}});
  EXPECT_GE(stats["kv_by_uid"][std::to_string(geteuid())]["held_device_blocks"].get<int64_t>(), 10)
      << stats["kv_by_uid"].dump();
}

}  // namespace
}  // namespace kvkeep::testing
