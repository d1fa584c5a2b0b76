// End to end: `kvkeep replay run --spawn` starts a real kvkeepd per policy on the tiny
// synthetic model, replays a trace, and writes the report. Checks the report's token
// accounting, that `lru` reuses KV across turns while `none` does not, and the plots.
#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <sstream>

#include "tests/testlib/test_util.h"

namespace kvkeep::replay {
namespace {

using nlohmann::json;

constexpr int kBlockSize = 16;  // kvkeepd's default

using testing::Shell;
using testing::Slurp;

struct Turn {
  std::string session;
  int turn;
  int64_t prompt, cached, recomputed, generated;
};

// turns.csv rows by policy (the session column never holds commas: ids are sanitised).
std::map<std::string, std::vector<Turn>> ReadTurns(const std::string& path) {
  std::map<std::string, std::vector<Turn>> out;
  std::istringstream in(Slurp(path));
  std::string line;
  std::getline(in, line);
  EXPECT_EQ(line.rfind("policy,session,turn,start_s,prompt_tokens,cached_tokens", 0), 0u);
  while (std::getline(in, line)) {
    std::vector<std::string> f;
    std::stringstream ls(line);
    for (std::string cell; std::getline(ls, cell, ',');) f.push_back(cell);
    if (f.size() < 11) continue;
    out[f[0]].push_back({f[1], std::stoi(f[2]), std::stoll(f[4]), std::stoll(f[5]),
                         std::stoll(f[9]), std::stoll(f[10])});
  }
  return out;
}

// A PNG file: the signature, then an IHDR chunk with non-zero width and height.
void ExpectPng(const std::string& path) {
  std::string png = Slurp(path);
  ASSERT_GT(png.size(), 33u) << path;
  EXPECT_EQ(png.substr(0, 8), std::string("\x89PNG\r\n\x1a\n", 8)) << path;
  EXPECT_EQ(png.substr(12, 4), "IHDR") << path;
  auto be32 = [&](size_t at) {
    return (uint32_t{uint8_t(png[at])} << 24) | (uint32_t{uint8_t(png[at + 1])} << 16) |
           (uint32_t{uint8_t(png[at + 2])} << 8) | uint32_t{uint8_t(png[at + 3])};
  };
  EXPECT_GT(be32(16), 0u);
  EXPECT_GT(be32(20), 0u);
}

class ReplayRun : public ::testing::Test {
 protected:
  void SetUp() override {
    kvkeep_ = testing::BinaryDir() + "/kvkeep";
    if (access((testing::BinaryDir() + "/kvkeepd").c_str(), X_OK) != 0) {
      GTEST_SKIP() << "kvkeepd is not built";
    }
    ASSERT_EQ(Shell(kvkeep_ + " make-model --preset tiny --seed " +
                    std::to_string(testing::TestSeed() % 100000) + " --out " + dir_.File("model") +
                    " > /dev/null"),
              0);
  }

