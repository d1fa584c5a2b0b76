// Fault injection below the device pool (issue 11, item 6): the disk tier under a full disk
// (ENOSPC), torn writes, EIO on read and damaged files found at start, and a host tier that
// cannot be allocated or is too small. Each test checks the engine against a reference
// engine whose KV never left the device: a fault may cost a recompute, never a wrong
// token, never a crash; the failure is counted; and the tier works again once the fault
// clears. Faults come through the Env seam (tests/hardening/disk_fault_env.h).
#include <gtest/gtest.h>

#include <climits>
#include <random>

#include "cache/disk_tier.h"
#include "engine/engine_impl.h"
#include "tests/engine/engine_fixture.h"
#include "tests/hardening/disk_fault_env.h"

namespace kvkeep {
namespace {

using enginetest::MakeBackend;
using enginetest::MakeTestModel;
using enginetest::Outcome;
using enginetest::RandomTokens;
using testing::DiskFault;
using testing::DiskFaultEnv;

constexpr int32_t kBlockSize = 16;

class Engine2 {
 public:
  // device_blocks on the device; host_blocks and a disk tier in disk_dir (through env) when
  // host_blocks > 0.
  Engine2(const enginetest::TestModel& model, int32_t device_blocks, int32_t host_blocks,
          const std::string& disk_dir, Env* env) {
    EngineOptions o;
    o.model_id = "disk-fault-test";
    o.num_host_blocks = host_blocks;
    o.disk_dir = disk_dir;
    o.disk_bytes = disk_dir.empty() ? 0 : int64_t{64} << 20;
    o.env = env;
    auto e = Engine::Create(o, MakeBackend(*model.weights, device_blocks), model.tokenizer.get(),
                            &clock_);
    EXPECT_TRUE(e.ok()) << e.status().ToString();
    if (e.ok()) engine_ = std::move(e).value();
  }
  bool ok() const { return engine_ != nullptr; }
  Outcome Run(RequestId id, const std::vector<int32_t>& prompt) {
    Outcome out;
    EXPECT_TRUE(engine_->Submit(enginetest::RequestInto(&out, id, prompt, 6)).ok());
    EXPECT_TRUE(engine_->RunUntilIdle().ok());
    auto* impl = static_cast<EngineImpl*>(engine_.get());
    EXPECT_TRUE(impl->TEST_CheckPool().ok()) << impl->TEST_CheckPool().ToString();
    return out;
  }
  // Other prompts push earlier sessions' blocks to the host tier and then to disk.
  void Churn(std::mt19937_64& rng, RequestId first_id) {
    for (int i = 0; i < 3; ++i) Run(first_id + i, RandomTokens(rng, 6 * kBlockSize + 3));
  }
  EngineStats stats() { return engine_->GetStats(); }

