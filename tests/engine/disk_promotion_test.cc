// Promotion from the disk tier without blocking the engine thread: the disk worker reads a
// returning session's blocks into host slots while the engine keeps stepping other
// requests; the turn waits for its reads (it does not recompute them) and then answers
// exactly as a session that never left the device; past its deadline it runs anyway and
// recomputes what has not arrived. The disk is slowed by an Env whose block reads wait
// on a gate the test opens.
#include <gtest/gtest.h>

#include <chrono>
#include <condition_variable>
#include <mutex>
#include <random>
#include <thread>

#include "base/file.h"
#include "engine/engine_impl.h"
#include "tests/engine/engine_fixture.h"

namespace kvkeep {
namespace {

using enginetest::MakeBackend;
using enginetest::MakeTestModel;
using enginetest::Outcome;
using enginetest::RandomTokens;

constexpr int32_t kBlockSize = 16;

// DefaultEnv, except that opening an existing file for a read (the disk tier's block reads)
// waits while the gate is closed: a disk as slow as the test wants. A read still waiting
// after 30 s goes ahead and is counted, so a broken test fails instead of hanging.
class GatedEnv final : public Env {
 public:
  void Close() {
    std::lock_guard<std::mutex> lock(mu_);
    open_ = false;
  }
  void Open() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      open_ = true;
    }
    cv_.notify_all();
  }
  int waited_out() const {
    std::lock_guard<std::mutex> lock(mu_);
    return waited_out_;
  }
  int blocked_reads() const {
    std::lock_guard<std::mutex> lock(mu_);
    return blocked_reads_;
  }

  Result<std::string> ReadFile(const std::string& path) override { return base_->ReadFile(path); }
  Status WriteFileAtomic(const std::string& path, std::string_view contents) override {
    return base_->WriteFileAtomic(path, contents);
  }
  Result<std::unique_ptr<MappedFile>> MapFile(const std::string& path) override {
    return base_->MapFile(path);
  }
  bool FileExists(const std::string& path) override { return base_->FileExists(path); }
  Status CreateDirs(const std::string& path, int mode) override {
    return base_->CreateDirs(path, mode);
  }
  Result<std::vector<std::string>> ListDir(const std::string& path) override {
    return base_->ListDir(path);
  }
  Status RemoveFile(const std::string& path) override { return base_->RemoveFile(path); }
  std::string GetEnvVar(const char* name) override { return base_->GetEnvVar(name); }
  Result<std::unique_ptr<RandomRWFile>> OpenRandomRWFile(const std::string& path,
                                                         bool create) override {
    if (!create) {
      std::unique_lock<std::mutex> lock(mu_);
      if (!open_) ++blocked_reads_;
      if (!cv_.wait_for(lock, std::chrono::seconds(30), [&] { return open_; })) ++waited_out_;
    }
    return base_->OpenRandomRWFile(path, create);
  }
  Status RenameFile(const std::string& from, const std::string& to) override {
    return base_->RenameFile(from, to);
  }

 private:
  Env* base_ = DefaultEnv();
  mutable std::mutex mu_;
  std::condition_variable cv_;
  bool open_ = true;
  int blocked_reads_ = 0;
  int waited_out_ = 0;
};

// One engine, stepped by the test: a small device pool, a host tier and a disk tier on
// `env`. Opens the gate before the engine goes, so the disk worker can finish.
class SlowDiskEngine {
 public:
  SlowDiskEngine(const enginetest::TestModel& model, GatedEnv* env, const std::string& dir,
                 int64_t deadline_us)
      : env_(env) {
    EngineOptions o;
    o.model_id = "disk-promotion-test";
    o.num_host_blocks = 8;
    o.disk_dir = dir;
    o.disk_bytes = int64_t{64} << 20;
    o.env = env;
    o.disk_read_deadline_us = deadline_us;
    auto e = Engine::Create(o, MakeBackend(*model.weights, 10), model.tokenizer.get(), &clock_);
    EXPECT_TRUE(e.ok()) << e.status().ToString();
    engine_ = std::move(e).value();
  }
  ~SlowDiskEngine() {
    env_->Open();
    engine_.reset();
  }
  EngineImpl* impl() { return static_cast<EngineImpl*>(engine_.get()); }
  FakeClock* clock() { return &clock_; }
  void Submit(RequestId id, const std::vector<int32_t>& prompt, Outcome* out) {
    EXPECT_TRUE(engine_->Submit(enginetest::RequestInto(out, id, prompt, 6)).ok());
  }
  Outcome Run(RequestId id, const std::vector<int32_t>& prompt) {
    Outcome out;
    Submit(id, prompt, &out);
    EXPECT_TRUE(engine_->RunUntilIdle().ok());
    return out;
  }

 private:
  GatedEnv* env_;
  FakeClock clock_;
  std::unique_ptr<Engine> engine_;
};

struct Turns {
  std::vector<int32_t> turn1, turn2, other;
  Outcome want2;  // turn 2 on an engine whose KV never left the device
};