  // Replays `trace` under lru and none with a pool large enough that nothing is evicted,
  // and checks everything the report promises.
  void ReplayAndCheck(const std::string& trace, int max_turns) {
    std::string out = dir_.File("out");
    std::string cmd = kvkeep_ + " replay run " + trace + " --out " + out + " --spawn --model " +
                      dir_.File("model") + " --policy lru,none --agents 4 --max-turns " +
                      std::to_string(max_turns) +
                      " --max-prompt-tokens 2500 --time-scale 0 -- --num-kv-blocks 4096";
    ASSERT_EQ(Shell(cmd + " > " + dir_.File("stdout.txt") + " 2> " + dir_.File("stderr.txt")), 0)
        << Slurp(dir_.File("stderr.txt")) << Slurp(out + "/lru/kvkeepd.log");
    std::string summary = Slurp(dir_.File("stdout.txt"));
    EXPECT_NE(summary.find("lru"), std::string::npos) << summary;
    EXPECT_NE(summary.find("none"), std::string::npos) << summary;

    json report = json::parse(Slurp(out + "/report.json"));
    ASSERT_TRUE(report["policies"].contains("lru"));
    ASSERT_TRUE(report["policies"].contains("none"));
    for (const char* p : {"lru", "none"}) {
      const json& s = report["policies"][p];
      for (const char* key : {"mean_ttft_ms", "p50_ttft_ms", "p99_ttft_ms", "mean_jct_s",
                              "hit_ratio", "prompt_tokens", "cached_tokens", "recomputed_tokens"}) {
        EXPECT_TRUE(s.contains(key)) << p << " lacks " << key;
      }
      EXPECT_EQ(s["failed_sessions"].get<int>(), 0) << Slurp(out + "/sessions.csv");
      EXPECT_EQ(s["prompt_tokens"].get<int64_t>(),
                s["cached_tokens"].get<int64_t>() + s["recomputed_tokens"].get<int64_t>());
    }
    // Both policies saw the same conversation.
    EXPECT_EQ(report["policies"]["lru"]["prompt_tokens"],
              report["policies"]["none"]["prompt_tokens"]);
    EXPECT_EQ(report["policies"]["none"]["cached_tokens"].get<int64_t>(), 0);
    int64_t lru_recomputed = report["policies"]["lru"]["recomputed_tokens"];
    int64_t none_recomputed = report["policies"]["none"]["recomputed_tokens"];
    EXPECT_LT(lru_recomputed * 3, none_recomputed)
        << "lru must recompute far fewer tokens than none";

    auto turns = ReadTurns(out + "/turns.csv");
    ASSERT_FALSE(turns["lru"].empty());
    int full_reuse = 0, later_turns = 0;
    std::map<std::string, Turn> previous;
    for (const Turn& t : turns["lru"]) {
      EXPECT_EQ(t.prompt, t.cached + t.recomputed) << t.session << " turn " << t.turn;
      auto it = previous.find(t.session);
      if (it != previous.end()) {
        ASSERT_EQ(it->second.turn + 1, t.turn);
        // Nothing was evicted, so every full block of the previous turn's context (its
        // prompt and all but the last generated token, whose KV is never computed) is
        // reused. Reuse is block-granular.
        const Turn& p = it->second;
        int64_t reusable = (p.prompt + p.generated - 1) / kBlockSize * kBlockSize;
        EXPECT_GE(t.cached, reusable) << t.session << " turn " << t.turn;
        ++later_turns;
        full_reuse += t.cached >= p.prompt;
      }
      previous[t.session] = t;
    }
    ASSERT_GT(later_turns, 0);
    // Turn k+1 reuses at least turn k's whole prompt whenever turn k generated a block's
    // worth of tokens, which recorded agent turns nearly always do.
    EXPECT_GE(full_reuse * 10, later_turns * 9) << full_reuse << " of " << later_turns;
    for (const Turn& t : turns["none"]) EXPECT_EQ(t.cached, 0);

    for (const char* png : {"ttft_cdf.png", "kv_occupancy.png", "hit_ratio_by_turn.png"}) {
      ExpectPng(out + "/" + png);
    }
  }

