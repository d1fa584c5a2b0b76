// KV tiers end to end on the CPU backend: the host arena and batched swaps, a block's round
// trip device -> host -> disk -> device (bit-identical per layer, f32 and bf16), logits
// from KV that went to disk and back, and the engine with host and disk tiers: demotion,
// usage.cached_by_tier, a flipped byte on disk, restart, and a seeded stress run checked
// by the pool's invariants after every step.
#include <gtest/gtest.h>

#include <algorithm>
#include <numeric>
#include <random>

#include "cache/disk_tier.h"
#include "engine/engine_impl.h"
#include "tests/engine/engine_fixture.h"
#include "tests/engine/forwarding_backend.h"
#include "tests/engine/tier_round_trip.h"

namespace kvkeep {
namespace {

using enginetest::MakeBackend;
using enginetest::MakeBatch;
using enginetest::MakeTestModel;
using enginetest::RandomTokens;
using enginetest::RunBatch;
using enginetest::SeqRun;

constexpr int32_t kBlockSize = 16;

// Prefills tokens into blocks 0..n-1 of backend.
void Prefill(Backend* backend, const std::vector<int32_t>& tokens,
             const std::vector<int32_t>& blocks) {
  RunBatch(backend, MakeBatch({{&tokens, &blocks, 0, static_cast<int32_t>(tokens.size())}},
                              kBlockSize, false));
}

class TierRoundTrip : public ::testing::TestWithParam<KvDType> {};

TEST_P(TierRoundTrip, DeviceHostDiskDeviceIsBitIdenticalPerLayerAndGivesSameLogits) {
  auto model = MakeTestModel();
  ASSERT_NE(model, nullptr);
  auto backend = MakeBackend(*model->weights, 16, kBlockSize, GetParam());
  ASSERT_TRUE(backend->AllocateHostTier(8).ok());
  EXPECT_FALSE(backend->AllocateHostTier(8).ok());  // once
  testing::TempDir dir;
  DiskBlockStore store(DefaultEnv(), dir.path(), kBlockSize, backend->block_bytes());
  ASSERT_TRUE(store.Open().ok());
  std::mt19937_64 rng(model->seed);
  std::vector<int32_t> tokens = RandomTokens(rng, 3 * kBlockSize);
  const std::vector<int32_t> blocks = {0, 1, 2};
  Prefill(backend.get(), tokens, blocks);
  const std::vector<int32_t> moved =
      enginetest::RoundTripThroughHostAndDisk(backend.get(), &store, blocks, 8, kBlockSize);
  enginetest::ExpectSameKvAndNextLogits(backend.get(), tokens, blocks, moved, RandomTokens(rng, 5),
                                        3, 4, kBlockSize);
}

INSTANTIATE_TEST_SUITE_P(KvDTypes, TierRoundTrip, ::testing::Values(KvDType::kF32, KvDType::kBF16));

// ---- The engine with tiers ---------------------------------------------------------------

using enginetest::Outcome;

GenerateRequest Request(RequestId id, std::vector<int32_t> prompt, Outcome* out, uint64_t salt = 0,
                        SessionId session = 0) {
  return enginetest::RequestInto(out, id, std::move(prompt), 6, session, salt);
}

class TieredEngine {
 public:
  TieredEngine(const enginetest::TestModel& model, int32_t device_blocks, int32_t host_blocks,
               const std::string& disk_dir, int64_t disk_bytes = int64_t{64} << 20) {
    EngineOptions o;
    o.model_id = "tiers-test";
    o.num_host_blocks = host_blocks;
    o.disk_dir = disk_dir;
    o.disk_bytes = disk_dir.empty() ? 0 : disk_bytes;
    auto e = Engine::Create(o, MakeBackend(*model.weights, device_blocks), model.tokenizer.get(),
                            &clock_);
    EXPECT_TRUE(e.ok()) << e.status().ToString();
    engine_ = std::move(e).value();
  }
  EngineImpl* impl() { return static_cast<EngineImpl*>(engine_.get()); }
  Outcome Run(RequestId id, const std::vector<int32_t>& prompt, SessionId session = 0) {
    Outcome out;
    EXPECT_TRUE(engine_->Submit(Request(id, prompt, &out, 0, session)).ok());
    EXPECT_TRUE(engine_->RunUntilIdle().ok());
    EXPECT_TRUE(impl()->TEST_CheckPool().ok()) << impl()->TEST_CheckPool().ToString();
    return out;
  }
  Engine* engine() { return engine_.get(); }
  FakeClock* clock() { return &clock_; }

