// The policy benchmark's workload: agent programs from a canonical trace (tool durations
// checked against the raw trajectory's timestamps) and seeded Poisson arrivals.
#include "tools/replay/agent_workload.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <fstream>
#include <nlohmann/json.hpp>

#include "tests/testlib/test_util.h"
#include "tools/replay/importers.h"

namespace kvkeep::replay {
namespace {

using nlohmann::json;

TEST(AgentWorkload, ProgramsCarryTheRecordedToolTimes) {
  const std::string path = testing::FixturesDir() + "/replay/mini-swe-agent-v2.traj.json";
  std::vector<Session> sessions;
  ASSERT_TRUE(ImportMiniSweAgent(path, {}, &sessions).ok());
  auto programs = ProgramsFromTrace(sessions, {});
  ASSERT_TRUE(programs.ok()) << programs.status().ToString();
  ASSERT_EQ(programs->size(), 1u);
  const AgentProgram& p = (*programs)[0];
  ASSERT_EQ(static_cast<int>(p.steps.size()), sessions[0].NumModelTurns());

  // Reference from the raw file: tool time = tool message ts - assistant ts (clamped).
  std::ifstream in(path);
  json doc = json::parse(in);
  std::vector<double> want;
  std::vector<std::string> commands;
  double assistant_ts = 0;
  for (const json& m : doc["messages"]) {
    const double ts = m.contains("extra") && m["extra"].contains("timestamp")
                          ? m["extra"]["timestamp"].get<double>()
                          : 0;
    if (m["role"] == "assistant") {
      assistant_ts = ts;
      commands.push_back(
          json::parse(m["tool_calls"][0]["function"]["arguments"].get<std::string>())["command"]);
    }
    if (m["role"] == "tool") want.push_back(std::max(0.0, ts - assistant_ts));
  }
  ASSERT_EQ(want.size(), 3u);  // the fixture's fourth call has no result
  for (size_t i = 0; i < want.size(); ++i) {
    EXPECT_EQ(p.steps[i].tool, "bash");
    EXPECT_EQ(p.steps[i].command, commands[i]);
    EXPECT_TRUE(p.steps[i].tool_timed);
    EXPECT_NEAR(p.steps[i].tool_s, want[i], 1e-3) << i;
  }
  // The first turn's context is the system and task messages, at 3.4 bytes a token.
  int64_t first_context = 0;
  for (const json& m : doc["messages"]) {
    if (m["role"] == "assistant") break;
    first_context += static_cast<int64_t>(std::ceil(m["content"].get<std::string>().size() / 3.4));
  }
  EXPECT_EQ(p.steps[0].appended_tokens, first_context);
  EXPECT_GT(p.steps[1].appended_tokens, 0);  // the first tool result
  EXPECT_GT(p.ContextTokens(), p.steps[0].appended_tokens);
}

TEST(AgentWorkload, RefusesATraceWithoutModelTurns) {
  Session s;
  s.id = "x";
  s.events.push_back({});
  auto programs = ProgramsFromTrace({s}, {});
  EXPECT_TRUE(programs.status().IsInvalidArgument());
  WorkloadOptions bad;
  bad.bytes_per_token = 0;
  EXPECT_TRUE(ProgramsFromTrace({s}, bad).status().IsInvalidArgument());
}

TEST(AgentWorkload, PoissonArrivalsAreSeededWithTheRightRate) {
  const uint64_t seed = testing::TestSeed();
  const std::vector<double> a = PoissonArrivals(20000, 4.0, seed);
  EXPECT_EQ(a, PoissonArrivals(20000, 4.0, seed));
  EXPECT_NE(a, PoissonArrivals(20000, 4.0, seed + 1));
  EXPECT_EQ(a[0], 0.0);
  EXPECT_TRUE(std::is_sorted(a.begin(), a.end()));
  // Mean gap 1/rate; the count in any unit interval is Poisson(4): variance = mean.
  EXPECT_NEAR(a.back() / (a.size() - 1), 0.25, 0.25 * 0.03) << seed;
  std::vector<int> per_second(static_cast<size_t>(a.back()) + 1);
  for (double t : a) ++per_second[static_cast<size_t>(t)];
  per_second.pop_back();  // the last, partial second
  double mean = 0, var = 0;
  for (int c : per_second) mean += c;
  mean /= per_second.size();
  for (int c : per_second) var += (c - mean) * (c - mean);
  var /= per_second.size() - 1;
  EXPECT_NEAR(var / mean, 1.0, 0.1) << seed;

  auto arrivals = MakeArrivals(3, 8, 2.0, seed);
  ASSERT_TRUE(arrivals.ok());
  ASSERT_EQ(arrivals->size(), 8u);
  for (size_t i = 0; i < 8; ++i) EXPECT_EQ((*arrivals)[i].program, i % 3);
  EXPECT_TRUE(MakeArrivals(0, 8, 2.0, seed).status().IsInvalidArgument());
  EXPECT_TRUE(MakeArrivals(3, 0, 2.0, seed).status().IsInvalidArgument());
  EXPECT_TRUE(MakeArrivals(3, 8, 0.0, seed).status().IsInvalidArgument());
}

}  // namespace
}  // namespace kvkeep::replay