  testing::TempDir dir_;
  std::string kvkeep_;
};

TEST_F(ReplayRun, FourRealDeepseekTracesUnderLruAndNone) {
  KVKEEP_REQUIRE_SHARED_DATA();
  const std::string d = testing::SharedDataDir() + "/traces/mini-swe-agent-v2-deepseek/";
  ASSERT_EQ(Shell(kvkeep_ + " replay import --quiet --from mini-swe-agent " + d +
                  "django__django-11099.traj.json " + d + "astropy__astropy-12907.traj.json " + d +
                  "django__django-13658.traj.json " + d + "django__django-10914.traj.json > " +
                  dir_.File("trace.jsonl")),
            0);
  ReplayAndCheck(dir_.File("trace.jsonl"), 6);
}

TEST_F(ReplayRun, SynthesisedWorkloadUnderLruAndNone) {
  ASSERT_EQ(Shell(kvkeep_ + " replay synth --agents 4 --seed " +
                  std::to_string(testing::TestSeed() % 1000) + " > " + dir_.File("trace.jsonl")),
            0);
  ReplayAndCheck(dir_.File("trace.jsonl"), 6);
}

TEST_F(ReplayRun, ADeadlineCutsTheRunAndKeepsWhatFinished) {
  // Two sessions: one finishes in well under a second; the other waits 30 s in a tool
  // after its first turn. With --deadline-s 3 the run returns after about 3 s (not 30),
  // the first session is reported as finished and the second as cut, with its first turn.
  auto session = [](const char* id, double tool_s) {
    json events =
        json::array({{{"type", "system"}, {"text", "You are a helpful assistant."}},
                     {{"type", "user"}, {"text", "Fix the bug in parser.py, please."}},
                     {{"type", "model"}, {"text", "I will look at the file first."}},
                     {{"type", "tool_begin"}, {"tool", "bash"}, {"command", "cat parser.py"}},
                     {{"type", "tool_end"},
                      {"tool", "bash"},
                      {"text", "def parse(): pass"},
                      {"duration_s", tool_s},
                      {"timing", "recorded"}},
                     {{"type", "model"}, {"text", "Done."}}});
    return json{{"format", "kvkeep-trace"}, {"version", 1}, {"session", id},    {"source", "test"},
                {"source_file", "test"},    {"model", ""},  {"arrival_s", 0.0}, {"events", events}}
        .dump();
  };
  std::ofstream(dir_.File("t.jsonl")) << session("quick", 0.1) << "\n"
                                      << session("slow", 30) << "\n";
  const std::string out = dir_.File("out");
  const auto start = std::chrono::steady_clock::now();
  ASSERT_EQ(Shell(kvkeep_ + " replay run " + dir_.File("t.jsonl") + " --out " + out +
                  " --spawn --model " + dir_.File("model") +
                  " --policy lru --agents 2 --deadline-s 3 --no-plots > " + dir_.File("o.txt") +
                  " 2> " + dir_.File("e.txt")),
            0)
      << Slurp(dir_.File("e.txt"));
  const double wall_s =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  EXPECT_LT(wall_s, 25) << "the deadline did not cut the 30 s tool wait";
  const std::string sessions = Slurp(out + "/sessions.csv");
  std::istringstream in(sessions);
  std::string line;
  int finished = 0, cut = 0;
  while (std::getline(in, line)) {
    if (line.find("quick") != std::string::npos) {
      EXPECT_EQ(line.find("deadline"), std::string::npos) << line;
      ++finished;
    } else if (line.find("slow") != std::string::npos) {
      EXPECT_NE(line.find("deadline_exceeded"), std::string::npos) << line;
      ++cut;
    }
  }
  EXPECT_EQ(finished, 1) << sessions;
  EXPECT_EQ(cut, 1) << sessions;
  auto turns = ReadTurns(out + "/turns.csv");
  int slow_turns = 0;
  for (const Turn& t : turns["lru"]) slow_turns += t.session.find("slow") != std::string::npos;
  EXPECT_EQ(slow_turns, 1) << "the cut session keeps the turn it finished";
}

// --max-message-tokens clips every message under --max-prompt-tokens to N tokens, where
// the default clip is an eighth of the context: a session of long messages then runs all
// its turns within the context instead of stopping after a few.
TEST_F(ReplayRun, MaxMessageTokensClipsEachMessage) {
  const std::string long_text(900, 'x');
  json events = json::array({{{"type", "system"}, {"text", "You are a helpful assistant."}},
                             {{"type", "user"}, {"text", long_text}}});
  constexpr int kTurns = 6;
  for (int i = 0; i < kTurns; ++i) {
    events.push_back({{"type", "model"}, {"text", long_text}});
    events.push_back({{"type", "tool_begin"}, {"tool", "bash"}, {"command", "cat f.py"}});
    events.push_back({{"type", "tool_end"},
                      {"tool", "bash"},
                      {"text", long_text},
                      {"duration_s", 0.0},
                      {"timing", "recorded"}});
  }
  std::ofstream(dir_.File("t.jsonl"))
      << json{{"format", "kvkeep-trace"}, {"version", 1}, {"session", "long"}, {"source", "test"},
              {"source_file", "test"},    {"model", ""},  {"arrival_s", 0.0},  {"events", events}}
             .dump()
      << "\n";
  // Each turn's context (turns.csv's context_tokens), by run.
  auto contexts = [&](const std::string& extra) {
    const std::string out = dir_.File("out" + extra.substr(extra.find_last_of(' ') + 1));
    EXPECT_EQ(Shell(kvkeep_ + " replay run " + dir_.File("t.jsonl") + " --out " + out +
                    " --spawn --model " + dir_.File("model") +
                    " --policy lru --agents 1 --max-prompt-tokens 2400 --time-scale 0 --no-plots" +
                    extra + " > /dev/null 2> " + dir_.File("e.txt")),
              0)
        << Slurp(dir_.File("e.txt"));
    std::istringstream in(Slurp(out + "/turns.csv"));
    std::string line;
    std::getline(in, line);
    std::vector<std::string> header;
    std::stringstream hs(line);
    for (std::string cell; std::getline(hs, cell, ',');) header.push_back(cell);
    const size_t col = std::find(header.begin(), header.end(), "context_tokens") - header.begin();
    std::vector<int64_t> out_contexts;
    while (std::getline(in, line)) {
      std::vector<std::string> f;
      std::stringstream ls(line);
      for (std::string cell; std::getline(ls, cell, ',');) f.push_back(cell);
      if (col < f.size()) out_contexts.push_back(std::stoll(f[col]));
    }
    return out_contexts;
  };
  const std::vector<int64_t> clipped = contexts(" --max-message-tokens 64");
  const std::vector<int64_t> by_default = contexts(" --max-message-tokens 0");
  ASSERT_EQ(clipped.size(), size_t{kTurns});
  for (size_t k = 1; k < clipped.size(); ++k) {
    // The forced reply and the tool result, 64 tokens each, plus the template's markers.
    EXPECT_LE(clipped[k] - clipped[k - 1], 2 * 64 + 64) << "turn " << k;
  }
  ASSERT_GE(by_default.size(), 2u);
  EXPECT_LT(by_default.size(), size_t{kTurns}) << "an eighth of 2,400 tokens a message";
  EXPECT_GT(by_default[1] - by_default[0], 2 * 64 + 64);
}

TEST_F(ReplayRun, RefusesBadArguments) {
  ASSERT_EQ(Shell(kvkeep_ + " replay synth --agents 1 > " + dir_.File("t.jsonl")), 0);
  // Several policies need fresh daemons.
  EXPECT_EQ(Shell(kvkeep_ + " replay run " + dir_.File("t.jsonl") + " --out " + dir_.File("o") +
                  " --socket /nonexistent.sock --policy lru,none 2>/dev/null"),
            1);
  // A malformed trace names its line.
  std::ofstream(dir_.File("bad.jsonl")) << "{\"format\":\"kvkeep-trace\"}\n";
  EXPECT_EQ(Shell(kvkeep_ + " replay run " + dir_.File("bad.jsonl") + " --out " + dir_.File("o") +
                  " --spawn 2> " + dir_.File("err.txt")),
            1);
  EXPECT_NE(Slurp(dir_.File("err.txt")).find("bad.jsonl:1"), std::string::npos)
      << Slurp(dir_.File("err.txt"));
}

}  // namespace
}  // namespace kvkeep::replay
