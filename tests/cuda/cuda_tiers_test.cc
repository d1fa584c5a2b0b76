// KV tiers on the CUDA backend: pinned host slots and batched swaps on the swap streams.
//  - A block's round trip device -> pinned host -> disk -> pinned host -> device is
//    bit-identical for every layer, and the next chunk's logits over the moved blocks equal
//    those over the originals.
//  - Swaps of one session's blocks interleaved with decode steps of another do not change
//    the other's logits (against the same steps run with no swaps).
//  - A step right behind a swap its blocks need waits for it: a decode over blocks a
//    pending swap-in writes, a prefill over blocks a pending swap-out still reads.
//  - The engine on CUDA with host and disk tiers: a session pushed to host and disk and
//    back gives the same greedy tokens as one that never left the device, and reports
//    where its prefix came from.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstring>
#include <functional>
#include <random>
#include <vector>

#include "cache/disk_tier.h"
#include "engine/cuda/cuda_backend.h"
#include "engine/engine.h"
#include "engine/engine_impl.h"
#include "tests/cuda/cuda_test_util.h"
#include "tests/engine/engine_fixture.h"
#include "tests/engine/tier_round_trip.h"

namespace kvkeep {
namespace {

using enginetest::MakeBatch;
using enginetest::MakeTestModel;
using enginetest::RandomTokens;
using enginetest::RunBatch;

constexpr int32_t kBlockSize = 16;

std::unique_ptr<Backend> MakeCudaBackend(const ModelWeights& weights, int32_t num_blocks) {
  BackendOptions o;
  o.num_kv_blocks = num_blocks;
  o.block_size = kBlockSize;
  o.kv_dtype = KvDType::kBF16;
  auto b = CreateCudaBackend(weights, o);
  EXPECT_TRUE(b.ok()) << b.status().ToString();
  return b.ok() ? std::move(b).value() : nullptr;
}

std::vector<uint8_t> ReadBlock(Backend* backend, int32_t block) {
  std::vector<uint8_t> bytes(backend->block_bytes());
  EXPECT_TRUE(backend->ReadBlock(block, bytes.data()).ok());
  return bytes;
}

TEST(CudaTiersTest, DeviceHostDiskDeviceIsBitIdenticalPerLayerAndGivesSameLogits) {
  testing::GpuArena probe;
  KVKEEP_REQUIRE_GPU(probe);
  auto model = MakeTestModel();
  ASSERT_NE(model, nullptr);
  auto backend = MakeCudaBackend(*model->weights, 16);
  ASSERT_NE(backend, nullptr);
  ASSERT_TRUE(backend->AllocateHostTier(8).ok());
  testing::TempDir dir;
  DiskBlockStore store(DefaultEnv(), dir.path(), kBlockSize, backend->block_bytes());
  ASSERT_TRUE(store.Open().ok());
  std::mt19937_64 rng(model->seed);
  const std::vector<int32_t> tokens = RandomTokens(rng, 3 * kBlockSize);
  const std::vector<int32_t> blocks = {0, 1, 2};
  RunBatch(backend.get(), MakeBatch({{&tokens, &blocks, 0, 3 * kBlockSize}}, kBlockSize, false));

  const std::vector<int32_t> moved =
      enginetest::RoundTripThroughHostAndDisk(backend.get(), &store, blocks, 8, kBlockSize);
  enginetest::ExpectSameKvAndNextLogits(backend.get(), tokens, blocks, moved, RandomTokens(rng, 5),
                                        3, 4, kBlockSize);
}

// Session A decodes while session B's blocks go out to host and come back elsewhere, with
// no waits between the copies and the forward passes except the backend's own ordering.
TEST(CudaTiersTest, SwapsInterleavedWithDecodeCorruptNeither) {
  testing::GpuArena probe;
  KVKEEP_REQUIRE_GPU(probe);
  auto model = MakeTestModel();
  ASSERT_NE(model, nullptr);
  std::mt19937_64 rng(model->seed + 1);
  const std::vector<int32_t> a_prompt = RandomTokens(rng, 2 * kBlockSize + 3);
  const std::vector<int32_t> b_prompt = RandomTokens(rng, 4 * kBlockSize);
  const int kSteps = 12;

  // Decodes A greedily for kSteps after its prompt; between steps, `between(step)` runs.
  auto decode_a = [&](Backend* backend, const std::function<void(int)>& between) {
    std::vector<int32_t> a = a_prompt;
    const std::vector<int32_t> a_blocks = {20, 21, 22, 23};
    std::vector<float> logits = RunBatch(
        backend,
        MakeBatch({{&a, &a_blocks, 0, static_cast<int32_t>(a.size())}}, kBlockSize, false));
    std::vector<float> all = logits;
    const int32_t vocab = model->config.vocab_size;
    for (int s = 0; s < kSteps; ++s) {
      between(s);
      a.push_back(static_cast<int32_t>(std::max_element(logits.end() - vocab, logits.end()) -
                                       (logits.end() - vocab)));
      const int32_t len = static_cast<int32_t>(a.size());
      logits = RunBatch(backend, MakeBatch({{&a, &a_blocks, len - 1, len}}, kBlockSize, false));
      all.insert(all.end(), logits.begin(), logits.end());
    }
    return all;
  };

  auto quiet = MakeCudaBackend(*model->weights, 32);
  ASSERT_NE(quiet, nullptr);
  const std::vector<float> want = decode_a(quiet.get(), [](int) {});

  auto busy = MakeCudaBackend(*model->weights, 32);
  ASSERT_NE(busy, nullptr);
  ASSERT_TRUE(busy->AllocateHostTier(8).ok());
  const std::vector<int32_t> b_blocks = {0, 1, 2, 3};
  RunBatch(busy.get(), MakeBatch({{&b_prompt, &b_blocks, 0, 4 * kBlockSize}}, kBlockSize, false));
  std::vector<std::vector<uint8_t>> b_bytes;
  for (int32_t blk : b_blocks) b_bytes.push_back(ReadBlock(busy.get(), blk));
  // B's blocks hop device -> host -> device (another place) -> host ... while A decodes.
  std::vector<int32_t> b_where = b_blocks;
  TransferFence last;
  const std::vector<float> got = decode_a(busy.get(), [&](int step) {
    std::vector<std::pair<int32_t, int32_t>> pairs;
    if (step % 2 == 0) {
      for (int32_t i = 0; i < 4; ++i) pairs.emplace_back(b_where[i], i + 4 * ((step / 2) % 2));
      auto f = busy->SwapOut(pairs);
      ASSERT_TRUE(f.ok()) << f.status().ToString();
      last = *f;
      for (int32_t i = 0; i < 4; ++i) b_where[i] = i + 4 * ((step / 2) % 2);  // host slots
    } else {
      const int32_t base = (step / 2) % 2 ? 4 : 8;  // alternate device homes 4..7, 8..11
      for (int32_t i = 0; i < 4; ++i) pairs.emplace_back(b_where[i], base + i);
      auto f = busy->SwapIn(pairs);
      ASSERT_TRUE(f.ok()) << f.status().ToString();
      last = *f;
      for (int32_t i = 0; i < 4; ++i) b_where[i] = base + i;
    }
  });
  ASSERT_TRUE(busy->WaitFence(last).ok());
  EXPECT_EQ(got, want) << "A's logits changed while B's blocks moved";
  for (int32_t i = 0; i < 4; ++i) {
    EXPECT_EQ(ReadBlock(busy.get(), b_where[i]), b_bytes[i]) << "B's block " << i;
  }
}

// Queues copy-stream work that no step waits on (swap-outs of blocks 10..39, which the
// steps below never touch; every other block, so each is its own copy), so that a swap
// queued after it completes well after the next forward pass has been launched.
void QueueCopyBacklog(Backend* backend, int rounds) {
  std::vector<std::pair<int32_t, int32_t>> pairs;
  for (int32_t blk = 39; blk >= 10; blk -= 2) pairs.emplace_back(blk, blk);
  for (int r = 0; r < rounds; ++r) {
    auto f = backend->SwapOut(pairs);
    ASSERT_TRUE(f.ok()) << f.status().ToString();
  }
}

// The waits the overlap must keep: a step that reads blocks a pending swap-in writes, and
// a step that overwrites blocks a pending swap-out still reads, each queued right behind
// the swap (no WaitFence) and behind a backlog of swaps, so a missing wait shows.
TEST(CudaTiersTest, StepsWaitForThePendingSwapsTheirBlocksNeed) {
  testing::GpuArena probe;
  KVKEEP_REQUIRE_GPU(probe);
  auto model = MakeTestModel();
  ASSERT_NE(model, nullptr);
  std::mt19937_64 rng(model->seed + 5);
  const std::vector<int32_t> b_prompt = RandomTokens(rng, 4 * kBlockSize - 1);
  const std::vector<int32_t> c_prompt = RandomTokens(rng, 4 * kBlockSize);
  const std::vector<int32_t> home = {0, 1, 2, 3};
  const int32_t len = 4 * kBlockSize;  // B's decode token lands in its last block

  // Reference: B's decode step over blocks that never moved.
  auto quiet = MakeCudaBackend(*model->weights, 64);
  ASSERT_NE(quiet, nullptr);
  std::vector<int32_t> b = b_prompt;
  const std::vector<float> first =
      RunBatch(quiet.get(), MakeBatch({{&b, &home, 0, len - 1}}, kBlockSize, false));
  b.push_back(static_cast<int32_t>(std::max_element(first.begin(), first.end()) - first.begin()));
  const std::vector<float> want =
      RunBatch(quiet.get(), MakeBatch({{&b, &home, len - 1, len}}, kBlockSize, false));

  auto busy = MakeCudaBackend(*model->weights, 64);
  ASSERT_NE(busy, nullptr);
  ASSERT_TRUE(busy->AllocateHostTier(64).ok());
  RunBatch(busy.get(), MakeBatch({{&b, &home, 0, len - 1}}, kBlockSize, false));
  std::vector<std::vector<uint8_t>> b_bytes;
  for (int32_t blk : home) b_bytes.push_back(ReadBlock(busy.get(), blk));

  for (int round = 0; round < 3; ++round) {
    // 1. Swap-in, then at once a decode step over the swapped-in blocks (their old
    //    contents poisoned first).
    std::vector<std::pair<int32_t, int32_t>> out, in;
    const std::vector<int32_t> moved = {40, 41, 42, 43};
    for (int32_t i = 0; i < 4; ++i) {
      out.emplace_back(home[i], i);
      in.emplace_back(i, moved[i]);
    }
    auto f = busy->SwapOut(out);
    ASSERT_TRUE(f.ok()) << f.status().ToString();
    ASSERT_TRUE(busy->WaitFence(*f).ok());
    const std::vector<uint8_t> poison(busy->block_bytes(), 0x7f);
    for (int32_t blk : moved) ASSERT_TRUE(busy->WriteBlock(blk, poison.data()).ok());
    QueueCopyBacklog(busy.get(), 50);
    ASSERT_TRUE(busy->SwapIn(in).ok());
    const std::vector<float> got =
        RunBatch(busy.get(), MakeBatch({{&b, &moved, len - 1, len}}, kBlockSize, false));
    EXPECT_EQ(got, want) << "round " << round << ": the decode step read blocks before swap-in";

    // 2. Swap-out, then at once a prefill that overwrites the swapped-out blocks: the host
    //    copies must still be B's.
    std::vector<std::pair<int32_t, int32_t>> away;
    for (int32_t i = 0; i < 4; ++i) away.emplace_back(home[i], 50 + i);
    QueueCopyBacklog(busy.get(), 50);
    auto g = busy->SwapOut(away);
    ASSERT_TRUE(g.ok()) << g.status().ToString();
    RunBatch(busy.get(), MakeBatch({{&c_prompt, &home, 0, len}}, kBlockSize, false));
    ASSERT_TRUE(busy->WaitFence(*g).ok());
    for (int32_t i = 0; i < 4; ++i) {
      EXPECT_EQ(0, std::memcmp(busy->host_block(50 + i), b_bytes[i].data(), busy->block_bytes()))
          << "round " << round << ": block " << i << " was overwritten before its swap-out read it";
    }
    // B home again for the next round.
    for (int32_t i = 0; i < 4; ++i) ASSERT_TRUE(busy->WriteBlock(home[i], b_bytes[i].data()).ok());
  }
}

using enginetest::Outcome;

class CudaTieredEngine {
 public:
  CudaTieredEngine(const enginetest::TestModel& model, int32_t device_blocks, int32_t host_blocks,
                   const std::string& disk_dir) {
    EngineOptions o;
    o.model_id = "cuda-tiers-test";
    o.num_host_blocks = host_blocks;
    o.disk_dir = disk_dir;
    o.disk_bytes = disk_dir.empty() ? 0 : int64_t{64} << 20;
    auto e = Engine::Create(o, MakeCudaBackend(*model.weights, device_blocks),
                            model.tokenizer.get(), &clock_);
    EXPECT_TRUE(e.ok()) << e.status().ToString();
    if (e.ok()) engine_ = std::move(e).value();
  }
  bool ok() const { return engine_ != nullptr; }
  Engine* engine() { return engine_.get(); }
  Outcome Run(RequestId id, const std::vector<int32_t>& prompt) {
    Outcome out;
    GenerateRequest r = enginetest::RequestInto(&out, id, prompt, 6);
    EXPECT_TRUE(engine_->Submit(std::move(r)).ok());
    EXPECT_TRUE(engine_->RunUntilIdle().ok());
    return out;
  }

