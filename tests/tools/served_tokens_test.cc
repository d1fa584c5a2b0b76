// The simulator's served token counts (bench/sim/served_tokens.h) against a real kvkeepd:
// `kvkeep replay run --spawn` replays a trace on the tiny synthetic model (byte-level
// tokenizer and its chat template), and every turn's prompt and output as the daemon
// counted them (turns.csv) must equal what the counter predicts, turn by turn. The pool
// is small enough that the replayer clips messages at the context limit, so the clipping
// rules are checked too.
#include "bench/sim/served_tokens.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <map>
#include <nlohmann/json.hpp>
#include <sstream>

#include "tests/testlib/test_util.h"
#include "tools/replay/agent_workload.h"
#include "tools/replay/importers.h"
#include "tools/replay/replayer.h"

namespace kvkeep::sim {
namespace {

using testing::Shell;
using testing::Slurp;

struct DaemonTurn {
  int64_t prompt = 0, generated = 0;
};

// turns.csv: prompt_tokens (column 4) and generated_tokens (10) per (session, turn).
std::map<std::string, std::vector<DaemonTurn>> ReadTurns(const std::string& path) {
  std::map<std::string, std::vector<DaemonTurn>> out;
  std::istringstream in(Slurp(path));
  std::string line;
  std::getline(in, line);
  while (std::getline(in, line)) {
    std::vector<std::string> f;
    std::stringstream ls(line);
    for (std::string cell; std::getline(ls, cell, ',');) f.push_back(cell);
    if (f.size() < 11) continue;
    auto& turns = out[f[1]];
    const size_t turn = std::stoul(f[2]);
    if (turns.size() <= turn) turns.resize(turn + 1);
    turns[turn] = {std::stoll(f[4]), std::stoll(f[10])};
  }
  return out;
}

class ServedTokens : public ::testing::Test {
 protected:
  void SetUp() override {
    kvkeep_ = testing::BinaryDir() + "/kvkeep";
    if (access((testing::BinaryDir() + "/kvkeepd").c_str(), X_OK) != 0) {
      GTEST_SKIP() << "kvkeepd is not built";
    }
    ASSERT_EQ(Shell(kvkeep_ + " make-model --preset tiny --seed 3 --out " + dir_.File("model") +
                    " > /dev/null"),
              0);
  }

  // Replays `trace` (max_turns each) under `none` with a pool of kv_blocks, one session at a
  // time (a preempted turn would count its prompt twice), and checks every
  // turn against the counter; returns the number of turns checked.
  int ReplayAndCompare(const std::string& trace, int max_turns, int kv_blocks) {
    const std::string out = dir_.File("out");
    const std::string cmd = kvkeep_ + " replay run " + trace + " --out " + out +
                            " --spawn --model " + dir_.File("model") +
                            " --policy none --agents 1 --no-plots --time-scale 0 --max-turns " +
                            std::to_string(max_turns) + " -- --num-kv-blocks " +
                            std::to_string(kv_blocks) + " > /dev/null 2> " + dir_.File("err.txt");
    EXPECT_EQ(Shell(cmd), 0) << Slurp(dir_.File("err.txt"));
    const auto daemon = ReadTurns(out + "/turns.csv");

    auto sessions = replay::ReadTraceFile(trace);
    EXPECT_TRUE(sessions.ok());
    auto counter = ServedTokenCounter::Create(DefaultEnv(), dir_.File("model"));
    EXPECT_TRUE(counter.ok()) << counter.status().ToString();
    nlohmann::json config = nlohmann::json::parse(Slurp(dir_.File("model") + "/config.json"));
    ServedTokenOptions so;
    so.max_context_tokens = std::min<int64_t>(int64_t{kv_blocks} * 16,
                                              config["max_position_embeddings"].get<int64_t>());
    so.max_turns = max_turns;
    auto served = (*counter)->CountAll(*sessions, so);
    EXPECT_TRUE(served.ok()) << served.status().ToString();
    replay::WorkloadOptions w;
    w.max_turns = max_turns;
    w.served_tokens = &*served;
    auto programs = replay::ProgramsFromTrace(*sessions, w);
    EXPECT_TRUE(programs.ok()) << programs.status().ToString();
    int checked = 0;
    for (size_t i = 0; i < sessions->size(); ++i) {
      const auto it = daemon.find(replay::DaemonSessionId(i, (*sessions)[i].id));
      if (it == daemon.end()) continue;
      const replay::AgentProgram* p = nullptr;
      for (const auto& q : *programs) {
        if (q.id == (*sessions)[i].id) p = &q;
      }
      EXPECT_NE(p, nullptr);
      if (p == nullptr) continue;
      EXPECT_EQ(p->steps.size(), it->second.size()) << p->id;
      // Cut where the replay stopped at max_turns with turns left (it then closes the
      // session at that turn's reply: the simulator must not wait out the tool after it).
      EXPECT_EQ(p->cut, max_turns > 0 && static_cast<int>(it->second.size()) == max_turns &&
                            (*sessions)[i].NumModelTurns() > max_turns)
          << p->id;
      int64_t context = 0;
      for (size_t k = 0; k < std::min(p->steps.size(), it->second.size()); ++k) {
        const replay::AgentStep& step = p->steps[k];
        EXPECT_EQ(context + step.appended_tokens, it->second[k].prompt) << p->id << " turn " << k;
        EXPECT_EQ(step.output_tokens, it->second[k].generated) << p->id << " turn " << k;
        context += step.appended_tokens + step.output_tokens;
        ++checked;
      }
    }
    return checked;
  }

