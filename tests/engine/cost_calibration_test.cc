// CalibrateCostModel (engine/cost_calibration.h) on the real Engine over a backend whose
// steps take a known time: SimBackend prices each step with a known CostModel (a per-step,
// a per-context-token and a per-sequence decode term), and every Forward advances a
// FakeClock by that price. The calibration sees only the engine's timings, so its fit must
// recover the known decode coefficients.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <memory>
#include <random>

#include "base/clock.h"
#include "engine/cost_calibration.h"
#include "engine/sim_backend.h"
#include "policy/step_log.h"
#include "tests/engine/engine_fixture.h"
#include "tests/testlib/test_util.h"

namespace kvkeep {
namespace {

// SimBackend, with each priced second spent on the clock.
class ClockedSimBackend final : public Backend {
 public:
  ClockedSimBackend(std::unique_ptr<SimBackend> sim, FakeClock* clock)
      : sim_(std::move(sim)), clock_(clock) {}
  std::string name() const override { return "clocked-sim"; }
  const ModelConfig& config() const override { return sim_->config(); }
  const KvPoolShape& kv_shape() const override { return sim_->kv_shape(); }
  Status Forward(const ForwardBatch& batch, std::vector<float>* logits) override {
    RETURN_IF_ERROR(sim_->Forward(batch, logits));
    clock_->AdvanceMicros(std::llround(sim_->TakeElapsedSeconds() * 1e6));
    return Status::OK();
  }
  Status CopyBlocks(const std::vector<std::pair<int32_t, int32_t>>& src_dst) override {
    return sim_->CopyBlocks(src_dst);
  }
  size_t block_bytes() const override { return sim_->block_bytes(); }
  Status ReadBlock(int32_t id, void* dst) override { return sim_->ReadBlock(id, dst); }
  Status WriteBlock(int32_t id, const void* src) override { return sim_->WriteBlock(id, src); }

