// The step log (policy/step_log.h): its CSV file round-trips and refuses what is not one,
// steps with swaps are left out of the fit, and a fit to steps priced by a known model's
// step_s (CostModel::StepSeconds over their runs, each run kept apart) recovers it,
// prefill steps under decode_fixed_s included, and steps whose GPU work was billed to the
// next step are left out.
#include "policy/step_log.h"

#include <gtest/gtest.h>

#include <random>

#include "tests/testlib/test_util.h"

namespace kvkeep {
namespace {

CostModel Truth() {  // the H100 8B-shape calibration of 2026-12-06 (straddle8), rounded
  CostModel m;
  m.prefill_per_token_s = 3.3e-5;
  m.prefill_attention_s = 2.3e-9;
  m.decode_fixed_s = 5.5e-3;
  m.decode_per_context_token_s = 1.5e-7;
  m.decode_per_sequence_s = 2.6e-4;
  m.mixed_decode_extra_per_context_token_s = 1.0e-8;
  m.kv_bytes_per_token = 131072;
  m.host_to_device_bytes_per_s = 50e9;
  return m;
}

// Steps like a serving run's: decodes of 1-16 sequences, prefill chunks of 1-256 tokens
// (one or two a step) over contexts up to 30k, and both together.
std::vector<StepTiming> PricedSteps(const CostModel& m, int count) {
  std::mt19937 rng(7);
  auto uniform = [&](int64_t lo, int64_t hi) {
    return std::uniform_int_distribution<int64_t>(lo, hi)(rng);
  };
  std::vector<StepTiming> steps;
  for (int i = 0; i < count; ++i) {
    StepTiming t;
    const int kind = i % 3;  // 0 decode, 1 prefill, 2 mixed
    std::vector<CostModel::PrefillRun> runs;
    if (kind != 0) {
      const int64_t num_runs = uniform(1, 2);
      for (int64_t r = 0; r < num_runs; ++r) {
        runs.push_back({uniform(1, 4) == 1 ? uniform(1, 120) : 256, uniform(0, 30000)});
      }
    }
    if (kind != 1) {
      t.decode_sequences = uniform(1, 16);
      t.decode_context_tokens = t.decode_sequences * uniform(500, 30000);
    }
    for (const CostModel::PrefillRun& r : runs) {
      ++t.prefill_runs;
      t.prefill_tokens += r.new_tokens;
      const double n = static_cast<double>(r.new_tokens);
      t.attention_pairs += n * (static_cast<double>(r.cached_tokens) + n / 2);
    }
    t.step_s = m.StepSeconds(t.decode_sequences, t.decode_context_tokens, runs);
    t.at_s = 0.01 * i;
    steps.push_back(t);
  }
  return steps;
}

TEST(StepLog, FitToStepsPricedByAModelRecoversIt) {
  const CostModel truth = Truth();
  std::vector<TimingSample> samples = StepSamples(PricedSteps(truth, 600));
  ASSERT_EQ(samples.size(), 600u);
  CostModel base;
  base.kv_bytes_per_token = truth.kv_bytes_per_token;
  base.host_to_device_bytes_per_s = truth.host_to_device_bytes_per_s;
  auto fit = FitCostModel(samples, base);
  ASSERT_TRUE(fit.ok()) << fit.status().ToString();
  std::printf("%s", FormatCostFit(*fit).c_str());
  const CostModel& m = fit->model;
  EXPECT_NEAR(m.prefill_per_token_s / truth.prefill_per_token_s, 1, 1e-6);
  EXPECT_NEAR(m.prefill_attention_s / truth.prefill_attention_s, 1, 1e-6);
  EXPECT_NEAR(m.decode_fixed_s / truth.decode_fixed_s, 1, 1e-6);
  EXPECT_NEAR(m.decode_per_context_token_s / truth.decode_per_context_token_s, 1, 1e-6);
  EXPECT_NEAR(m.decode_per_sequence_s / truth.decode_per_sequence_s, 1, 1e-6);
  EXPECT_NEAR(
      m.mixed_decode_extra_per_context_token_s / truth.mixed_decode_extra_per_context_token_s, 1,
      1e-6);
  EXPECT_LT(fit->max_relative_error, 1e-6);
  EXPECT_EQ(m.host_to_device_bytes_per_s, truth.host_to_device_bytes_per_s);  // kept
}

// The CUDA backend synchronises a step that reads no logits only when the next step
// starts, so such a step can log a small fraction of its time and its successor the rest
// (measured on an H100, 2026-12-07: 94 of the 2,285 prefill steps of a `none` run logged
// about 2 ms of a 25 ms price). Those steps are left out, and the prices come back.
TEST(StepLog, StepsWhoseWorkWasBilledToTheNextStepAreLeftOut) {
  const CostModel truth = Truth();
  std::vector<StepTiming> steps = PricedSteps(truth, 600);
  int billed_on = 0;
  for (size_t i = 1; i + 1 < steps.size(); i += 30) {  // every tenth prefill-only step
    ASSERT_EQ(steps[i].decode_sequences, 0);
    steps[i + 1].step_s += 0.9 * steps[i].step_s;
    steps[i].step_s *= 0.1;
    ++billed_on;
  }
  CostModel base;
  base.kv_bytes_per_token = truth.kv_bytes_per_token;
  auto fit = FitCostModel(StepSamples(steps), base);
  ASSERT_TRUE(fit.ok()) << fit.status().ToString();
  std::printf("%s", FormatCostFit(*fit).c_str());
  EXPECT_EQ(fit->num_trimmed, billed_on);
  EXPECT_EQ(fit->rows.size(), steps.size() - billed_on);
  const CostModel& m = fit->model;
  // The successors keep their extra time, so the prices are close, not exact.
  EXPECT_NEAR(m.prefill_per_token_s / truth.prefill_per_token_s, 1, 0.05);
  EXPECT_NEAR(m.prefill_attention_s / truth.prefill_attention_s, 1, 0.05);
  EXPECT_NEAR(m.decode_fixed_s / truth.decode_fixed_s, 1, 0.05);
  EXPECT_NEAR(m.decode_per_context_token_s / truth.decode_per_context_token_s, 1, 0.05);
}

TEST(StepLog, StepsWithSwapsOrNoWorkAreNotFitted) {
  std::vector<StepTiming> steps = PricedSteps(Truth(), 6);
  steps[0].swapped_in_blocks = 3;
  steps[1].swapped_out_blocks = 1;
  steps[2].decode_sequences = steps[2].prefill_tokens = 0;
  EXPECT_EQ(StepSamples(steps).size(), 3u);
}

TEST(StepLog, FileRoundTripsAndBadFilesNameTheLine) {
  testing::TempDir dir;
  StepLog log(4);
  std::vector<StepTiming> steps = PricedSteps(Truth(), 6);
  steps[3].swapped_in_blocks = 12;
  steps[3].swapped_out_blocks = 5;
  for (const StepTiming& s : steps) log.Add(s);
  EXPECT_EQ(log.steps().size(), 4u);  // the first four kept
  EXPECT_EQ(log.dropped(), 2);
  const std::string path = dir.File("steps.csv");
  ASSERT_TRUE(log.Write(DefaultEnv(), path).ok());
  auto back = ReadStepLog(DefaultEnv(), path);
  ASSERT_TRUE(back.ok()) << back.status().ToString();
  ASSERT_EQ(back->size(), 4u);
  for (size_t i = 0; i < 4; ++i) {
    EXPECT_EQ((*back)[i].decode_sequences, steps[i].decode_sequences);
    EXPECT_EQ((*back)[i].decode_context_tokens, steps[i].decode_context_tokens);
    EXPECT_EQ((*back)[i].prefill_runs, steps[i].prefill_runs);
    EXPECT_EQ((*back)[i].prefill_tokens, steps[i].prefill_tokens);
    EXPECT_NEAR((*back)[i].attention_pairs, steps[i].attention_pairs, 0.5);
    EXPECT_NEAR((*back)[i].step_s, steps[i].step_s, 1e-7);
    EXPECT_EQ((*back)[i].swapped_in_blocks, steps[i].swapped_in_blocks);
    EXPECT_EQ((*back)[i].swapped_out_blocks, steps[i].swapped_out_blocks);
  }

  std::string text = DefaultEnv()->ReadFile(path).value();
  const std::string bad = dir.File("bad.csv");
  ASSERT_TRUE(DefaultEnv()->WriteFileAtomic(bad, text + "1,2,3\n").ok());
  auto r = ReadStepLog(DefaultEnv(), bad);
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.status().message().find(":6:"), std::string::npos) << r.status().message();
  ASSERT_TRUE(DefaultEnv()->WriteFileAtomic(bad, text + "1,nan,1,1,1,1,1,0,0\n").ok());
  EXPECT_FALSE(ReadStepLog(DefaultEnv(), bad).ok());
  ASSERT_TRUE(DefaultEnv()->WriteFileAtomic(bad, "policy,t_s\n1,2\n").ok());
  r = ReadStepLog(DefaultEnv(), bad);
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.status().message().find("not a step log"), std::string::npos);
  EXPECT_FALSE(ReadStepLog(DefaultEnv(), dir.File("missing.csv")).ok());
}

}  // namespace
}  // namespace kvkeep
