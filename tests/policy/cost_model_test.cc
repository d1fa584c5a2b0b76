// The cost model: least squares recovers known coefficients, keeps them non-negative,
// refuses samples that cannot fit a coefficient, round-trips through its JSON file, and
// fits the 8B-shape H100 figures of bench/RESULTS.md (the fit is printed).
#include "policy/cost_model.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <random>

#include "policy/ttl_policy.h"
#include "tests/testlib/test_util.h"

namespace kvkeep {
namespace {

using Kind = TimingSample::Kind;

TimingSample Prefill(int64_t n, int64_t c, double s) { return {Kind::kPrefill, n, c, 0, s, ""}; }
TimingSample Decode(int64_t ctx, double s) { return {Kind::kDecode, 0, 0, ctx, s, ""}; }
TimingSample DecodeBatch(int64_t ctx, int64_t seqs, double s) {
  return {Kind::kDecode, 0, 0, ctx, s, "", seqs};
}
TimingSample Mixed(int64_t ctx, int64_t seqs, int64_t n, int64_t c, double s) {
  return {Kind::kMixedStep, n, c, ctx, s, "", seqs};
}

// The 8B H100 fit of the last GPU run (bench/agents_gpu_2026-12-06_long.json), with a
// mixed-step extra.
CostModel MixedTruth() {
  CostModel m;
  m.prefill_per_token_s = 3.5e-5;
  m.prefill_attention_s = 1.1e-9;
  m.decode_fixed_s = 5.9e-3;
  m.decode_per_context_token_s = 2.3e-8;
  m.decode_per_sequence_s = 3.7e-4;
  m.mixed_decode_extra_per_context_token_s = 5e-8;
  m.kv_bytes_per_token = 131072;
  return m;
}

TEST(CostModel, LeastSquaresRecoversKnownCoefficients) {
  CostModel truth;
  truth.prefill_per_token_s = 2.5e-5;
  truth.prefill_attention_s = 1.3e-9;
  truth.decode_fixed_s = 6e-3;
  truth.decode_per_context_token_s = 4e-8;
  std::vector<TimingSample> exact, noisy;
  const uint64_t seed = testing::TestSeed();
  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<double> noise(0.98, 1.02);
  for (int64_t n : {256, 1024, 4096, 16384}) {
    for (int64_t c : {0, 8192, 32768}) {
      exact.push_back(Prefill(n, c, truth.PrefillSeconds(n, c)));
      noisy.push_back(Prefill(n, c, truth.PrefillSeconds(n, c) * noise(rng)));
    }
  }
  for (int64_t ctx : {512, 8192, 65536, 262144}) {
    exact.push_back(Decode(ctx, truth.DecodeStepSeconds(ctx)));
    noisy.push_back(Decode(ctx, truth.DecodeStepSeconds(ctx) * noise(rng)));
  }
  auto fit = FitCostModel(exact, truth);
  ASSERT_TRUE(fit.ok()) << fit.status().ToString();
  EXPECT_NEAR(fit->model.prefill_per_token_s, truth.prefill_per_token_s, 1e-9 * 2.5e-5 * 1e3);
  EXPECT_NEAR(fit->model.prefill_attention_s / truth.prefill_attention_s, 1.0, 1e-6);
  EXPECT_NEAR(fit->model.decode_fixed_s / truth.decode_fixed_s, 1.0, 1e-6);
  EXPECT_NEAR(fit->model.decode_per_context_token_s / truth.decode_per_context_token_s, 1.0, 1e-6);
  EXPECT_LT(fit->max_relative_error, 1e-6);
  auto rough = FitCostModel(noisy, truth);
  ASSERT_TRUE(rough.ok());
  EXPECT_NEAR(rough->model.prefill_per_token_s / truth.prefill_per_token_s, 1.0, 0.05) << seed;
  EXPECT_NEAR(rough->model.prefill_attention_s / truth.prefill_attention_s, 1.0, 0.05) << seed;
  EXPECT_NEAR(rough->model.decode_fixed_s / truth.decode_fixed_s, 1.0, 0.05) << seed;
  EXPECT_LT(rough->max_relative_error, 0.05);
}

TEST(CostModel, CoefficientsStayNonNegative) {
  // Decode steps that get faster with context would give a negative slope.
  std::vector<TimingSample> s = {Prefill(1000, 0, 0.02), Prefill(4000, 0, 0.09),
                                 Decode(1000, 0.010), Decode(100000, 0.009)};
  auto fit = FitCostModel(s, {});
  ASSERT_TRUE(fit.ok()) << fit.status().ToString();
  EXPECT_EQ(fit->model.decode_per_context_token_s, 0.0);
  EXPECT_GT(fit->model.decode_fixed_s, 0.009);
  EXPECT_LT(fit->model.decode_fixed_s, 0.010);
}

TEST(CostModel, RefusesSamplesThatCannotFitACoefficient) {
  auto no_decode = FitCostModel({Prefill(1000, 0, 0.02), Prefill(4000, 0, 0.09)}, {});
  ASSERT_FALSE(no_decode.ok());
  EXPECT_TRUE(no_decode.status().IsInvalidArgument());
  EXPECT_NE(no_decode.status().message().find("decode"), std::string::npos);
  auto bad = FitCostModel({Prefill(1000, 0, -1)}, {});
  EXPECT_TRUE(bad.status().IsInvalidArgument());
}

TEST(CostModel, RebuildSecondsByTier) {
  CostModel m;
  m.prefill_per_token_s = 1e-5;
  m.kv_bytes_per_token = 131072;
  m.host_to_device_bytes_per_s = 25e9;
  EXPECT_NEAR(m.RebuildSeconds(RebuildSource::kHost, 10000), 10000 * 131072 / 25e9, 1e-12);
  EXPECT_TRUE(std::isinf(m.RebuildSeconds(RebuildSource::kDisk, 10000)));
  EXPECT_NEAR(m.RebuildSeconds(RebuildSource::kPrefill, 10000), 0.1, 1e-12);
}

TEST(CostModel, SavesAndLoadsItsFile) {
  testing::TempDir dir;
  CostModel m;
  m.prefill_per_token_s = 2.28e-5;
  m.prefill_attention_s = 1.2e-9;
  m.decode_fixed_s = 5.9e-3;
  m.decode_per_context_token_s = 4.4e-8;
  m.decode_per_sequence_s = 6e-5;
  m.mixed_decode_extra_per_context_token_s = 5e-8;
  m.host_to_device_bytes_per_s = 2e10;
  m.host_duplex_share = 0.7;
  m.kv_bytes_per_token = 131072;
  m.source = "test";
  const std::string path = dir.File("cost_model.json");
  ASSERT_TRUE(SaveCostModel(DefaultEnv(), path, m).ok());
  auto back = LoadCostModel(DefaultEnv(), path);
  ASSERT_TRUE(back.ok()) << back.status().ToString();
  EXPECT_EQ(back->prefill_per_token_s, m.prefill_per_token_s);
  EXPECT_EQ(back->prefill_attention_s, m.prefill_attention_s);
  EXPECT_EQ(back->decode_fixed_s, m.decode_fixed_s);
  EXPECT_EQ(back->decode_per_context_token_s, m.decode_per_context_token_s);
  EXPECT_EQ(back->decode_per_sequence_s, m.decode_per_sequence_s);
  EXPECT_EQ(back->mixed_decode_extra_per_context_token_s, m.mixed_decode_extra_per_context_token_s);
  EXPECT_EQ(back->host_to_device_bytes_per_s, m.host_to_device_bytes_per_s);
  EXPECT_EQ(back->host_duplex_share, m.host_duplex_share);
  EXPECT_EQ(back->kv_bytes_per_token, m.kv_bytes_per_token);
  EXPECT_EQ(back->source, "test");
  // Bad files get a clear error and change nothing.
  ASSERT_TRUE(DefaultEnv()->WriteFileAtomic(path, "{\"version\": 1, \"decode_fixed_s\": -1}").ok());
  auto bad = LoadCostModel(DefaultEnv(), path);
  ASSERT_FALSE(bad.ok());
  EXPECT_EQ(bad.status().code(), StatusCode::kCorruption);
  EXPECT_NE(bad.status().message().find("prefill_per_token_s"), std::string::npos);
  ASSERT_TRUE(DefaultEnv()->WriteFileAtomic(path, "not json").ok());
  EXPECT_EQ(LoadCostModel(DefaultEnv(), path).status().code(), StatusCode::kCorruption);
  EXPECT_FALSE(LoadCostModel(DefaultEnv(), dir.File("missing.json")).ok());
}

TEST(CostModel, FitsAPerSequenceTermOnlyWhenTheBatchVaries) {
  CostModel truth;
  truth.decode_fixed_s = 5.9e-3;
  truth.decode_per_context_token_s = 4.6e-8;
  truth.decode_per_sequence_s = 8e-5;
  const std::vector<TimingSample> prefill = {Prefill(1024, 0, 0.025), Prefill(4096, 0, 0.105)};
  std::vector<TimingSample> batched = prefill, single = prefill;
  for (int64_t b : {1, 4, 16}) {
    for (int64_t len : {512, 4096}) {
      batched.push_back(DecodeBatch(b * len, b, truth.DecodeStepSeconds(b * len, b)));
    }
  }
  for (int64_t len : {512, 4096, 32768}) {
    single.push_back(DecodeBatch(len, 1, truth.DecodeStepSeconds(len, 1)));
  }
  auto fit = FitCostModel(batched, {});
  ASSERT_TRUE(fit.ok()) << fit.status().ToString();
  EXPECT_NEAR(fit->model.decode_fixed_s / truth.decode_fixed_s, 1.0, 1e-6);
  EXPECT_NEAR(fit->model.decode_per_context_token_s / truth.decode_per_context_token_s, 1.0, 1e-6);
  EXPECT_NEAR(fit->model.decode_per_sequence_s / truth.decode_per_sequence_s, 1.0, 1e-6);
  EXPECT_NE(FormatCostFit(*fit).find("* B"), std::string::npos);
  // One batch size: the per-sequence cost cannot be told from the fixed one.
  auto one = FitCostModel(single, {});
  ASSERT_TRUE(one.ok()) << one.status().ToString();
  EXPECT_EQ(one->model.decode_per_sequence_s, 0.0);
  EXPECT_NEAR(one->model.decode_fixed_s / (truth.decode_fixed_s + truth.decode_per_sequence_s), 1.0,
              1e-6);
  EXPECT_NEAR(one->model.decode_per_context_token_s / truth.decode_per_context_token_s, 1.0, 1e-6);
  // Samples that cannot separate the fixed and per-context terms are refused by name.
  auto flat = FitCostModel({Prefill(1024, 0, 0.025), Prefill(4096, 0, 0.105),
                            DecodeBatch(4096, 1, 0.006), DecodeBatch(4096, 1, 0.0061)},
                           {});
  ASSERT_FALSE(flat.ok());
  EXPECT_NE(flat.status().message().find("cannot separate"), std::string::npos);
}

TEST(CostModel, PricesAStepAndAChunkedPrefill) {
  // PrefillSeconds of a whole prefill (the TTL rule's price of a rebuild) is what the
  // engine's steps cost, one chunk of 256 a step (SimBackend prices each step).
  const CostModel m = MixedTruth();
  for (int64_t c : {0, 4096, 30000}) {
    for (int64_t n : {256, 1000, 20000}) {
      double steps_s = 0;
      for (int64_t done = 0; done < n; done += 256) {
        const int64_t k = std::min<int64_t>(256, n - done);
        // A chunk under 169 tokens costs a whole weight read: not what PrefillSeconds has.
        const double weights_s = std::max(0.0, m.decode_fixed_s - m.prefill_per_token_s * k);
        steps_s += m.StepSeconds(0, 0, {{k, c + done}}) - weights_s;
      }
      EXPECT_NEAR(m.PrefillSeconds(n, c) / steps_s, 1.0, 1e-9) << n << " after " << c;
    }
  }
  // A decode beside a prefill chunk pays the mixed extra; a decode-only step does not.
  EXPECT_DOUBLE_EQ(m.StepSeconds(12, 240000, {}), m.DecodeStepSeconds(240000, 12));
  EXPECT_NEAR(m.StepSeconds(12, 240000, {{256, 20000}}) - m.StepSeconds(0, 0, {{256, 20000}}),
              m.DecodeStepSeconds(240000, 12) - m.decode_fixed_s +
                  m.mixed_decode_extra_per_context_token_s * 240000 + m.prefill_per_token_s * 12,
              1e-12);
}

TEST(CostModel, FitsTheMixedStepTermOnWhatTheOthersLeave) {
  const CostModel truth = MixedTruth();
  std::vector<TimingSample> samples;
  for (int64_t n : {256, 1024, 4096}) {
    for (int64_t c : {0, 4096, 32768}) samples.push_back(Prefill(n, c, truth.PrefillSeconds(n, c)));
  }
  for (int64_t b : {1, 4, 16}) {
    for (int64_t len : {512, 8192}) {
      samples.push_back(DecodeBatch(b * len, b, truth.DecodeStepSeconds(b * len, b)));
    }
  }
  const std::vector<TimingSample> without_mixed = samples;
  samples.push_back(
      Mixed(16 * 6144, 16, 256, 34000, truth.StepSeconds(16, 16 * 6144, {{256, 34000}})));
  auto fit = FitCostModel(samples, {});
  ASSERT_TRUE(fit.ok()) << fit.status().ToString();
  std::printf("%s", FormatCostFit(*fit).c_str());
  const CostModel& m = fit->model;
  EXPECT_NEAR(m.prefill_attention_s / truth.prefill_attention_s, 1.0, 1e-6);
  EXPECT_NEAR(m.decode_per_context_token_s / truth.decode_per_context_token_s, 1.0, 1e-6);
  EXPECT_NEAR(
      m.mixed_decode_extra_per_context_token_s / truth.mixed_decode_extra_per_context_token_s, 1.0,
      1e-6);
  EXPECT_LT(fit->max_relative_error, 1e-6);
  // No mixed sample: that term stays 0 and the others are unchanged.
  auto no_mixed = FitCostModel(without_mixed, {});
  ASSERT_TRUE(no_mixed.ok());
  EXPECT_EQ(no_mixed->model.mixed_decode_extra_per_context_token_s, 0.0);
  EXPECT_NEAR(no_mixed->model.decode_fixed_s / truth.decode_fixed_s, 1.0, 1e-6);
  // A mixed step faster than the decode terms predict leaves the extra at 0, not negative.
  samples.back().seconds *= 0.5;
  auto faster = FitCostModel(samples, {});
  ASSERT_TRUE(faster.ok());
  EXPECT_EQ(faster->model.mixed_decode_extra_per_context_token_s, 0.0);
}

TEST(CostModel, LoadsAFileWrittenBeforeThePerSequenceTerm) {
  testing::TempDir dir;
  const std::string path = dir.File("cost_model.json");
  // The file the H100 calibration wrote on 2026-12-06 (version 1, no per-sequence term).
  ASSERT_TRUE(DefaultEnv()
                  ->WriteFileAtomic(path,
                                    R"({"version": 1, "prefill_per_token_s": 2.3e-05,
                                        "prefill_attention_s": 1.2e-09, "decode_fixed_s": 0.0059,
                                        "decode_per_context_token_s": 0.0,
                                        "host_to_device_bytes_per_s": 5.8e9,
                                        "disk_to_device_bytes_per_s": 0,
                                        "kv_bytes_per_token": 131072,
                                        "source": "calibrated at start-up"})")
                  .ok());
  auto m = LoadCostModel(DefaultEnv(), path);
  ASSERT_TRUE(m.ok()) << m.status().ToString();
  EXPECT_EQ(m->decode_per_sequence_s, 0.0);
  EXPECT_EQ(m->mixed_decode_extra_per_context_token_s, 0.0);
  EXPECT_EQ(m->host_duplex_share, 0.0);  // not measured: the simulator keeps its default
  EXPECT_DOUBLE_EQ(m->StepSeconds(12, 100000, {{256, 20000}}), 2.3e-5 * 268 + 1.2e-9 * 256 * 20128);
  EXPECT_EQ(m->decode_fixed_s, 0.0059);
  EXPECT_EQ(m->DecodeStepSeconds(100000, 12), 0.0059);
  // A present but bad value is still refused.
  ASSERT_TRUE(DefaultEnv()
                  ->WriteFileAtomic(path, R"({"version": 1, "prefill_per_token_s": 1,
                      "prefill_attention_s": 0, "decode_fixed_s": 0,
                      "decode_per_context_token_s": 0, "decode_per_sequence_s": "x",
                      "kv_bytes_per_token": 1})")
                  .ok());
  auto bad = LoadCostModel(DefaultEnv(), path);
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.status().message().find("decode_per_sequence_s"), std::string::npos);
}

