// `kvkeep replay run --spawn --tool-history TRACE --cost-model FILE`
// (tools/replay_daemon_state.h):
// the tool times land in the daemon's real SQLite store under the keys the daemon learns
// them by, scaled; the cost model lands as the state directory's cost_model.json and the
// spawned daemon loads it; bad files are refused with their name and write nothing. Also:
// a session cut by --max-turns does not replay the tool its last turn called.
#include <gtest/gtest.h>

#include <unistd.h>

#include <fstream>
#include <map>
#include <nlohmann/json.hpp>

#include "base/file.h"
#include "daemon/store.h"
#include "policy/cost_model.h"
#include "tests/testlib/test_util.h"

namespace kvkeep::tools {
namespace {

using nlohmann::json;
using testing::Shell;
using testing::Slurp;

// One session: a model turn, then each {command, duration} as a bash call and a model turn.
void WriteTrace(const std::string& path, const std::vector<std::pair<std::string, double>>& calls) {
  json events = json::array(
      {{{"type", "user"}, {"text", "fix the bug"}}, {{"type", "model"}, {"text", "looking"}}});
  for (const auto& [command, duration_s] : calls) {
    events.push_back({{"type", "tool_begin"}, {"tool", "bash"}, {"command", command}});
    events.push_back({{"type", "tool_end"},
                      {"tool", "bash"},
                      {"text", "ok"},
                      {"duration_s", duration_s},
                      {"timing", "recorded"}});
    events.push_back({{"type", "model"}, {"text", "next"}});
  }
  std::ofstream(path) << json{{"format", "kvkeep-trace"}, {"version", 1},          {"session", "s"},
                              {"source", "test"},         {"source_file", "test"}, {"model", ""},
                              {"arrival_s", 0.0},         {"events", events}}
                             .dump()
                      << "\n";
}

// The CLI end to end, on one spawned daemon: the history's tool times land in its real
// SQLite store under the keys the daemon learns them by, scaled; it loads the seeded cost
// model; and the session ends after its last turn instead of waiting out the 20 s tool
// that turn called (so the daemon records no sample of its own).
TEST(ReplayDaemonState, SpawnedDaemonGetsTheSeedAndTheLastTurnEndsTheSession) {
  const std::string bin = testing::BinaryDir();
  if (access((bin + "/kvkeepd").c_str(), X_OK) != 0) GTEST_SKIP() << "kvkeepd is not built";
  testing::TempDir dir;
  ASSERT_EQ(Shell(bin + "/kvkeep make-model --preset tiny --seed 5 --out " + dir.File("model") +
                  " > /dev/null"),
            0);
  WriteTrace(dir.File("t.jsonl"), {{"pip install -e .", 20.0}, {"cat x", 0.1}});
  WriteTrace(dir.File("h.jsonl"), {{"cd /testbed && pip install -e .", 4.0},
                                   {"timeout 30 cat setup.py", 0.2},
                                   {R"({"command": "grep -n foo x.py"})", 0.1},
                                   {"pip3 install pytest", 6.0}});
  const std::string fixture = testing::FixturesDir() + "/policy/cost_model_tiny_cpu.json";
  const std::string run = bin + "/kvkeep replay run " + dir.File("t.jsonl") + " --out " +
                          dir.File("out") + " --spawn --model " + dir.File("model") +
                          " --policy ttl --agents 1 --max-turns 1 --time-scale 0.5 --no-plots";
  ASSERT_EQ(Shell(run + " --tool-history " + dir.File("h.jsonl") + " --cost-model " + fixture +
                  " > /dev/null 2> " + dir.File("err.txt")),
            0)
      << Slurp(dir.File("err.txt"));
  const json report = json::parse(Slurp(dir.File("out/report.json")));
  const json& ttl = report["policies"]["ttl"];
  EXPECT_EQ(ttl["turns"].get<int>(), 1);
  EXPECT_LT(ttl["mean_jct_s"].get<double>(), 5.0)
      << "the last turn's 10 s (scaled) tool was waited";

  auto store = Store::Open(dir.File("out/ttl/state/kvkeep.db"));
  ASSERT_TRUE(store.ok()) << store.status().ToString();
  auto samples = (*store)->ToolSamples(100);
  ASSERT_TRUE(samples.ok()) << samples.status().ToString();
  std::map<std::string, std::vector<int64_t>> by_key;
  for (const ToolSample& s : *samples) by_key[s.key].push_back(s.duration_us);
  EXPECT_EQ(by_key["pip"], (std::vector<int64_t>{2000000, 3000000}));
  EXPECT_EQ(by_key["cat"], (std::vector<int64_t>{100000}));
  EXPECT_EQ(by_key["grep"], (std::vector<int64_t>{50000}));
  EXPECT_EQ(by_key.size(), 3u);

  const std::string log = Slurp(dir.File("out/ttl/kvkeepd.log"));
  EXPECT_NE(log.find("cost model from"), std::string::npos) << log;
  EXPECT_NE(log.find("2-core dev machine"), std::string::npos) << log;  // the fixture's source
  auto want = LoadCostModel(DefaultEnv(), fixture);
  auto got = LoadCostModel(DefaultEnv(), dir.File("out/ttl/state/cost_model.json"));
  ASSERT_TRUE(want.ok() && got.ok());
  EXPECT_EQ(got->prefill_per_token_s, want->prefill_per_token_s);
  EXPECT_EQ(got->prefill_attention_s, want->prefill_attention_s);
  EXPECT_EQ(got->decode_per_sequence_s, want->decode_per_sequence_s);
  // The fixture prices a 1,500-token rebuild of the tiny model on this CPU in the range
  // its calibration measured (1,024 tokens took 0.072 s), not the H100 model's 0.04 s.
  EXPECT_GT(got->PrefillSeconds(1500, 0), 0.1);
  EXPECT_LT(got->PrefillSeconds(1500, 0), 0.2);
}

TEST(ReplayDaemonState, RefusesABadSeedByNameAndWithoutSpawn) {
  const std::string bin = testing::BinaryDir();
  testing::TempDir dir;
  WriteTrace(dir.File("t.jsonl"), {{"cat x", 0.1}});
  const std::string run = bin + "/kvkeep replay run " + dir.File("t.jsonl") + " --out " +
                          dir.File("out") + " --policy ttl --no-plots";
  std::ofstream(dir.File("bad.json")) << "{\"version\": 1, \"prefill_per_token_s\": \"x\"}";
  for (const std::string& seed :
       {" --cost-model " + dir.File("bad.json"), " --tool-history " + dir.File("none.jsonl")}) {
    EXPECT_EQ(Shell(run + " --spawn --kvkeepd /nonexistent/kvkeepd" + seed + " 2> " +
                    dir.File("err.txt")),
              1)
        << seed;
    const std::string err = Slurp(dir.File("err.txt"));
    EXPECT_NE(err.find(seed.substr(seed.rfind('/') + 1)), std::string::npos) << err;
    EXPECT_FALSE(DefaultEnv()->FileExists(dir.File("out/ttl/state/cost_model.json")));
  }
  // Without --spawn there is no state directory to seed.
  EXPECT_EQ(Shell(run + " --socket /nonexistent.sock --cost-model " + dir.File("bad.json") +
                  " 2> " + dir.File("err.txt")),
            1);
  EXPECT_NE(Slurp(dir.File("err.txt")).find("need --spawn"), std::string::npos)
      << Slurp(dir.File("err.txt"));
}

}  // namespace
}  // namespace kvkeep::tools