 private:
  FakeClock clock_;
  std::unique_ptr<Engine> engine_;
};

// Reference answers from an engine that never moves KV off the device.
std::vector<int32_t> Reference(const enginetest::TestModel& model,
                               const std::vector<int32_t>& prompt) {
  Engine2 ref(model, 64, 0, "", nullptr);
  return ref.Run(1, prompt).tokens;
}

struct FaultCase {
  const char* name;
  DiskFault fault;
};

class DiskFaultTest : public ::testing::TestWithParam<FaultCase> {};

TEST_P(DiskFaultTest, FaultCostsARecomputeNeverAWrongTokenAndTheTierRecovers) {
  const FaultCase c = GetParam();
  auto model = MakeTestModel();
  ASSERT_NE(model, nullptr);
  std::mt19937_64 rng(model->seed);
  const std::vector<int32_t> first = RandomTokens(rng, 4 * kBlockSize + 5);
  const std::vector<int32_t> second = RandomTokens(rng, 4 * kBlockSize + 9);
  const std::vector<int32_t> want_first = Reference(*model, first);
  const std::vector<int32_t> want_second = Reference(*model, second);

  DiskFaultEnv env;
  ::kvkeep::testing::TempDir dir;
  Engine2 e(*model, 10, 8, dir.path(), &env);
  ASSERT_TRUE(e.ok());
  const bool write_fault = c.fault != DiskFault::kReadEio;
  if (write_fault) env.Inject(c.fault, 1, /*sticky=*/true);  // the disk is full or tearing
  EXPECT_EQ(e.Run(1, first).tokens, want_first);
  e.Churn(rng, 100);
  ASSERT_GT(e.stats().demoted_blocks, 0) << "nothing was demoted: the test shows nothing";
  if (!write_fault) env.Inject(c.fault, 1, /*sticky=*/true);  // the disk fails on read
  const Outcome again = e.Run(2, first);
  EXPECT_GT(env.injected(), 0);
  EXPECT_EQ(again.tokens, want_first) << c.name << " changed the answer";
  EXPECT_EQ(again.usage.cached_disk_tokens, 0) << "a faulty block was served from disk";
  EXPECT_EQ(again.usage.cached_tokens + again.usage.recomputed_tokens, again.usage.prompt_tokens);
  const EngineStats s = e.stats();
  if (c.fault == DiskFault::kNoSpace) {
    EXPECT_GT(s.disk_write_failures, 0) << "ENOSPC was not counted";
  } else {
    EXPECT_GT(s.disk_read_failures, 0) << c.name << " was not caught on read";
  }

  // The fault clears: the same engine demotes to disk and serves from it again.
  env.Clear();
  EXPECT_EQ(e.Run(3, second).tokens, want_second);
  e.Churn(rng, 200);
  const Outcome recovered = e.Run(4, second);
  EXPECT_EQ(recovered.tokens, want_second);
  EXPECT_GT(recovered.usage.cached_disk_tokens, 0) << "the disk tier did not recover";
}

INSTANTIATE_TEST_SUITE_P(Faults, DiskFaultTest,
                         ::testing::Values(FaultCase{"ENOSPC", DiskFault::kNoSpace},
                                           FaultCase{"short write", DiskFault::kShortWrite},
                                           FaultCase{"EIO on read", DiskFault::kReadEio}),
                         [](const auto& info) {
                           return std::string(info.param.fault == DiskFault::kNoSpace ? "NoSpace"
                                              : info.param.fault == DiskFault::kShortWrite
                                                  ? "ShortWrite"
                                                  : "ReadEio");
                         });

// Block files damaged while the daemon was down (truncated, garbage, a stray tmp file) are
// dropped at start; the rest are adopted and the answers stay right.
TEST(DiskFaultRestartTest, DamagedFilesAreDroppedAtStartAndTheRestServe) {
  auto model = MakeTestModel();
  ASSERT_NE(model, nullptr);
  std::mt19937_64 rng(model->seed + 1);
  const std::vector<int32_t> prompt = RandomTokens(rng, 4 * kBlockSize + 3);
  const std::vector<int32_t> want = Reference(*model, prompt);
  ::kvkeep::testing::TempDir dir;
  {
    Engine2 e(*model, 10, 8, dir.path(), DefaultEnv());
    ASSERT_TRUE(e.ok());
    EXPECT_EQ(e.Run(1, prompt).tokens, want);
    e.Churn(rng, 100);
  }
  auto names = DefaultEnv()->ListDir(dir.path());
  ASSERT_TRUE(names.ok());
  std::vector<std::string> files;
  for (const std::string& n : *names) {
    if (n.size() > 4 && n.substr(n.size() - 4) == ".kvb") files.push_back(dir.path() + "/" + n);
  }
  ASSERT_GE(files.size(), 3u);
  ASSERT_TRUE(DefaultEnv()->WriteFileAtomic(files[0], "KVKB truncated").ok());
  ASSERT_TRUE(DefaultEnv()->WriteFileAtomic(files[1], std::string(4096, '\xff')).ok());
  ASSERT_TRUE(DefaultEnv()->WriteFileAtomic(dir.path() + "/0000000000000001.kvb.tmp", "x").ok());

  Engine2 again(*model, 10, 8, dir.path(), DefaultEnv());
  ASSERT_TRUE(again.ok()) << "damaged files stopped the engine from starting";
  EXPECT_FALSE(DefaultEnv()->FileExists(files[0]));
  EXPECT_FALSE(DefaultEnv()->FileExists(files[1]));
  EXPECT_FALSE(DefaultEnv()->FileExists(dir.path() + "/0000000000000001.kvb.tmp"));
  EXPECT_EQ(again.Run(1, prompt).tokens, want);
}

// A host tier the machine cannot allocate is a clear error from Engine::Create (the daemon
// reports it and exits), not a bad_alloc that kills the process.
TEST(HostPoolFaultTest, UnallocatableHostTierIsAClearError) {
  auto model = MakeTestModel();
  ASSERT_NE(model, nullptr);
  EngineOptions o;
  o.model_id = "disk-fault-test";
  o.num_host_blocks = INT32_MAX;  // ~64 TiB of tiny-model blocks
  FakeClock clock;
  auto e = Engine::Create(o, MakeBackend(*model->weights, 10), model->tokenizer.get(), &clock);
  ASSERT_FALSE(e.ok());
  EXPECT_TRUE(e.status().IsResourceExhausted()) << e.status().ToString();
  EXPECT_NE(e.status().ToString().find("host tier"), std::string::npos) << e.status().ToString();
}

// A host tier with one slot: demotion finds it taken almost always and reads from disk
// need it too. Blocks are dropped instead (counted), answers stay right.
TEST(HostPoolFaultTest, HostTierTooSmallDropsBlocksAndStaysCorrect) {
  auto model = MakeTestModel();
  ASSERT_NE(model, nullptr);
  std::mt19937_64 rng(model->seed + 2);
  ::kvkeep::testing::TempDir dir;
  Engine2 e(*model, 10, 1, dir.path(), DefaultEnv());
  ASSERT_TRUE(e.ok());
  for (int round = 0; round < 3; ++round) {
    const std::vector<int32_t> prompt = RandomTokens(rng, 4 * kBlockSize + round);
    const std::vector<int32_t> want = Reference(*model, prompt);
    EXPECT_EQ(e.Run(10 * round + 1, prompt).tokens, want);
    e.Churn(rng, 100 + 10 * round);
    EXPECT_EQ(e.Run(10 * round + 2, prompt).tokens, want);
  }
  const EngineStats s = e.stats();
  EXPECT_EQ(s.host_blocks_total, 1);
  EXPECT_LE(s.host_blocks_used, 1);
  EXPECT_GT(s.demoted_blocks + s.dropped_blocks + s.evicted_blocks, 0);
}

}  // namespace
}  // namespace kvkeep
