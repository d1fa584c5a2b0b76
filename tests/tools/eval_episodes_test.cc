// `kvkeep eval-episodes` run as a user would, on tests/fixtures/locomo_mini (see its
// make_fixture.py): four sessions with disjoint topics, two 4-turn windows each, and
// questions that name their evidence window's topic and marker word. The expected rates
// are computed here from the fixture's evidence ids alone: hit@1 and medoid coverage are
// 1 (topics separate, medoids cover two-window episodes), chance is the mean over
// questions of (topics or windows holding evidence) / E.
#include <gtest/gtest.h>
#include <sys/wait.h>

#include <array>
#include <cmath>
#include <cstdio>
#include <set>
#include <string>

#include <nlohmann/json.hpp>

#include "base/file.h"
#include "engine/synthetic_model.h"
#include "tests/testlib/test_util.h"

namespace kvkeep {
namespace {

struct Output {
  int exit_code;
  std::string out;
};

Output RunEval(const std::string& args) {
  Output o{-1, ""};
  const std::string cmd = testing::BinaryDir() + "/kvkeep eval-episodes " + args + " 2>&1";
  FILE* p = popen(cmd.c_str(), "r");
  if (p == nullptr) return o;
  std::array<char, 4096> buf;
  size_t n;
  while ((n = fread(buf.data(), 1, buf.size(), p)) > 0) o.out.append(buf.data(), n);
  const int rc = pclose(p);
  o.exit_code = WIFEXITED(rc) ? WEXITSTATUS(rc) : -1;
  return o;
}

std::string Fixture() { return testing::FixturesDir() + "/locomo_mini/locomo_mini.json"; }

// Expected chance at E = 4 (episode = session) and E = 8 (episode = window), from the
// evidence ids "D<session>:<turn>" (a string may hold several, split on ';').
struct Expected {
  double chance4 = 0, chance8 = 0;
  int questions = 0, skipped = 0;
};

Expected FromFixture() {
  auto text = DefaultEnv()->ReadFile(Fixture());
  EXPECT_TRUE(text.ok());
  Expected e;
  const nlohmann::json doc = nlohmann::json::parse(*text);
  for (const auto& qa : doc[0]["qa"]) {
    const int category = qa["category"].get<int>();
    if (category < 1 || category > 4) continue;
    std::set<int> sessions, windows;
    for (const auto& ev : qa["evidence"]) {
      std::string s = ev.get<std::string>();
      for (size_t pos = 0; (pos = s.find('D', pos)) != std::string::npos; ++pos) {
        int session = 0, turn = 0;
        if (std::sscanf(s.c_str() + pos, "D%d:%d", &session, &turn) != 2) continue;
        if (session < 1 || session > 4 || turn < 1 || turn > 8) continue;  // unknown id
        sessions.insert(session);
        windows.insert((session - 1) * 2 + (turn - 1) / 4);
      }
    }
    if (sessions.empty()) {
      ++e.skipped;
      continue;
    }
    ++e.questions;
    e.chance4 += sessions.size() / 4.0;
    e.chance8 += windows.size() / 8.0;
  }
  e.chance4 /= e.questions;
  e.chance8 /= e.questions;
  return e;
}

TEST(EvalEpisodes, RatesMatchTheFixturesConstruction) {
  const Expected want = FromFixture();
  ASSERT_EQ(want.questions, 9);
  for (const std::string router : {"top:1", "centroid", "top:2", "soft:0.05"}) {
    Output o = RunEval("--data " + Fixture() + " --embedder hashed --router " + router +
                       " --episodes 4,8 --seeds 2 --json");
    ASSERT_EQ(o.exit_code, 0) << o.out;
    auto j = nlohmann::json::parse(o.out);
    EXPECT_EQ(j["embedder"], "hashed");
    EXPECT_EQ(j["router"], router);
    EXPECT_EQ(j["questions"].get<int>(), want.questions);
    EXPECT_EQ(j["questions_without_evidence"].get<int>(), want.skipped);
    // The headline object is E = 4.
    EXPECT_EQ(j["episodes"].get<int>(), 4);
    EXPECT_DOUBLE_EQ(j["hit_at_1"].get<double>(), 1.0) << router;
    EXPECT_NEAR(j["chance"].get<double>(), want.chance4, 1e-9);
    EXPECT_DOUBLE_EQ(j["medoid_coverage"].get<double>(), 1.0);
    const auto& e8 = j["by_episodes"][1];
    EXPECT_EQ(e8["episodes"].get<int>(), 8);
    EXPECT_NEAR(e8["chance"].get<double>(), want.chance8, 1e-9);
    if (router != "centroid") {
      // One window per episode: the nearest window is the marker's.
      EXPECT_DOUBLE_EQ(e8["hit_at_1"].get<double>(), 1.0) << router;
    }
  }
}

TEST(EvalEpisodes, BadInputGetsAClearError) {
  testing::TempDir dir;
  ASSERT_TRUE(DefaultEnv()->WriteFileAtomic(dir.File("bad.json"), "{not json").ok());
  Output o = RunEval("--data " + dir.File("bad.json") + " --embedder hashed");
  EXPECT_EQ(o.exit_code, 1);
  EXPECT_NE(o.out.find("not valid JSON"), std::string::npos) << o.out;
  o = RunEval("--data " + dir.File("missing.json") + " --embedder hashed");
  EXPECT_EQ(o.exit_code, 1);
  o = RunEval("--data " + Fixture() + " --embedder hashed --router top:0");
  EXPECT_EQ(o.exit_code, 1);
  EXPECT_NE(o.out.find("router"), std::string::npos) << o.out;
  o = RunEval("--data " + Fixture() + " --embedder nonsense");
  EXPECT_EQ(o.exit_code, 1);
}

// --fidelity on the tiny random-weight model, for mechanics only: with a budget that covers
// the history every method equals full KV exactly; at a quarter, each cache holds a
// quarter of the entries and every NLL is a finite positive number.
TEST(EvalEpisodes, FidelityMechanicsOnTheTinyModel) {
  testing::TempDir dir;
  const std::string model = dir.path() + "/tiny";
  ASSERT_TRUE(MakeSyntheticModel("tiny", 7, model).ok());
  Output o = RunEval("--fidelity --json --embedder hashed --llm " + model + " --data " + Fixture() +
                     " --context 1280 --block 128 --fractions 1,0.25");
  ASSERT_EQ(o.exit_code, 0) << o.out;
  const nlohmann::json j = nlohmann::json::parse(o.out.substr(o.out.rfind("\n{") + 1));
  EXPECT_EQ(j["conversations"].get<int>(), 1);
  EXPECT_EQ(j["questions"].get<int>(), 4);  // evidence inside the first 1024 bytes
  const auto& methods = j["methods"];
  ASSERT_EQ(methods.size(), 7u);
  ASSERT_EQ(methods[0]["method"], "full");
  const double full = methods[0]["mean_nll"].get<double>();
  const int64_t full_bytes = methods[0]["kv_bytes"].get<int64_t>();
  EXPECT_GT(full, 0.0);
  for (size_t i = 1; i < methods.size(); ++i) {
    const auto& m = methods[i];
    SCOPED_TRACE(m.dump());
    const double nll = m["mean_nll"].get<double>();
    EXPECT_TRUE(std::isfinite(nll) && nll > 0.0);
    if (m["fraction"].get<double>() == 1.0) {
      EXPECT_NEAR(nll, full, 1e-9 * full);  // same per-question NLLs, summed in another order
      EXPECT_EQ(m["kv_bytes"].get<int64_t>(), full_bytes);
    } else {
      EXPECT_NEAR(m["kv_bytes"].get<double>() / full_bytes, 0.25, 0.01);
    }
  }
}

}  // namespace
}  // namespace kvkeep