TEST(CostModel, TheHitBenefitPricesTheRebuildNotTheDecode) {
  // A hit saves the rebuild of the session's KV (a prefill, or a reload from a tier); the
  // turn's decode steps run on a hit and on a miss alike, so the decode terms must not
  // enter the benefit, while the prefill's per-context (attention) term must.
  CostModel m;
  m.prefill_per_token_s = 2.281e-05;
  m.prefill_attention_s = 1.209e-09;
  m.decode_fixed_s = 0.005915;
  m.kv_bytes_per_token = 131072;
  PinCandidate session;
  session.context_tokens = 40000;
  session.queued_prefill_tokens = 8000;
  const HitBenefit base = ComputeHitBenefit(m, session);
  EXPECT_EQ(base.rebuild_from, RebuildSource::kPrefill);
  EXPECT_DOUBLE_EQ(base.rebuild_s, m.PrefillSeconds(40000, 0));
  EXPECT_DOUBLE_EQ(base.queue_s, m.PrefillSeconds(8000, 0));
  CostModel decode_heavy = m;
  decode_heavy.decode_per_context_token_s = 1e-6;
  decode_heavy.decode_per_sequence_s = 1e-3;
  EXPECT_DOUBLE_EQ(ComputeHitBenefit(decode_heavy, session).total_s(), base.total_s());
  CostModel no_attention = m;
  no_attention.prefill_attention_s = 0;
  // At 40k tokens the attention term is over half of the re-prefill.
  EXPECT_LT(ComputeHitBenefit(no_attention, session).rebuild_s, 0.5 * base.rebuild_s);
}

