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
#include <map>
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

// The two passes of --fidelity through a plan file: --plan-out writes the routed tokens,
// --plan scores them (without the data) and gives the same report as one run; --out holds
// the report with each conversation's figures. With a budget of the whole history nothing is
// scored or evicted, so the tokens forwarded are exactly each build's history plus each
// question's forced tokens once per cache it is scored on (full, recent, snapkv, its episode).
TEST(EvalEpisodes, FidelityPlanFileRoundTripsAndCountsItsTokens) {
  testing::TempDir dir;
  const std::string model = dir.path() + "/tiny";
  ASSERT_TRUE(MakeSyntheticModel("tiny", 7, model).ok());
  const std::string common = "--fidelity --llm " + model + " --context 1280 ";
  const std::string scoring = " --block 128 --fractions 1";
  Output direct = RunEval(common + "--json --embedder hashed --data " + Fixture() + scoring);
  ASSERT_EQ(direct.exit_code, 0) << direct.out;
  Output prepared =
      RunEval(common + "--embedder hashed --data " + Fixture() + " --plan-out " + dir.File("plan"));
  ASSERT_EQ(prepared.exit_code, 0) << prepared.out;
  auto plan_text = DefaultEnv()->ReadFile(dir.File("plan"));
  ASSERT_TRUE(plan_text.ok());
  const nlohmann::json plan = nlohmann::json::parse(*plan_text);
  EXPECT_EQ(plan["format"], "kvkeep-fidelity-plan");
  EXPECT_EQ(plan["embedder"], "hashed");
  ASSERT_EQ(plan["conversations"].size(), 1u);
  const auto& conv = plan["conversations"][0];
  ASSERT_EQ(conv["questions"].size(), 4u);
  std::set<int> routed;
  int64_t forced = 0;
  for (const auto& q : conv["questions"]) {
    routed.insert(q["episode"].get<int>());
    forced += q["prompt"].size() + q["answer"].size() - 1;
  }
  const int64_t history = conv["history"].size();

  Output scored =
      RunEval(common + "--json --plan " + dir.File("plan") + scoring + " --out " + dir.File("r"));
  ASSERT_EQ(scored.exit_code, 0) << scored.out;
  const nlohmann::json a = nlohmann::json::parse(direct.out.substr(direct.out.rfind("\n{") + 1));
  const nlohmann::json b = nlohmann::json::parse(scored.out.substr(scored.out.rfind("\n{") + 1));
  ASSERT_EQ(a["methods"].size(), 4u);
  ASSERT_EQ(b["methods"].size(), a["methods"].size());
  for (size_t i = 0; i < a["methods"].size(); ++i) {
    EXPECT_EQ(b["methods"][i]["method"], a["methods"][i]["method"]);
    EXPECT_NEAR(b["methods"][i]["mean_nll"].get<double>(),
                a["methods"][i]["mean_nll"].get<double>(), 1e-9);
  }
  EXPECT_EQ(b["forwarded_tokens"].get<int64_t>(),
            history * (3 + static_cast<int64_t>(routed.size())) + 4 * forced);
  EXPECT_EQ(b["history_tokens"].get<int64_t>(), history);
  EXPECT_TRUE(b["complete"].get<bool>());
  EXPECT_EQ(b["device"], "cpu");
  auto report_text = DefaultEnv()->ReadFile(dir.File("r"));
  ASSERT_TRUE(report_text.ok());
  const nlohmann::json r = nlohmann::json::parse(*report_text);
  EXPECT_EQ(r["methods"], b["methods"]);
  ASSERT_EQ(r["per_conversation"].size(), 1u);
  EXPECT_EQ(r["per_conversation"][0]["sample_id"], conv["sample_id"]);
  EXPECT_EQ(r["per_conversation"][0]["forwarded_tokens"], b["forwarded_tokens"]);
}