 private:
  FakeClock clock_;
  std::unique_ptr<Engine> engine_;
};

// Pushes a session's blocks down: other prompts fill the device and then the host.
void Churn(TieredEngine& e, std::mt19937_64& rng, int n, RequestId first_id) {
  for (int i = 0; i < n; ++i) e.Run(first_id + i, RandomTokens(rng, 6 * kBlockSize + 3));
}

TEST(TieredEngineTest, SessionFromDiskMatchesOneThatNeverLeftTheDevice) {
  auto model = MakeTestModel();
  ASSERT_NE(model, nullptr);
  std::mt19937_64 rng(model->seed);
  const std::vector<int32_t> turn1 = RandomTokens(rng, 5 * kBlockSize + 7);
  // Reference: a big device pool, nothing ever leaves it.
  TieredEngine ref(*model, 64, 0, "");
  const Outcome r1 = ref.Run(1, turn1);
  const std::vector<int32_t> turn2 = enginetest::NextTurn(turn1, r1.tokens, RandomTokens(rng, 9));
  const Outcome r2 = ref.Run(2, turn2);
  EXPECT_GT(r2.usage.cached_device_tokens, 0);

  testing::TempDir dir;
  TieredEngine e(*model, 10, 8, dir.path());
  const Outcome t1 = e.Run(1, turn1);
  EXPECT_EQ(t1.tokens, r1.tokens);
  Churn(e, rng, 3, 100);
  const EngineStats s = e.engine()->GetStats();
  EXPECT_GT(s.disk_blocks_used, 0);
  EXPECT_GT(s.demoted_blocks, 0);
  const Outcome t2 = e.Run(2, turn2);
  EXPECT_EQ(t2.tokens, r2.tokens) << "KV that went to disk and back changed the answer";
  EXPECT_GT(t2.usage.cached_disk_tokens, 0);
  EXPECT_EQ(t2.usage.cached_tokens, t2.usage.cached_device_tokens + t2.usage.cached_host_tokens +
                                        t2.usage.cached_disk_tokens);
  EXPECT_EQ(t2.usage.cached_tokens + t2.usage.recomputed_tokens, t2.usage.prompt_tokens);
}

// Retained sessions pushed down by later ones leave the host for disk whole, least
// recently used session first (the policy's order; session ids run against time, so a tie
// broken by id would pick the other end), and the first session, after device -> host ->
// disk -> back, answers exactly as one that never left the device.
TEST(TieredEngineTest, SessionsMoveHostToDiskWholeAndComeBackUnchanged) {
  auto model = MakeTestModel();
  ASSERT_NE(model, nullptr);
  std::mt19937_64 rng(model->seed + 4);
  constexpr int kSessions = 6;
  std::vector<std::vector<int32_t>> turn1;
  for (int i = 0; i < kSessions; ++i) turn1.push_back(RandomTokens(rng, 3 * kBlockSize + 5));
  const SessionId first = 100;  // session i is first - i: later sessions have lower ids
  TieredEngine ref(*model, 64, 0, "");
  const Outcome r1 = ref.Run(1, turn1[0], first);
  const std::vector<int32_t> turn2 =
      enginetest::NextTurn(turn1[0], r1.tokens, RandomTokens(rng, 9));
  const Outcome r2 = ref.Run(2, turn2, first);

  testing::TempDir dir;
  TieredEngine e(*model, 10, 8, dir.path());
  for (int i = 0; i < kSessions; ++i) {
    e.clock()->AdvanceMicros(1000);
    const Outcome t = e.Run(10 + i, turn1[i], first - i);
    if (i == 0) {
      EXPECT_EQ(t.tokens, r1.tokens);
    }
  }
  const BlockPool& pool = e.impl()->TEST_pool();
  const HashScope scope{HashModelId("tiers-test"), 0};
  for (int i = 0; i < kSessions; ++i) {
    const TierCounts at = pool.ProbePrefix(turn1[i], scope);
    EXPECT_TRUE(at.host == 0 || at.disk == 0)
        << "session " << i << " split: " << at.host << " blocks on host, " << at.disk << " on disk";
  }
  EXPECT_EQ(pool.ProbePrefix(turn1[0], scope).disk, 3) << "the oldest session is not on disk";
  e.clock()->AdvanceMicros(1000);
  const Outcome t2 = e.Run(20, turn2, first);
  EXPECT_EQ(t2.tokens, r2.tokens) << "KV that went host -> disk -> back changed the answer";
  // Read up from disk; the match may stop early when retained sessions hold the device.
  EXPECT_GE(t2.usage.cached_disk_tokens, kBlockSize);
  EXPECT_EQ(t2.usage.cached_tokens + t2.usage.recomputed_tokens, t2.usage.prompt_tokens);
}

// The CPU backend with Backend::SwapsOverlapCompute set as on CUDA (its swaps still
// complete at once). It counts the forwards of several sequences that read a block swapped
// in since the forward before: steps in which the others would wait for that promotion.
class OverlappingBackend : public enginetest::ForwardingBackend {
 public:
  OverlappingBackend(std::unique_ptr<Backend> inner, bool overlap)
      : ForwardingBackend(std::move(inner)), overlap_(overlap) {}
  bool SwapsOverlapCompute() const override { return overlap_; }
  Result<TransferFence> SwapIn(std::span<const std::pair<int32_t, int32_t>> host_device) override {
    for (auto [host, device] : host_device) fresh_.push_back(device);
    return ForwardingBackend::SwapIn(host_device);
  }
  Status Forward(const ForwardBatch& batch, std::vector<float>* logits) override {
    if (batch.num_seqs() > 1) {
      const std::vector<int32_t> touched = BlocksTouched(batch, kv_shape().block_size);
      if (std::find_first_of(touched.begin(), touched.end(), fresh_.begin(), fresh_.end()) !=
          touched.end()) {
        ++steps_behind_a_promotion_;
      }
    }
    fresh_.clear();
    return ForwardingBackend::Forward(batch, logits);
  }
  int steps_behind_a_promotion() const { return steps_behind_a_promotion_; }