TEST(CostModel, FitsThe8BShapeH100Figures) {
  const std::string path = testing::SourceDir() + "/bench/data/h100_8b_timings.json";
  auto loaded = LoadTimingSamples(DefaultEnv(), path);
  ASSERT_TRUE(loaded.ok()) << loaded.status().ToString();
  auto fit = FitCostModel(loaded->first, loaded->second);
  ASSERT_TRUE(fit.ok()) << fit.status().ToString();
  std::printf("%s", FormatCostFit(*fit).c_str());
  // The whole-step figures are matched closely; the attention-kernel figures within the
  // spread of the kernel's per-shape bandwidth (B=1 L=32768 runs at 2409 GB/s, the
  // others at 2906-2983: one slope cannot match both, -15%).
  for (const CostFitRow& r : fit->rows) {
    const double err = std::abs(r.predicted_s - r.sample.seconds) / r.sample.seconds;
    EXPECT_LT(err, r.sample.kind == Kind::kPrefill || r.sample.kind == Kind::kDecode ? 0.02 : 0.2)
        << TimingSampleKindName(r.sample.kind) << " " << r.sample.note;
  }
  // A 20k-token session is rebuilt by prefill in well under a second on this GPU.
  const double s20k = fit->model.PrefillSeconds(20000, 0);
  EXPECT_GT(s20k, 0.3);
  EXPECT_LT(s20k, 1.5);
}

}  // namespace
}  // namespace kvkeep
