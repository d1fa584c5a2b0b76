// Replays that do not fit the model: a session longer than the model's context is clipped
// and counted (it still runs its turn), and a replay that runs no model turn at all is a
// clear error saying why (not "gnuplot failed").
#include <gtest/gtest.h>

#include <fstream>
#include <nlohmann/json.hpp>

#include "tests/testlib/test_util.h"

namespace kvkeep::replay {
namespace {

using nlohmann::json;

using testing::Shell;
using testing::Slurp;

json TraceSession(const std::string& id, json events) {
  return {{"format", "kvkeep-trace"},   {"version", 1},          {"session", id},
          {"source", "test"},           {"model", "test-model"}, {"arrival_s", 0.0},
          {"events", std::move(events)}};
}

class ReplayContext : public ::testing::Test {
 protected:
  void SetUp() override {
    if (access((testing::BinaryDir() + "/kvkeepd").c_str(), X_OK) != 0) {
      GTEST_SKIP() << "kvkeepd is not built";
    }
    ASSERT_EQ(
        Shell(kvkeep_ + " make-model --preset tiny --out " + dir_.File("model") + " > /dev/null"),
        0);
  }
  int Replay(const std::vector<json>& sessions, const std::string& flags) {
    std::ofstream trace(dir_.File("trace.jsonl"));
    for (const json& s : sessions) trace << s.dump() << "\n";
    trace.close();
    return Shell(kvkeep_ + " replay run " + dir_.File("trace.jsonl") + " --out " +
                 dir_.File("out") + " --spawn --model " + dir_.File("model") +
                 " --policy lru --agents 2 --time-scale 0 " + flags + " > " +
                 dir_.File("stdout.txt") + " 2> " + dir_.File("stderr.txt"));
  }

  testing::TempDir dir_;
  std::string kvkeep_ = testing::BinaryDir() + "/kvkeep";
};

TEST_F(ReplayContext, ASessionLongerThanTheContextIsClippedCountedAndStillRuns) {
  std::string huge;
  for (int i = 0; i < 40000; ++i) huge += "word" + std::to_string(i % 97) + " ";
  const json model_turn = {{"type", "model"}, {"text", "ok"}, {"completion_tokens", 4}};
  ASSERT_EQ(Replay({TraceSession("long", json::array({{{"type", "system"}, {"text", huge}},
                                                      {{"type", "user"}, {"text", huge}},
                                                      model_turn})),
                    TraceSession("short", json::array({{{"type", "system"}, {"text", "sys"}},
                                                       {{"type", "user"}, {"text", "hi"}},
                                                       model_turn}))},
                   "--no-plots"),
            0)
      << Slurp(dir_.File("stderr.txt"));
  json report = json::parse(Slurp(dir_.File("out/report.json")));
  const json& lru = report["policies"]["lru"];
  EXPECT_EQ(lru["failed_sessions"], 0) << Slurp(dir_.File("out/sessions.csv"));
  EXPECT_EQ(lru["clipped_sessions"], 1) << lru.dump();
  EXPECT_EQ(lru["skipped_sessions"], 0) << lru.dump();
  EXPECT_EQ(lru["turns"], 2) << lru.dump();
  EXPECT_NE(Slurp(dir_.File("stdout.txt")).find("1 sessions longer than the model's context"),
            std::string::npos)
      << Slurp(dir_.File("stdout.txt"));
}

TEST_F(ReplayContext, AReplayThatRunsNoModelTurnIsAClearError) {
  // Sessions without a model turn (plots included: the error comes before gnuplot).
  ASSERT_EQ(
      Replay({TraceSession("talk", json::array({{{"type", "user"}, {"text", "hello"}}}))}, ""), 1);
  const std::string err = Slurp(dir_.File("stderr.txt"));
  EXPECT_NE(err.find("ran no model turn"), std::string::npos) << err;
  EXPECT_EQ(err.find("gnuplot"), std::string::npos) << err;
}

}  // namespace
}  // namespace kvkeep::replay