 private:
  std::unique_ptr<SimBackend> sim_;
  FakeClock* clock_;
};

// The 8B-shape H100 figures (policy/policy_factory.cc's default), plus a per-sequence cost.
CostModel Truth() {
  CostModel m;
  m.prefill_per_token_s = 2.281e-05;
  m.prefill_attention_s = 1.209e-09;
  m.decode_fixed_s = 0.005915;
  m.decode_per_context_token_s = 4.627e-08;
  m.decode_per_sequence_s = 6e-05;
  m.kv_bytes_per_token = 131072;
  return m;
}

struct Rig {
  FakeClock clock;
  std::unique_ptr<Engine> engine;
};

std::unique_ptr<Rig> MakeRig(const CostModel& truth, const std::string& policy, int32_t num_blocks,
                             StepLog* step_log = nullptr) {
  auto rig = std::make_unique<Rig>();
  SimBackendOptions b;
  b.config.vocab_size = 1024;
  b.config.num_layers = 32;
  b.config.num_q_heads = 32;
  b.config.num_kv_heads = 8;
  b.config.head_dim = 128;
  b.config.hidden_size = 4096;
  b.config.max_position_embeddings = 131072;
  b.num_kv_blocks = num_blocks;
  b.kv_bytes_per_token = truth.kv_bytes_per_token;
  b.cost = truth;
  auto sim = SimBackend::Create(b);
  EXPECT_TRUE(sim.ok()) << sim.status().ToString();
  EngineOptions e;  // the daemon's defaults: 512-token steps, 256-token chunks, 64 running
  e.policy.name = policy;
  e.step_log = step_log;
  auto engine = Engine::Create(e, std::make_unique<ClockedSimBackend>(std::move(*sim), &rig->clock),
                               nullptr, &rig->clock);
  EXPECT_TRUE(engine.ok()) << engine.status().ToString();
  rig->engine = std::move(*engine);
  return rig;
}

TEST(CostCalibration, RecoversAKnownPerContextDecodeSlope) {
  const CostModel truth = Truth();
  auto rig = MakeRig(truth, "lru", 8192);  // 131k tokens: decode batches read up to 65k
  auto fit = CalibrateCostModel(rig->engine.get(), 8192 * 16);
  ASSERT_TRUE(fit.ok()) << fit.status().ToString();
  std::printf("%s", FormatCostFit(*fit).c_str());
  const CostModel& m = fit->model;
  EXPECT_NEAR(m.decode_per_context_token_s / truth.decode_per_context_token_s, 1.0, 0.01);
  EXPECT_NEAR(m.decode_fixed_s / truth.decode_fixed_s, 1.0, 0.01);
  EXPECT_NEAR(m.decode_per_sequence_s / truth.decode_per_sequence_s, 1.0, 0.05);
  // Batches of 1, 4 and 16 sequences at two lengths, up to 16 x 4096 tokens of context.
  int decode_samples = 0;
  int64_t widest = 0;
  for (const CostFitRow& r : fit->rows) {
    if (r.sample.kind != TimingSample::Kind::kDecode) continue;
    ++decode_samples;
    widest = std::max(widest, r.sample.context_tokens);
    EXPECT_NEAR(r.predicted_s / r.sample.seconds, 1.0, 0.005) << r.sample.context_tokens;
  }
  EXPECT_EQ(decode_samples, 6);
  EXPECT_GE(widest, 16 * 4096);
  // Where the agents run: 12 sequences of 40k tokens. A model without the context term
  // would price this step at 6 ms; it costs 29 ms.
  EXPECT_NEAR(m.DecodeStepSeconds(12 * 40000, 12) / truth.DecodeStepSeconds(12 * 40000, 12), 1.0,
              0.02);
  // Prefills of 256, 1,024 and 4,096 tokens (SimBackend's 256-token chunks each cost at
  // least a weight read, which the linear prefill model does not have: hence 3%).
  EXPECT_NEAR(m.PrefillSeconds(30000, 0) / truth.PrefillSeconds(30000, 0), 1.0, 0.03);
}

TEST(CostCalibration, RecoversTheMixedStepTermAndTimesChunksOverLongPrefixes) {
  // A device where a decode beside a prefill chunk reads its KV at 3x the decode rate
  // (the CUDA backend runs such a step's decodes through the prefill kernel; the H100
  // run's mixed steps took 29.6 ms a token where the old fit said about 16), and where
  // attention costs 2.3x the per-pair rate of the default fit.
  CostModel truth = Truth();
  truth.prefill_attention_s = 2.8e-9;
  truth.mixed_decode_extra_per_context_token_s = 9e-8;
  auto rig = MakeRig(truth, "lru", 8192);
  auto fit = CalibrateCostModel(rig->engine.get(), 8192 * 16);
  ASSERT_TRUE(fit.ok()) << fit.status().ToString();
  std::printf("%s", FormatCostFit(*fit).c_str());
  const CostModel& m = fit->model;
  EXPECT_NEAR(m.prefill_attention_s / truth.prefill_attention_s, 1.0, 0.01);
  EXPECT_NEAR(
      m.mixed_decode_extra_per_context_token_s / truth.mixed_decode_extra_per_context_token_s, 1.0,
      0.05);
  EXPECT_NEAR(m.decode_per_context_token_s / truth.decode_per_context_token_s, 1.0, 0.01);
  // Chunks of 256 and 1,024 over 4k, 16k and 32k cached tokens, and one mixed step of 16
  // decodes at 4k beside a chunk over 32k.
  int over_context = 0, mixed = 0;
  for (const CostFitRow& r : fit->rows) {
    if (r.sample.kind == TimingSample::Kind::kMixedStep) {
      ++mixed;
      EXPECT_EQ(r.sample.sequences, 16);
      EXPECT_EQ(r.sample.new_tokens, 256);
      EXPECT_GE(r.sample.cached_tokens, 32768);
    }
    if (r.sample.kind == TimingSample::Kind::kPrefill && r.sample.cached_tokens >= 4096 &&
        r.sample.new_tokens <= 1024) {
      ++over_context;
    }
  }
  EXPECT_EQ(mixed, 1);
  EXPECT_EQ(over_context, 6);
  // Where the agents run: 12 sequences decoding at 20k beside a 256-token chunk over 20k.
  const double step = truth.StepSeconds(12, 12 * 20000, {{256, 20000}});
  EXPECT_NEAR(m.StepSeconds(12, 12 * 20000, {{256, 20000}}) / step, 1.0, 0.02);
  // Without the mixed term that step is priced 35% or more low.
  CostModel old = m;
  old.mixed_decode_extra_per_context_token_s = 0;
  EXPECT_LT(old.StepSeconds(12, 12 * 20000, {{256, 20000}}) / step, 0.65);
}

TEST(CostCalibration, WithoutPrefixReuseOnlySingleSequencesAreTimed) {
  // Policy "none" turns prefix caching off: a batch's sequences each prefill their whole
  // prompt, so they do not start decoding together and those samples are dropped. One
  // batch size cannot separate the per-sequence term: it is folded into the fixed one.
  const CostModel truth = Truth();
  auto rig = MakeRig(truth, "none", 8192);
  auto fit = CalibrateCostModel(rig->engine.get(), 8192 * 16);
  ASSERT_TRUE(fit.ok()) << fit.status().ToString();
  for (const CostFitRow& r : fit->rows) {
    if (r.sample.kind == TimingSample::Kind::kDecode) {
      EXPECT_EQ(r.sample.sequences, 1);
    }
  }
  const CostModel& m = fit->model;
  EXPECT_EQ(m.decode_per_sequence_s, 0.0);
  EXPECT_NEAR(m.decode_per_context_token_s / truth.decode_per_context_token_s, 1.0, 0.02);
  EXPECT_NEAR(m.decode_fixed_s / (truth.decode_fixed_s + truth.decode_per_sequence_s), 1.0, 0.01);
}

TEST(CostCalibration, ASlowDeviceTimesOnlyTheShortPrefixes) {
  // Every step 100x slower: the first round (prefixes of 512 tokens) takes far over the
  // 2 s budget, so the 4,096-token round is skipped.
  CostModel slow = Truth();
  slow.prefill_per_token_s *= 100;
  slow.prefill_attention_s *= 100;
  slow.decode_fixed_s *= 100;
  slow.decode_per_context_token_s *= 100;
  slow.decode_per_sequence_s *= 100;
  auto rig = MakeRig(slow, "lru", 8192);
  auto fit = CalibrateCostModel(rig->engine.get(), 8192 * 16);
  ASSERT_TRUE(fit.ok()) << fit.status().ToString();
  int decode_samples = 0;
  for (const CostFitRow& r : fit->rows) {
    if (r.sample.kind != TimingSample::Kind::kDecode) continue;
    ++decode_samples;
    EXPECT_LE(r.sample.context_tokens, r.sample.sequences * (512 + 8));
  }
  EXPECT_EQ(decode_samples, 3);
  // Their contexts are proportional to their sizes (B x 520 tokens), so the per-sequence
  // term cannot be told apart: it is folded into the per-context slope, as 1/520 of it.
  EXPECT_EQ(fit->model.decode_per_sequence_s, 0.0);
  EXPECT_NEAR(fit->model.decode_per_context_token_s /
                  (slow.decode_per_context_token_s + slow.decode_per_sequence_s / 520),
              1.0, 0.01);
  EXPECT_NEAR(fit->model.decode_fixed_s / slow.decode_fixed_s, 1.0, 0.01);
}

TEST(CostCalibration, ASmallPoolStillCalibrates) {
  // 64 blocks (1,024 tokens): the decode prompts shrink to fit half the pool.
  const CostModel truth = Truth();
  auto rig = MakeRig(truth, "lru", 64);
  auto fit = CalibrateCostModel(rig->engine.get(), 64 * 16);
  ASSERT_TRUE(fit.ok()) << fit.status().ToString();
  for (const CostFitRow& r : fit->rows) {
    if (r.sample.kind == TimingSample::Kind::kDecode) {
      EXPECT_LE(r.sample.context_tokens, 512 + r.sample.sequences * 8);
    }
  }
  EXPECT_NEAR(fit->model.decode_fixed_s / truth.decode_fixed_s, 1.0, 0.05);
}

// The step log (kvkeepd --step-log) over a served mix: it times every step the engine ran
// (their times sum to the clock's, which only the priced forward passes advance), and a fit
// to it (policy_bench --fit-step-log) recovers the model that priced the steps.
TEST(StepLog, AServedRunsStepsFitBackToTheModelThatPricedThem) {
  CostModel truth = Truth();
  truth.prefill_per_token_s = 3.3e-5;  // a 256-token chunk past decode_fixed_s, as on an H100
  truth.mixed_decode_extra_per_context_token_s = 1e-8;
  StepLog log(100000);
  auto rig = MakeRig(truth, "lru", 8192, &log);
  const int64_t start_us = rig->clock.NowMicros();
  std::mt19937_64 rng(3);
  std::vector<enginetest::Outcome> outcomes(24);
  for (int i = 0; i < 24; ++i) {
    const int prompt = 200 + 700 * (i % 8) + static_cast<int>(rng() % 100);
    ASSERT_TRUE(
        rig->engine
            ->Submit(enginetest::RequestInto(
                &outcomes[i], i + 1, enginetest::RandomTokens(rng, prompt, 1024), 8 + 4 * (i % 5)))
            .ok());
    if (i % 6 == 5) {  // four waves
      ASSERT_TRUE(rig->engine->RunUntilIdle().ok());
    }
  }
  ASSERT_TRUE(rig->engine->RunUntilIdle().ok());
  for (const enginetest::Outcome& o : outcomes) EXPECT_EQ(o.reason, FinishReason::kLength);
  double logged_s = 0;
  int decode_steps = 0, prefill_steps = 0, mixed_steps = 0;
  for (const StepTiming& t : log.steps()) {
    logged_s += t.step_s;
    decode_steps += t.prefill_tokens == 0;
    prefill_steps += t.decode_sequences == 0;
    mixed_steps += t.prefill_tokens > 0 && t.decode_sequences > 0;
  }
  EXPECT_NEAR(logged_s, (rig->clock.NowMicros() - start_us) * 1e-6, 1e-6);
  std::printf("%zu steps: %d decode, %d prefill, %d mixed\n", log.steps().size(), decode_steps,
              prefill_steps, mixed_steps);
  ASSERT_GT(decode_steps, 0);
  ASSERT_GT(prefill_steps, 0);
  ASSERT_GT(mixed_steps, 0);
  auto fit = FitCostModel(StepSamples(log.steps()), CostModel{});
  ASSERT_TRUE(fit.ok()) << fit.status().ToString();
  std::printf("%s", FormatCostFit(*fit).c_str());
  const CostModel& m = fit->model;
  // Each step's time is its price rounded to the clock's microsecond.
  EXPECT_NEAR(m.prefill_per_token_s / truth.prefill_per_token_s, 1, 0.01);
  EXPECT_NEAR(m.prefill_attention_s / truth.prefill_attention_s, 1, 0.01);
  EXPECT_NEAR(m.decode_fixed_s / truth.decode_fixed_s, 1, 0.01);
  EXPECT_NEAR(m.decode_per_context_token_s / truth.decode_per_context_token_s, 1, 0.01);
  EXPECT_NEAR(m.decode_per_sequence_s / truth.decode_per_sequence_s, 1, 0.05);
  EXPECT_NEAR(
      m.mixed_decode_extra_per_context_token_s / truth.mixed_decode_extra_per_context_token_s, 1,
      0.05);
}

// kvkeepd --testing-sim-cost-model: each step's price (and the swaps before it) goes to
// `spend` (the daemon sleeps it) instead of accumulating; a bad cost model file is refused.
TEST(PacedSimBackend, SpendsEachStepsPrice) {
  const CostModel truth = Truth();
  std::vector<double> spent;
  SimBackendOptions b;
  b.config.vocab_size = 64;
  b.num_kv_blocks = 64;
  b.kv_bytes_per_token = truth.kv_bytes_per_token;
  b.cost = truth;
  b.host_bytes_per_s = 50e9;
  b.spend = [&spent](double s) { spent.push_back(s); };
  auto sim = SimBackend::Create(b);
  ASSERT_TRUE(sim.ok());
  ASSERT_TRUE((*sim)->AllocateHostTier(8).ok());
  const std::pair<int32_t, int32_t> out[] = {{0, 0}, {1, 1}};
  ASSERT_TRUE((*sim)->SwapOut(out).ok());
  ForwardBatch batch;
  batch.token_ids = {1, 2, 3};
  batch.q_start = {0, 1, 3};
  batch.kv_len = {40, 2};
  batch.logit_rows = {0, 2};
  std::vector<float> logits;
  ASSERT_TRUE((*sim)->Forward(batch, &logits).ok());
  ASSERT_EQ(spent.size(), 1u);
  const double swap_s = 2.0 * (*sim)->block_bytes() / 50e9;
  EXPECT_NEAR(spent[0], SimStepSeconds(truth, batch) + swap_s, 1e-12);
  EXPECT_EQ((*sim)->TakeElapsedSeconds(), 0.0);

  testing::TempDir dir;
  ModelConfig config = b.config;
  BackendOptions options;
  options.num_kv_blocks = 32;
  auto missing = CreatePacedSimBackend(DefaultEnv(), config, options, dir.File("none.json"));
  EXPECT_FALSE(missing.ok());
  CostModel no_kv = truth;
  no_kv.kv_bytes_per_token = 0;
  ASSERT_TRUE(SaveCostModel(DefaultEnv(), dir.File("c.json"), no_kv).ok());
  EXPECT_TRUE(CreatePacedSimBackend(DefaultEnv(), config, options, dir.File("c.json"))
                  .status()
                  .IsInvalidArgument());
  ASSERT_TRUE(SaveCostModel(DefaultEnv(), dir.File("c.json"), truth).ok());
  auto paced = CreatePacedSimBackend(DefaultEnv(), config, options, dir.File("c.json"));
  ASSERT_TRUE(paced.ok()) << paced.status().ToString();
  EXPECT_EQ((*paced)->kv_shape().num_blocks, 32);
  EXPECT_EQ((*paced)->name(), "sim");
}

}  // namespace
}  // namespace kvkeep