Turns MakeTurns(const enginetest::TestModel& model, uint64_t seed) {
  std::mt19937_64 rng(seed);
  Turns t;
  t.turn1 = RandomTokens(rng, 4 * kBlockSize + 7);
  t.other = RandomTokens(rng, 2 * kBlockSize + 1);
  EngineOptions o;
  o.model_id = "disk-promotion-test";
  FakeClock clock;
  auto ref = Engine::Create(o, MakeBackend(*model.weights, 64), model.tokenizer.get(), &clock);
  EXPECT_TRUE(ref.ok());
  Outcome r1;
  EXPECT_TRUE((*ref)->Submit(enginetest::RequestInto(&r1, 1, t.turn1, 6)).ok());
  EXPECT_TRUE((*ref)->RunUntilIdle().ok());
  t.turn2 = t.turn1;
  t.turn2.insert(t.turn2.end(), r1.tokens.begin(), r1.tokens.end());
  const std::vector<int32_t> user = RandomTokens(rng, 9);
  t.turn2.insert(t.turn2.end(), user.begin(), user.end());
  EXPECT_TRUE((*ref)->Submit(enginetest::RequestInto(&t.want2, 2, t.turn2, 6)).ok());
  EXPECT_TRUE((*ref)->RunUntilIdle().ok());
  return t;
}

// Turn 1, then other prompts until turn 1's blocks are on disk.
void PushTurnOneToDisk(SlowDiskEngine& e, const Turns& t, uint64_t seed) {
  e.Run(1, t.turn1);
  std::mt19937_64 rng(seed);
  for (int i = 0; i < 3; ++i) e.Run(100 + i, RandomTokens(rng, 6 * kBlockSize + 3));
  const HashScope scope{HashModelId("disk-promotion-test"), 0};
  ASSERT_GT(e.impl()->TEST_pool().ProbePrefix(t.turn1, scope).disk, 0);
}

TEST(DiskPromotionTest, TurnWaitsForItsReadsWhileTheEngineKeepsSteppingOthers) {
  auto model = MakeTestModel();
  ASSERT_NE(model, nullptr);
  const Turns t = MakeTurns(*model, model->seed + 7);
  GatedEnv env;
  testing::TempDir dir;
  SlowDiskEngine e(*model, &env, dir.path(), int64_t{3600} * 1'000'000);
  PushTurnOneToDisk(e, t, model->seed + 8);

  env.Close();
  Outcome returning, other;
  e.Submit(2, t.turn2, &returning);
  e.Submit(3, t.other, &other);
  int steps = 0;
  const auto start = std::chrono::steady_clock::now();
  while (other.reason == FinishReason::kNone && steps < 200) {
    ASSERT_TRUE(e.impl()->Step().ok());
    ++steps;
  }
  const double elapsed_s =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  EXPECT_EQ(other.reason, FinishReason::kLength) << "the other request did not finish";
  EXPECT_EQ(other.tokens.size(), 6u);
  EXPECT_LT(elapsed_s, 20.0) << "a step blocked on the gated disk";
  // The disk worker reads on its own thread, which a loaded machine may not have run yet
  // when the other request is done: give it up to 10 s to reach the gate.
  for (int i = 0; i < 1000 && env.blocked_reads() == 0; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  EXPECT_GT(env.blocked_reads(), 0) << "the returning turn read nothing from disk";
  // The returning turn is still waiting for its blocks: no token, and no recompute yet.
  EXPECT_TRUE(returning.tokens.empty());
  EXPECT_EQ(returning.reason, FinishReason::kNone);
  for (int i = 0; i < 5; ++i) ASSERT_TRUE(e.impl()->Step().ok());  // idle steps wait, bounded
  EXPECT_TRUE(returning.tokens.empty());

  env.Open();
  ASSERT_TRUE(e.impl()->RunUntilIdle().ok());
  EXPECT_EQ(returning.tokens, t.want2.tokens) << "KV read up from disk changed the answer";
  EXPECT_GT(returning.usage.cached_disk_tokens, 0);
  EXPECT_EQ(e.impl()->TEST_disk_read_timeouts(), 0);
  EXPECT_EQ(env.waited_out(), 0);
  ASSERT_TRUE(e.impl()->TEST_CheckPool().ok()) << e.impl()->TEST_CheckPool().ToString();
}

TEST(DiskPromotionTest, PastItsDeadlineTheTurnRecomputesWhatHasNotArrived) {
  auto model = MakeTestModel();
  ASSERT_NE(model, nullptr);
  const Turns t = MakeTurns(*model, model->seed + 9);
  GatedEnv env;
  testing::TempDir dir;
  constexpr int64_t kDeadlineUs = 50'000;
  SlowDiskEngine e(*model, &env, dir.path(), kDeadlineUs);
  PushTurnOneToDisk(e, t, model->seed + 10);

  env.Close();
  Outcome returning;
  e.Submit(2, t.turn2, &returning);
  for (int i = 0; i < 3; ++i) ASSERT_TRUE(e.impl()->Step().ok());
  EXPECT_TRUE(returning.tokens.empty()) << "ran before its deadline with reads in flight";
  e.clock()->AdvanceMicros(kDeadlineUs);
  for (int i = 0; i < 200 && returning.reason == FinishReason::kNone; ++i) {
    ASSERT_TRUE(e.impl()->Step().ok());
  }
  EXPECT_EQ(returning.tokens, t.want2.tokens);
  EXPECT_EQ(returning.usage.cached_disk_tokens, 0);
  EXPECT_GT(returning.usage.recomputed_tokens, 0);
  EXPECT_EQ(e.impl()->TEST_disk_read_timeouts(), 1);
  env.Open();
  ASSERT_TRUE(e.impl()->RunUntilIdle().ok());  // the late reads land on the host tier
  ASSERT_TRUE(e.impl()->TEST_CheckPool().ok()) << e.impl()->TEST_CheckPool().ToString();
}

}  // namespace
}  // namespace kvkeep
