#include "tools/replay/synth.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>

#include "tests/testlib/test_util.h"

namespace kvkeep::replay {
namespace {

TEST(Synth, DeterministicPerSeedAndDifferentAcrossSeeds) {
  SynthOptions o;
  o.agents = 8;
  o.seed = testing::TestSeed();
  std::vector<Session> a = Synthesize(o), b = Synthesize(o);
  EXPECT_TRUE(a == b);
  o.seed += 1;
  std::vector<Session> c = Synthesize(o);
  EXPECT_FALSE(a == c);
}

TEST(Synth, SessionsAreValidCanonicalTraces) {
  SynthOptions o;
  o.agents = 20;
  o.seed = testing::TestSeed();
  o.arrival_rate_per_s = 2.0;
  double last_arrival = -1;
  for (const Session& s : Synthesize(o)) {
    Result<Session> back = SessionFromJson(SessionToJson(s));
    ASSERT_TRUE(back.ok()) << back.status().ToString();
    EXPECT_TRUE(*back == s);
    EXPECT_GE(s.NumModelTurns(), o.min_turns);
    EXPECT_LE(s.NumModelTurns(), o.max_turns);
    EXPECT_GE(s.arrival_s, last_arrival);
    last_arrival = s.arrival_s;
    int begins = 0, ends = 0;
    for (const Event& e : s.events) {
      begins += e.type == EventType::kToolBegin;
      ends += e.type == EventType::kToolEnd;
      if (e.type == EventType::kToolEnd) {
        EXPECT_GT(e.duration_s, 0);
        EXPECT_LE(static_cast<int>(e.text.size()), o.max_observation_chars + 64);
      }
    }
    EXPECT_EQ(begins, ends);
    EXPECT_EQ(begins, s.NumModelTurns());
  }
}

// With many agents, the sample statistics approach the fitted distribution: the median
// number of turns approaches exp(mu) and the run-command share approaches p_run.
TEST(Synth, StatisticsFollowTheFittedModel) {
  SynthOptions o;
  o.agents = 400;
  o.seed = testing::TestSeed();
  std::vector<int> turns;
  int runs = 0, commands = 0;
  std::vector<double> tool_s;
  for (const Session& s : Synthesize(o)) {
    turns.push_back(s.NumModelTurns());
    for (const Event& e : s.events) {
      if (e.type == EventType::kToolBegin) {
        ++commands;
        runs += ClassifyCommand(e.command) == CommandClass::kRun;
      }
      if (e.type == EventType::kToolEnd) tool_s.push_back(e.duration_s);
    }
  }
  std::nth_element(turns.begin(), turns.begin() + turns.size() / 2, turns.end());
  double median_turns = turns[turns.size() / 2];
  EXPECT_NEAR(median_turns, std::exp(o.turns.mu), 0.1 * std::exp(o.turns.mu));
  EXPECT_NEAR(static_cast<double>(runs) / commands, o.p_run, 0.03);
  std::nth_element(tool_s.begin(), tool_s.begin() + tool_s.size() / 2, tool_s.end());
  EXPECT_GT(tool_s[tool_s.size() / 2], 0.15);
  EXPECT_LT(tool_s[tool_s.size() / 2], 0.45);
}

}  // namespace
}  // namespace kvkeep::replay
