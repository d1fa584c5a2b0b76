// Sessions in the engine: a finished turn's blocks are retained for the session, shared
// between sessions of one tenant and never across tenants, released by a close hint, and
// reclaimed (in the policy's order) when memory runs short, without the scheduler spinning.
#include <gtest/gtest.h>

#include <random>

#include "engine/engine_impl.h"
#include "tests/engine/engine_fixture.h"

namespace kvkeep {
namespace {

using enginetest::MakeBackend;
using enginetest::MakeTestModel;
using enginetest::RandomTokens;

constexpr int32_t kBlockSize = 16;

using enginetest::Outcome;

GenerateRequest Request(RequestId id, SessionId session, std::vector<int32_t> prompt, Outcome* out,
                        uint64_t salt = 0) {
  return enginetest::RequestInto(out, id, std::move(prompt), 4, session, salt);
}

class SessionEngine {
 public:
  SessionEngine(const enginetest::TestModel& model, int32_t device_blocks) {
    EngineOptions o;
    o.model_id = "sessions-test";
    auto e = Engine::Create(o, MakeBackend(*model.weights, device_blocks), model.tokenizer.get(),
                            &clock_);
    EXPECT_TRUE(e.ok()) << e.status().ToString();
    engine_ = std::move(e).value();
  }
  EngineImpl* impl() { return static_cast<EngineImpl*>(engine_.get()); }
  Outcome Run(RequestId id, SessionId session, const std::vector<int32_t>& prompt,
              uint64_t salt = 0) {
    Outcome out;
    EXPECT_TRUE(engine_->Submit(Request(id, session, prompt, &out, salt)).ok());
    EXPECT_TRUE(engine_->RunUntilIdle().ok());
    EXPECT_TRUE(impl()->TEST_CheckPool().ok());
    return out;
  }

 private:
  FakeClock clock_;
  std::unique_ptr<Engine> engine_;
};

TEST(EngineSessionsTest, OneTenantSharesPrefixBlocksOnceTwoTenantsShareNone) {
  auto model = MakeTestModel();
  ASSERT_NE(model, nullptr);
  std::mt19937_64 rng(model->seed);
  const std::vector<int32_t> common = RandomTokens(rng, 3 * kBlockSize);
  std::vector<int32_t> a = common, b = common;
  for (int32_t t : RandomTokens(rng, 7)) a.push_back(t);
  for (int32_t t : RandomTokens(rng, 9)) b.push_back(t);

  SessionEngine same(*model, 64);
  same.Run(1, 101, a);
  same.Run(2, 102, b);  // same tenant (salt 0): matches a's 3 common blocks
  EngineStats s = same.impl()->GetStats();
  EXPECT_EQ(s.retained_sessions, 2);
  EXPECT_EQ(s.blocks_shared, 3);                    // the common prefix, held by both sessions
  EXPECT_EQ(s.blocks_used, s.retained_blocks - 3);  // counted once in the pool

  SessionEngine split(*model, 64);
  split.Run(1, 101, a, /*salt=*/1);
  split.Run(2, 102, b, /*salt=*/2);
  s = split.impl()->GetStats();
  EXPECT_EQ(s.blocks_shared, 0);
  EXPECT_EQ(s.blocks_used, s.retained_blocks);
}

TEST(EngineSessionsTest, NextTurnUsesRetainedBlocksAndCloseReleasesThem) {
  auto model = MakeTestModel();
  ASSERT_NE(model, nullptr);
  std::mt19937_64 rng(model->seed + 1);
  SessionEngine e(*model, 64);
  std::vector<int32_t> turn = RandomTokens(rng, 2 * kBlockSize + 5);
  const Outcome t1 = e.Run(1, 7, turn);
  EXPECT_EQ(e.impl()->GetStats().retained_sessions, 1);
  turn.insert(turn.end(), t1.tokens.begin(), t1.tokens.end());
  for (int32_t t : RandomTokens(rng, 5)) turn.push_back(t);
  const Outcome t2 = e.Run(2, 7, turn);
  EXPECT_EQ(t2.usage.cached_tokens, 2 * kBlockSize);
  EXPECT_EQ(e.impl()->GetStats().retained_sessions, 1);  // replaced, not doubled
  e.impl()->Hint({SessionHint::Kind::kClose, 7, 0, 0, 0});
  ASSERT_TRUE(e.impl()->RunUntilIdle().ok());
  const EngineStats s = e.impl()->GetStats();
  EXPECT_EQ(s.retained_sessions, 0);
  EXPECT_EQ(s.blocks_used, 0);
}

// Retained sessions hold most of a small pool; new requests still complete by reclaiming
// them, and no step runs without progress.
TEST(EngineSessionsTest, RetainedSessionsAreReclaimedWithoutSpinning) {
  auto model = MakeTestModel();
  ASSERT_NE(model, nullptr);
  std::mt19937_64 rng(model->seed + 2);
  SessionEngine e(*model, 12);
  for (int i = 0; i < 4; ++i) e.Run(i + 1, 100 + i, RandomTokens(rng, 2 * kBlockSize + 3));
  EngineStats s = e.impl()->GetStats();
  EXPECT_GE(s.retained_blocks, 9);  // most of the pool is held by retained sessions
  std::vector<Outcome> out(6);
  for (int i = 0; i < 6; ++i) {
    ASSERT_TRUE(
        e.impl()
            ->Submit(Request(50 + i, 200 + i, RandomTokens(rng, 3 * kBlockSize + 1), &out[i]))
            .ok());
  }
  ASSERT_TRUE(e.impl()->RunUntilIdle().ok());
  for (const Outcome& o : out) EXPECT_EQ(o.reason, FinishReason::kLength);
  s = e.impl()->GetStats();
  EXPECT_GT(s.reclaimed_sessions, 0);
  EXPECT_EQ(e.impl()->idle_steps(), 0) << "the engine stepped without progress";
  EXPECT_TRUE(e.impl()->TEST_CheckPool().ok());
  // A context the device pool can never hold is a resource limit.
  Outcome never;
  EXPECT_EQ(
      e.impl()->Submit(Request(99, 300, RandomTokens(rng, 12 * kBlockSize + 1), &never)).code(),
      StatusCode::kResourceExhausted);
}

}  // namespace
}  // namespace kvkeep
