// TeacherForcedParity (engine/backend_parity.h): exact on identical backends, small on the
// bf16 KV cache, and a FAIL with the flip reported outside tolerance when one step's logits
// are corrupted, so the check can fail. Also pool-size and argument validation.
#include "engine/backend_parity.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <random>

#include "engine/sampler.h"
#include "tests/engine/engine_fixture.h"
#include "tests/engine/forwarding_backend.h"

namespace kvkeep::enginetest {
namespace {

// Forwards to a real backend, then corrupts the logits of its `corrupt_call`-th Forward
// (0-based): the reference's lowest-logit token gets a large offset, so it becomes the
// argmax by a margin far beyond any rounding error.
class CorruptingBackend : public ForwardingBackend {
 public:
  CorruptingBackend(std::unique_ptr<Backend> inner, int corrupt_call)
      : ForwardingBackend(std::move(inner)), corrupt_call_(corrupt_call) {}
  std::string name() const override { return "corrupt(" + ForwardingBackend::name() + ")"; }
  Status Forward(const ForwardBatch& batch, std::vector<float>* logits) override {
    RETURN_IF_ERROR(ForwardingBackend::Forward(batch, logits));
    if (calls_++ == corrupt_call_) {
      auto lo = std::min_element(logits->begin(), logits->end());
      double max_abs = 0;
      for (float x : *logits) max_abs = std::max(max_abs, std::fabs(double{x}));
      *lo += static_cast<float>(10 * max_abs + 1);
      corrupted_token_ = static_cast<int32_t>(lo - logits->begin());
    }
    return Status::OK();
  }
  int32_t corrupted_token() const { return corrupted_token_; }