  testing::TempDir dir_;
  std::string kvkeep_;
};

TEST_F(ServedTokens, EqualTheDaemonsCountsTurnByTurn) {
  std::vector<replay::Session> sessions;
  ASSERT_TRUE(replay::ImportMiniSweAgent(
                  testing::FixturesDir() + "/replay/mini-swe-agent-v2.traj.json", {}, &sessions)
                  .ok());
  ASSERT_TRUE(replay::WriteTraceFile(dir_.File("trace.jsonl"), sessions).ok());
  // A large pool: nothing is clipped.
  EXPECT_GE(ReplayAndCompare(dir_.File("trace.jsonl"), 0, 4096), 3);
}

TEST_F(ServedTokens, ACutSessionEndsAtItsLastTurn) {
  std::vector<replay::Session> sessions;
  ASSERT_TRUE(replay::ImportMiniSweAgent(
                  testing::FixturesDir() + "/replay/mini-swe-agent-v2.traj.json", {}, &sessions)
                  .ok());
  ASSERT_GT(sessions[0].NumModelTurns(), 2);
  ASSERT_TRUE(replay::WriteTraceFile(dir_.File("trace.jsonl"), sessions).ok());
  EXPECT_EQ(ReplayAndCompare(dir_.File("trace.jsonl"), 2, 4096), 2);
}

TEST_F(ServedTokens, FollowTheReplayersClippingAtTheContextLimit) {
  KVKEEP_REQUIRE_SHARED_DATA();
  std::vector<replay::Session> sessions;
  const std::string dir = testing::SharedDataDir() + "/traces/mini-swe-agent-v2-deepseek/";
  for (const char* f : {"astropy__astropy-12907.traj.json", "astropy__astropy-14182.traj.json"}) {
    ASSERT_TRUE(replay::ImportMiniSweAgent(dir + f, {}, &sessions).ok()) << f;
  }
  ASSERT_TRUE(replay::WriteTraceFile(dir_.File("trace.jsonl"), sessions).ok());
  // 256 blocks: a 4,096-token context, which these sessions pass within a few turns.
  const int turns = ReplayAndCompare(dir_.File("trace.jsonl"), 8, 256);
  EXPECT_GE(turns, 3);
  EXPECT_LT(turns, 16) << "the context limit should have ended the sessions early";
}

}  // namespace
}  // namespace kvkeep::sim
