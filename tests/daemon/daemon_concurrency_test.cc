// 64 concurrent clients each run a multi-turn agent session against a real kvkeepd.
// Every stream must be complete and equal to a single-client run of the same script, and
// each turn must reuse the previous turn's KV (cached_tokens).
#include <atomic>
#include <thread>

#include "tests/daemon/daemon_harness.h"

namespace kvkeep::testing {
namespace {

constexpr int kClients = 64;
constexpr int kScripts = 8;  // client i runs script i % kScripts
constexpr int kTurns = 3;
constexpr int kBlockTokens = 16;

struct Turn {
  std::vector<int32_t> tokens;
  std::string text;
  int64_t prompt_tokens = 0;
  int64_t cached_tokens = 0;
  bool streamed_ok = true;
};

// Runs one script; returns its turns. `failure` collects the first problem seen.
std::vector<Turn> RunScript(const std::string& socket, const std::string& session, int script,
                            bool stream, std::string* failure) {
  std::vector<Turn> turns;
  LineClient c(socket);
  if (!c.connected()) {
    *failure = "connect failed";
    return turns;
  }
  int id = 0;
  auto expect_ok = [&](const json& req) -> json {
    json t = c.Terminal(req);
    if (!t.contains("result") && failure->empty()) *failure = req.dump() + " -> " + t.dump();
    return t.contains("result") ? t["result"] : json();
  };
  expect_ok({{"id", ++id},
             {"verb", "session.open"},
             {"session", session},
             {"system", "You are agent number " + std::to_string(script) + "."}});
  for (int t = 0; t < kTurns; ++t) {
    expect_ok({{"id", ++id},
               {"verb", "session.append"},
               {"session", session},
               {"messages",
                {{{"role", "user"},
                  {"content", "Script " + std::to_string(script) + ", step " + std::to_string(t) +
                                  ": list the files please."}}}}});
    json req = {{"id", ++id},
                {"verb", "session.generate"},
                {"session", session},
                {"max_tokens", 6},
                {"stream", stream}};
    std::vector<json> lines = c.Call(req);
    Turn turn;
    if (lines.empty() || !lines.back().contains("result")) {
      if (failure->empty())
        *failure = "generate failed: " + (lines.empty() ? "" : lines.back().dump());
      return turns;
    }
    const json& r = lines.back()["result"];
    turn.tokens = r["tokens"].get<std::vector<int32_t>>();
    turn.text = r["text"];
    turn.prompt_tokens = r["usage"]["prompt_tokens"];
    turn.cached_tokens = r["usage"]["cached_tokens"];
    std::vector<int32_t> streamed;
    for (size_t i = 0; i + 1 < lines.size(); ++i) {
      if (lines[i]["event"] != "token") turn.streamed_ok = false;
      streamed.push_back(lines[i]["token"]);
    }
    if (stream && streamed != turn.tokens) turn.streamed_ok = false;
    if (!stream && lines.size() != 1) turn.streamed_ok = false;
    turns.push_back(turn);
    expect_ok({{"id", ++id},
               {"verb", "session.tool_begin"},
               {"session", session},
               {"tool", "bash"},
               {"args", "ls"}});
    expect_ok({{"id", ++id},
               {"verb", "session.tool_end"},
               {"session", session},
               {"content", "README.md\nsrc-" + std::to_string(script) + "\n"}});
  }
  json info = expect_ok({{"id", ++id}, {"verb", "session.info"}, {"session", session}});
  if (info.is_object() && info["num_messages"] != 1 + 3 * kTurns && failure->empty()) {
    *failure = "session.info: " + info.dump();
  }
  return turns;
}

TEST(DaemonConcurrencyTest, SixtyFourClientsMultiTurnStreamsAreCompleteAndReuseKv) {
  DaemonFixture f;
  ASSERT_TRUE(f.daemon.Start()) << f.daemon.Log();
  const std::string& socket = f.daemon.socket_path();

  // Reference: each script alone, one client at a time.
  std::vector<std::vector<Turn>> reference(kScripts);
  for (int s = 0; s < kScripts; ++s) {
    std::string failure;
    reference[s] = RunScript(socket, "ref-" + std::to_string(s), s, false, &failure);
    ASSERT_TRUE(failure.empty()) << failure;
    ASSERT_EQ(reference[s].size(), static_cast<size_t>(kTurns));
  }

  std::vector<std::vector<Turn>> results(kClients);
  std::vector<std::string> failures(kClients);
  std::vector<std::thread> threads;
  for (int i = 0; i < kClients; ++i) {
    threads.emplace_back([&, i] {
      results[i] =
          RunScript(socket, "client-" + std::to_string(i), i % kScripts, i % 2 == 1, &failures[i]);
    });
  }
  for (auto& t : threads) t.join();

  for (int i = 0; i < kClients; ++i) {
    SCOPED_TRACE("client " + std::to_string(i));
    ASSERT_TRUE(failures[i].empty()) << failures[i];
    ASSERT_EQ(results[i].size(), static_cast<size_t>(kTurns));
    const auto& ref = reference[i % kScripts];
    for (int t = 0; t < kTurns; ++t) {
      const Turn& turn = results[i][t];
      EXPECT_TRUE(turn.streamed_ok) << "turn " << t;
      EXPECT_EQ(turn.tokens.size(), 6u) << "turn " << t;
      EXPECT_EQ(turn.tokens, ref[t].tokens) << "turn " << t << " differs from the single run";
      EXPECT_EQ(turn.prompt_tokens, ref[t].prompt_tokens);
      if (t > 0) {
        // Turn t's context extends turn t-1's: its full blocks must come from the cache.
        const int64_t prev_full = results[i][t - 1].prompt_tokens / kBlockTokens * kBlockTokens;
        EXPECT_GE(turn.cached_tokens, prev_full) << "turn " << t;
      }
    }
  }
  LineClient c(socket);
  json stats = c.Ok({{"id", 1}, {"verb", "stats"}});
  EXPECT_EQ(stats["sessions"]["open"], kClients + kScripts);
  EXPECT_GT(stats["tokens"]["cached"].get<int64_t>(), 0);
  EXPECT_TRUE(f.daemon.Alive());
}

}  // namespace
}  // namespace kvkeep::testing