 private:
  FakeClock clock_;
  std::unique_ptr<Engine> engine_;
};

TEST(CudaTiersTest, SessionThroughHostAndDiskMatchesOneThatNeverLeftTheDevice) {
  testing::GpuArena probe;
  KVKEEP_REQUIRE_GPU(probe);
  auto model = MakeTestModel();
  ASSERT_NE(model, nullptr);
  std::mt19937_64 rng(model->seed + 2);
  const std::vector<int32_t> turn1 = RandomTokens(rng, 5 * kBlockSize + 7);
  CudaTieredEngine ref(*model, 64, 0, "");
  ASSERT_TRUE(ref.ok());
  const Outcome r1 = ref.Run(1, turn1);
  const std::vector<int32_t> turn2 = enginetest::NextTurn(turn1, r1.tokens, RandomTokens(rng, 9));
  const Outcome r2 = ref.Run(2, turn2);
  EXPECT_GT(r2.usage.cached_device_tokens, 0);

  testing::TempDir dir;
  CudaTieredEngine e(*model, 10, 8, dir.path());
  ASSERT_TRUE(e.ok());
  EXPECT_EQ(e.Run(1, turn1).tokens, r1.tokens);
  for (int i = 0; i < 3; ++i) e.Run(100 + i, RandomTokens(rng, 6 * kBlockSize + 3));
  const EngineStats s = e.engine()->GetStats();
  EXPECT_GT(s.demoted_blocks, 0);
  EXPECT_GT(s.disk_blocks_used, 0);
  const Outcome t2 = e.Run(2, turn2);
  EXPECT_EQ(t2.tokens, r2.tokens) << "KV that left the GPU changed the answer";
  EXPECT_GT(t2.usage.cached_host_tokens + t2.usage.cached_disk_tokens, 0);
  EXPECT_EQ(t2.usage.cached_tokens, t2.usage.cached_device_tokens + t2.usage.cached_host_tokens +
                                        t2.usage.cached_disk_tokens);
  EXPECT_EQ(t2.usage.cached_tokens + t2.usage.recomputed_tokens, t2.usage.prompt_tokens);
  EXPECT_GT(e.engine()->GetStats().promoted_blocks, 0);
}

// The CUDA backend's swaps overlap the forward pass, so a turn whose prefix comes up from
// the host tier beside another running sequence computes from the step after its
// admission (docs/engine.md, "Admission"). The reference runs the same batches on a pool
// it never leaves: the other turn's prefill alone, then its decodes beside the turn's
// prefill (the turn submitted a step later), so both answers must match bit for bit.
TEST(CudaTiersTest, PromotedTurnBesideAnotherMatchesOneThatNeverLeftTheDevice) {
  testing::GpuArena probe;
  KVKEEP_REQUIRE_GPU(probe);
  auto model = MakeTestModel();
  ASSERT_NE(model, nullptr);
  std::mt19937_64 rng(model->seed + 3);
  const std::vector<int32_t> turn1 = RandomTokens(rng, 4 * kBlockSize + 3);
  const std::vector<int32_t> other = RandomTokens(rng, 2 * kBlockSize + 1);
  CudaTieredEngine ref(*model, 64, 0, "");
  ASSERT_TRUE(ref.ok());
  const Outcome r1 = ref.Run(1, turn1);
  const std::vector<int32_t> turn2 = enginetest::NextTurn(turn1, r1.tokens, RandomTokens(rng, 9));
  Outcome rb, r2;
  ASSERT_TRUE(ref.engine()->Submit(enginetest::RequestInto(&rb, 2, other, 6)).ok());
  ASSERT_TRUE(static_cast<EngineImpl*>(ref.engine())->Step().ok());
  ASSERT_TRUE(ref.engine()->Submit(enginetest::RequestInto(&r2, 3, turn2, 6)).ok());
  ASSERT_TRUE(ref.engine()->RunUntilIdle().ok());
  ASSERT_GT(r2.usage.cached_device_tokens, 0);

  CudaTieredEngine e(*model, 12, 16, "");
  ASSERT_TRUE(e.ok());
  EXPECT_EQ(e.Run(1, turn1).tokens, r1.tokens);
  for (int i = 0; i < 2; ++i) e.Run(100 + i, RandomTokens(rng, 8 * kBlockSize));
  ASSERT_GT(e.engine()->GetStats().demoted_blocks, 0);
  Outcome b, t2;
  ASSERT_TRUE(e.engine()->Submit(enginetest::RequestInto(&b, 20, other, 6)).ok());
  ASSERT_TRUE(e.engine()->Submit(enginetest::RequestInto(&t2, 21, turn2, 6)).ok());
  ASSERT_TRUE(e.engine()->RunUntilIdle().ok());
  EXPECT_GT(t2.usage.cached_host_tokens, 0);
  EXPECT_EQ(t2.usage.cached_tokens, r2.usage.cached_tokens);
  EXPECT_EQ(t2.tokens, r2.tokens) << "the promoted turn's answer changed";
  EXPECT_EQ(b.tokens, rb.tokens) << "the turn beside the promotion changed";
}

}  // namespace
}  // namespace kvkeep