// The diagnosis options (issue 13) on the tiny model: --all-episodes scores every question
// on every episode's cache, so its routed NLL equals a plain run's, the best episode's is
// at most the routed and the mean one's; --recent-tokens and --reserve-sinks show in the
// kept shares; episodic-question builds one cache per question; --methods runs only those.
TEST(EvalEpisodes, FidelityDiagnosticsOnTheTinyModel) {
  testing::TempDir dir;
  const std::string model = dir.path() + "/tiny";
  ASSERT_TRUE(MakeSyntheticModel("tiny", 7, model).ok());
  const std::string common = "--fidelity --llm " + model + " --context 1280 ";
  ASSERT_EQ(
      RunEval(common + "--embedder hashed --data " + Fixture() + " --plan-out " + dir.File("plan"))
          .exit_code,
      0);
  auto run = [&](const std::string& args) {
    Output o = RunEval(common + "--json --plan " + dir.File("plan") +
                       " --block 128 --fractions 0.25 " + args);
    EXPECT_EQ(o.exit_code, 0) << o.out;
    std::map<std::string, nlohmann::json> by_method;
    if (o.exit_code != 0) return by_method;
    const nlohmann::json j = nlohmann::json::parse(o.out.substr(o.out.rfind("\n{") + 1));
    for (const auto& m : j["methods"]) by_method[m["method"].get<std::string>()] = m;
    return by_method;
  };
  auto nll = [](const nlohmann::json& m) { return m["mean_nll"].get<double>(); };
  auto plain = run("--methods episodic");
  ASSERT_EQ(plain.size(), 1u);
  auto all = run("--methods episodic --all-episodes");
  ASSERT_EQ(all.size(), 3u);
  EXPECT_NEAR(nll(all["episodic"]), nll(plain["episodic"]), 1e-9);
  EXPECT_LE(nll(all["episodic-best"]), nll(all["episodic"]) + 1e-12);
  EXPECT_LE(nll(all["episodic-best"]), nll(all["episodic-mean"]) + 1e-12);
  EXPECT_LT(plain["episodic"]["kept_sinks"].get<double>(), 1.0);

  auto reserved = run("--methods episodic --recent-tokens 64 --reserve-sinks");
  ASSERT_EQ(reserved.size(), 1u);
  EXPECT_EQ(reserved["episodic"]["kept_sinks"].get<double>(), 1.0);
  EXPECT_GE(reserved["episodic"]["kept_recent"].get<double>(), 64.0 / 256);
  EXPECT_NE(nll(reserved["episodic"]), nll(plain["episodic"]));

  // Per-layer budgets at a block as long as the whole history: the default calibration
  // text (four blocks, cut to the pool) still spans more than one block.
  Output layered = RunEval(common + "--json --plan " + dir.File("plan") +
                           " --block 2048 --fractions 0.25 --methods episodic --layer-alpha 1" +
                           " --calibration " + testing::FixturesDir() +
                           "/corpus/mini_swe_agent_messages.txt --state-dir " + dir.File("state"));
  EXPECT_EQ(layered.exit_code, 0) << layered.out;

  auto question = run("--methods episodic-question --max-questions 2");
  ASSERT_EQ(question.size(), 1u);
  EXPECT_EQ(question["episodic-question"]["caches"].get<int>(), 2);
}

// A plan that does not fit the model, a damaged plan, an unknown conversation, a deadline
// already past and an unknown device each end with a clear error and exit code 1.
TEST(EvalEpisodes, FidelityBadPlansAndOptionsGetAClearError) {
  testing::TempDir dir;
  const std::string model = dir.path() + "/tiny";
  ASSERT_TRUE(MakeSyntheticModel("tiny", 7, model).ok());
  const std::string common = "--fidelity --llm " + model + " --context 1280 --block 128 ";
  ASSERT_EQ(
      RunEval(common + "--embedder hashed --data " + Fixture() + " --plan-out " + dir.File("plan"))
          .exit_code,
      0);
  auto text = DefaultEnv()->ReadFile(dir.File("plan"));
  ASSERT_TRUE(text.ok());
  nlohmann::json plan = nlohmann::json::parse(*text);
  auto expect_error = [&](const std::string& args, const std::string& what) {
    Output o = RunEval(common + args);
    EXPECT_EQ(o.exit_code, 1) << o.out;
    EXPECT_NE(o.out.find(what), std::string::npos) << o.out;
  };
  nlohmann::json bad = plan;
  bad["conversations"][0]["history"][3] = 1 << 20;
  ASSERT_TRUE(DefaultEnv()->WriteFileAtomic(dir.File("bad"), bad.dump()).ok());
  expect_error("--plan " + dir.File("bad"), "outside the vocabulary");
  bad = plan;
  bad["conversations"][0]["questions"][0]["episode"] = 99;
  ASSERT_TRUE(DefaultEnv()->WriteFileAtomic(dir.File("bad"), bad.dump()).ok());
  expect_error("--plan " + dir.File("bad"), "no episode");
  ASSERT_TRUE(DefaultEnv()->WriteFileAtomic(dir.File("bad"), text->substr(0, 100)).ok());
  expect_error("--plan " + dir.File("bad"), "not a JSON object");
  bad = plan;
  bad["vocab_size"] = 7;
  ASSERT_TRUE(DefaultEnv()->WriteFileAtomic(dir.File("bad"), bad.dump()).ok());
  expect_error("--plan " + dir.File("bad"), "vocabulary of 7");
  expect_error("--plan " + dir.File("plan") + " --conversations nosuch", "nosuch");
  expect_error("--plan " + dir.File("plan") + " --deadline-s 0.000001", "stopped before");
  expect_error("--plan " + dir.File("plan") + " --device tpu", "unknown device");
#ifndef KVKEEP_HAVE_CUDA
  expect_error("--plan " + dir.File("plan") + " --device cuda", "no CUDA backend");
#endif
}

}  // namespace
}  // namespace kvkeep