 private:
  const bool overlap_;
  std::vector<int32_t> fresh_;
  int steps_behind_a_promotion_ = 0;
};

// On a backend whose swaps overlap the forward pass, a turn whose prefix comes up from
// the host tier while another sequence runs computes from the step after its admission,
// so no step of the other waits for its promotion; it answers as a session that never
// left the device. The same run on a backend that does not overlap has the other's step
// read the fresh blocks (the test can tell the two apart).
TEST(TieredEngineTest, PromotedTurnComputesAStepLaterAndAnswersTheSame) {
  auto model = MakeTestModel();
  ASSERT_NE(model, nullptr);
  std::mt19937_64 rng(model->seed + 7);
  const std::vector<int32_t> turn1 = RandomTokens(rng, 4 * kBlockSize + 3);
  TieredEngine ref(*model, 64, 0, "");
  const Outcome r1 = ref.Run(1, turn1, 5);
  const std::vector<int32_t> turn2 = enginetest::NextTurn(turn1, r1.tokens, RandomTokens(rng, 9));
  const Outcome r2 = ref.Run(2, turn2, 5);
  const std::vector<int32_t> other = RandomTokens(rng, 2 * kBlockSize + 1);

  for (bool overlap : {true, false}) {
    SCOPED_TRACE(overlap ? "overlapping swaps" : "swaps in the step");
    FakeClock clock;
    EngineOptions o;
    o.model_id = "tiers-test";
    o.num_host_blocks = 16;
    auto wrapped = std::make_unique<OverlappingBackend>(MakeBackend(*model->weights, 12), overlap);
    OverlappingBackend* backend = wrapped.get();
    auto e = Engine::Create(o, std::move(wrapped), model->tokenizer.get(), &clock);
    ASSERT_TRUE(e.ok()) << e.status().ToString();
    Outcome t1;
    ASSERT_TRUE((*e)->Submit(Request(1, turn1, &t1, 0, 5)).ok());
    ASSERT_TRUE((*e)->RunUntilIdle().ok());
    ASSERT_EQ(t1.tokens, r1.tokens);
    // Two other prompts take the device; the session's blocks go to the host tier.
    for (RequestId id : {10, 11}) {
      Outcome churn;
      ASSERT_TRUE((*e)->Submit(Request(id, RandomTokens(rng, 8 * kBlockSize), &churn)).ok());
      ASSERT_TRUE((*e)->RunUntilIdle().ok());
    }
    const HashScope scope{HashModelId("tiers-test"), 0};
    auto* impl = static_cast<EngineImpl*>(e->get());
    ASSERT_GT(impl->TEST_pool().ProbePrefix(turn1, scope).host, 0) << "nothing on the host tier";
    // The other prompt is admitted first; the session's turn comes in beside it.
    Outcome b, t2;
    ASSERT_TRUE((*e)->Submit(Request(20, other, &b)).ok());
    ASSERT_TRUE((*e)->Submit(Request(21, turn2, &t2, 0, 5)).ok());
    ASSERT_TRUE((*e)->RunUntilIdle().ok());
    EXPECT_TRUE(impl->TEST_CheckPool().ok()) << impl->TEST_CheckPool().ToString();
    EXPECT_EQ(t2.tokens, r2.tokens) << "the promoted turn's answer changed";
    EXPECT_GT(t2.usage.cached_host_tokens, 0);
    EXPECT_EQ(t2.usage.cached_tokens + t2.usage.recomputed_tokens, t2.usage.prompt_tokens);
    EXPECT_EQ(b.tokens.size(), 6u);
    if (overlap) {
      EXPECT_EQ(backend->steps_behind_a_promotion(), 0);
    } else {
      EXPECT_GT(backend->steps_behind_a_promotion(), 0);
    }
  }
}

TEST(TieredEngineTest, FlippedDiskByteIsDetectedAndRecomputedCorrectly) {
  auto model = MakeTestModel();
  ASSERT_NE(model, nullptr);
  std::mt19937_64 rng(model->seed + 1);
  const std::vector<int32_t> prompt = RandomTokens(rng, 4 * kBlockSize + 5);
  TieredEngine ref(*model, 64, 0, "");
  const Outcome want = ref.Run(1, prompt);

  testing::TempDir dir;
  TieredEngine e(*model, 10, 8, dir.path());
  e.Run(1, prompt);
  Churn(e, rng, 3, 100);
  e.impl()->TEST_WaitForDiskWrites();  // the disk tier writes on its own thread
  // Flip one payload byte in the block file of the prompt's first block.
  DiskBlockStore probe(DefaultEnv(), dir.path(), kBlockSize, 1);
  const BlockHash first = HashBlock(kRootParentHash, std::span(prompt).first(kBlockSize),
                                    HashScope{HashModelId("tiers-test"), 0});
  const std::string path = probe.PathOf(first);
  ASSERT_TRUE(DefaultEnv()->FileExists(path)) << "the first block never reached disk";
  {
    auto file = DefaultEnv()->OpenRandomRWFile(path, false);
    ASSERT_TRUE(file.ok());
    const uint64_t at = *(*file)->Size() - 7;
    uint8_t b;
    ASSERT_TRUE((*file)->ReadAt(at, &b, 1).ok());
    b ^= 1;
    ASSERT_TRUE((*file)->WriteAt(at, &b, 1).ok());
  }
  const Outcome got = e.Run(2, prompt);
  EXPECT_EQ(got.tokens, want.tokens);
  EXPECT_EQ(got.usage.cached_disk_tokens, 0);  // the chain broke at its first block
  EXPECT_EQ(e.engine()->GetStats().disk_read_failures, 1);
}

TEST(TieredEngineTest, RestartResumesFromDisk) {
  auto model = MakeTestModel();
  ASSERT_NE(model, nullptr);
  std::mt19937_64 rng(model->seed + 2);
  const std::vector<int32_t> prompt = RandomTokens(rng, 4 * kBlockSize + 3);
  testing::TempDir dir;
  Outcome first;
  {
    TieredEngine e(*model, 10, 8, dir.path());
    first = e.Run(1, prompt);
    Churn(e, rng, 3, 100);
  }  // destroyed: queued write-back finishes, nothing is synced
  TieredEngine again(*model, 10, 8, dir.path());
  EXPECT_GT(again.engine()->GetStats().disk_blocks_used, 0);
  const Outcome second = again.Run(1, prompt);
  EXPECT_EQ(second.tokens, first.tokens);
  EXPECT_GT(second.usage.cached_disk_tokens, 0);
}

// Sessions decode while others' blocks are demoted and promoted; the pool's invariants hold
// after every step and every answer equals the reference engine's.
TEST(TieredEngineTest, SeededStressKeepsInvariantsEveryStep) {
  auto model = MakeTestModel();
  ASSERT_NE(model, nullptr);
  std::mt19937_64 rng(model->seed + 3);
  std::vector<std::vector<int32_t>> prompts;
  const std::vector<int32_t> shared = RandomTokens(rng, 2 * kBlockSize);
  for (int i = 0; i < 12; ++i) {
    std::vector<int32_t> p = rng() % 2 ? shared : std::vector<int32_t>{};
    const std::vector<int32_t> tail = RandomTokens(rng, 10 + static_cast<int>(rng() % 50));
    p.insert(p.end(), tail.begin(), tail.end());
    prompts.push_back(p);
  }
  TieredEngine ref(*model, 128, 0, "");
  std::vector<Outcome> want(prompts.size());
  for (size_t i = 0; i < prompts.size(); ++i) want[i] = ref.Run(i + 1, prompts[i]);

  testing::TempDir dir;
  TieredEngine e(*model, 14, 6, dir.path());
  std::vector<Outcome> got(prompts.size() * 2);
  RequestId id = 1;
  for (int round = 0; round < 2; ++round) {
    std::vector<size_t> order(prompts.size());
    std::iota(order.begin(), order.end(), 0);
    std::shuffle(order.begin(), order.end(), rng);
    size_t next = 0;
    while (next < order.size() || e.impl()->GetStats().running + e.impl()->GetStats().waiting > 0) {
      for (int k = static_cast<int>(rng() % 3); k > 0 && next < order.size(); --k, ++next) {
        const size_t i = order[next];
        ASSERT_TRUE(
            e.engine()->Submit(Request(id++, prompts[i], &got[round * prompts.size() + i])).ok());
      }
      ASSERT_TRUE(e.impl()->Step().ok());
      ASSERT_TRUE(e.impl()->TEST_CheckPool().ok()) << e.impl()->TEST_CheckPool().ToString();
    }
    ASSERT_TRUE(e.engine()->RunUntilIdle().ok());
  }
  for (size_t i = 0; i < got.size(); ++i) {
    EXPECT_EQ(got[i].tokens, want[i % prompts.size()].tokens) << "request " << i;
  }
  const EngineStats s = e.engine()->GetStats();
  EXPECT_GT(s.demoted_blocks, 0);
  EXPECT_GT(s.promoted_blocks, 0);
}

}  // namespace
}  // namespace kvkeep