 private:
  int corrupt_call_;
  int calls_ = 0;
  int32_t corrupted_token_ = -1;
};

TEST(BackendParity, IdenticalBackendsAreExact) {
  auto m = MakeTestModel("tiny");
  ASSERT_NE(m, nullptr);
  std::mt19937_64 rng(m->seed);
  const std::vector<int32_t> prompt = RandomTokens(rng, 40);
  auto ref = MakeBackend(*m->weights, 8);
  auto cand = MakeBackend(*m->weights, 8);
  ParityOptions o;
  o.max_new_tokens = 24;
  o.chunk_tokens = 16;  // three prefill chunks
  auto r = TeacherForcedParity(*ref, *cand, prompt, o);
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_TRUE(r->pass);
  EXPECT_EQ(r->prompt_tokens, 40);
  EXPECT_EQ(r->steps, 24);
  EXPECT_EQ(r->flips, 0);
  EXPECT_EQ(r->flips_outside_tolerance, 0);
  EXPECT_EQ(r->steps_over_error, 0);
  EXPECT_EQ(r->worst_rel_logit_error, 0.0);
  EXPECT_EQ(r->first_flip_step, -1);
  ASSERT_EQ(r->reference_tokens.size(), 24u);
  ASSERT_EQ(r->per_step.size(), 24u);
  for (const ParityStep& s : r->per_step) {
    EXPECT_EQ(s.reference_token, s.candidate_token);
    EXPECT_GT(s.max_abs_logit, 0.0);
    EXPECT_TRUE(s.within_tolerance);
  }

  // The reference tokens are the free-running greedy continuation: replay it by hand.
  auto solo = MakeBackend(*m->weights, 8);
  std::vector<int32_t> tokens = prompt;
  const std::vector<int32_t> blocks = {0, 1, 2, 3, 4, 5, 6, 7};
  int32_t done = 0;
  for (int step = 0; step < 24; ++step) {
    auto logits = RunBatch(
        solo.get(),
        MakeBatch({{&tokens, &blocks, done, static_cast<int32_t>(tokens.size())}}, 16, false));
    ASSERT_EQ(logits.size(), static_cast<size_t>(m->config.vocab_size));
    done = static_cast<int32_t>(tokens.size());
    tokens.push_back(Sampler::Argmax(logits.data(), m->config.vocab_size));
    EXPECT_EQ(tokens.back(), r->reference_tokens[step]) << "step " << step;
  }
}

TEST(BackendParity, Bf16KvIsCloseAndPasses) {
  auto m = MakeTestModel("tiny");
  ASSERT_NE(m, nullptr);
  std::mt19937_64 rng(m->seed + 1);
  const std::vector<int32_t> prompt = RandomTokens(rng, 33);
  auto ref = MakeBackend(*m->weights, 8, 16, KvDType::kF32);
  auto cand = MakeBackend(*m->weights, 8, 16, KvDType::kBF16);
  ParityOptions o;
  o.max_new_tokens = 64;
  auto r = TeacherForcedParity(*ref, *cand, prompt, o);
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_TRUE(r->pass) << "worst " << r->worst_rel_logit_error << " flips " << r->flips;
  EXPECT_GT(r->worst_rel_logit_error, 0.0);
  EXPECT_LT(r->worst_rel_logit_error, o.max_rel_logit_error);
  EXPECT_EQ(r->flips_outside_tolerance, 0);
  EXPECT_EQ(r->steps_over_error, 0);
  for (const ParityStep& s : r->per_step) {
    if (s.reference_token != s.candidate_token) {
      EXPECT_LE(s.margin, 2 * s.max_abs_dlogit);  // a near-tie
    }
  }
  std::printf("bf16 KV: worst max|dlogit|/max|logit| %.5f, %d flips in %d steps\n",
              r->worst_rel_logit_error, r->flips, r->steps);
}

TEST(BackendParity, CorruptedStepFailsWithAFlipOutsideTolerance) {
  auto m = MakeTestModel("tiny");
  ASSERT_NE(m, nullptr);
  std::mt19937_64 rng(m->seed + 2);
  const std::vector<int32_t> prompt = RandomTokens(rng, 20);
  constexpr int kBadStep = 5;
  auto ref = MakeBackend(*m->weights, 8);
  // One prefill call (20 tokens < chunk_tokens), then one call per step: step k is call k.
  CorruptingBackend cand(MakeBackend(*m->weights, 8), kBadStep);
  ParityOptions o;
  o.max_new_tokens = 16;
  auto r = TeacherForcedParity(*ref, cand, prompt, o);
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_FALSE(r->pass);
  EXPECT_EQ(r->flips, 1);
  EXPECT_EQ(r->flips_outside_tolerance, 1);
  EXPECT_EQ(r->steps_over_error, 1);
  EXPECT_EQ(r->first_flip_step, kBadStep);
  EXPECT_EQ(r->worst_step, kBadStep);
  EXPECT_GT(r->worst_rel_logit_error, 1.0);
  ASSERT_EQ(r->per_step.size(), 16u);
  const ParityStep& bad = r->per_step[kBadStep];
  EXPECT_FALSE(bad.within_tolerance);
  EXPECT_EQ(bad.candidate_token, cand.corrupted_token());
  EXPECT_GT(bad.margin, 2 * o.max_rel_logit_error * bad.max_abs_logit);
  EXPECT_EQ(r->first_flip_margin, bad.margin);
  // Teacher forcing: the other steps still see the reference's tokens and agree exactly.
  for (int i = 0; i < 16; ++i) {
    if (i == kBadStep) continue;
    EXPECT_TRUE(r->per_step[i].within_tolerance) << i;
    EXPECT_EQ(r->per_step[i].max_abs_dlogit, 0.0) << i;
  }
}

TEST(BackendParity, RejectsSmallPoolsAndBadArguments) {
  auto m = MakeTestModel("tiny");
  ASSERT_NE(m, nullptr);
  std::mt19937_64 rng(m->seed + 3);
  const std::vector<int32_t> prompt = RandomTokens(rng, 30);
  auto big = MakeBackend(*m->weights, 8);
  auto small = MakeBackend(*m->weights, 2);  // 32 slots
  ParityOptions o;
  o.max_new_tokens = 8;  // 30 + 8 - 1 = 37 tokens: 3 blocks
  auto r = TeacherForcedParity(*big, *small, prompt, o);
  EXPECT_EQ(r.status().code(), StatusCode::kInvalidArgument) << r.status().ToString();
  r = TeacherForcedParity(*small, *big, prompt, o);
  EXPECT_EQ(r.status().code(), StatusCode::kInvalidArgument) << r.status().ToString();
  // Exactly enough: 30 + 3 - 1 = 32 tokens fit 2 blocks.
  o.max_new_tokens = 3;
  r = TeacherForcedParity(*small, *big, prompt, o);
  EXPECT_TRUE(r.ok()) << r.status().ToString();

  EXPECT_EQ(TeacherForcedParity(*big, *big, {}, o).status().code(), StatusCode::kInvalidArgument);
  o.max_new_tokens = 0;
  EXPECT_EQ(TeacherForcedParity(*big, *big, prompt, o).status().code(),
            StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace kvkeep::enginetest
