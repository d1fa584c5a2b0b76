// The remote tier through the engine, with a real redis-server: a session computed on one
// engine continues on a second engine (own device, host and disk) from the remote tier and
// answers exactly as an engine whose KV never left the device; tenants share nothing; a
// killed, restarted-empty or corrupted Redis means recompute with the same answer.
#include <fmt/format.h>
#include <gtest/gtest.h>
#include <hiredis/hiredis.h>

#include <chrono>
#include <random>

#include "engine/engine_impl.h"
#include "tests/engine/engine_fixture.h"
#include "tests/testlib/redis_server.h"

namespace kvkeep {
namespace {

using enginetest::MakeBackend;
using enginetest::MakeTestModel;
using enginetest::RandomTokens;
using testing::RedisServer;

constexpr int32_t kBlockSize = 16;

using enginetest::Outcome;

class Instance {
 public:
  // remote empty: no remote tier; disk_dir empty: no host or disk tier either.
  Instance(const enginetest::TestModel& model, int32_t device_blocks, const std::string& disk_dir,
           const std::string& remote) {
    EngineOptions o;
    o.model_id = "remote-test";
    if (!disk_dir.empty()) {
      o.num_host_blocks = 8;
      o.disk_dir = disk_dir;
      o.disk_bytes = int64_t{64} << 20;
    }
    if (!remote.empty()) {
      RemoteTierOptions r;
      r.address = *ParseRemoteAddress(remote);
      r.timeout_us = 200'000;
      r.reconnect_interval_us = 10'000;
      o.remote_tier = r;
    }
    auto e = Engine::Create(o, MakeBackend(*model.weights, device_blocks), model.tokenizer.get(),
                            &clock_);
    EXPECT_TRUE(e.ok()) << e.status().ToString();
    engine_ = std::move(e).value();
  }
  Outcome Run(RequestId id, const std::vector<int32_t>& prompt, uint64_t salt = 0) {
    Outcome out;
    GenerateRequest r = enginetest::RequestInto(&out, id, prompt, 6, 0, salt);
    EXPECT_TRUE(engine_->Submit(std::move(r)).ok());
    EXPECT_TRUE(engine_->RunUntilIdle().ok());
    EXPECT_TRUE(impl()->TEST_CheckPool().ok()) << impl()->TEST_CheckPool().ToString();
    return out;
  }
  // Pushes earlier blocks down to disk (and so to the remote tier), then waits for the
  // remote writes.
  void Churn(std::mt19937_64& rng, RequestId first_id, uint64_t salt = 0) {
    for (int i = 0; i < 3; ++i) Run(first_id + i, RandomTokens(rng, 6 * kBlockSize + 3), salt);
  }
  EngineStats stats() { return engine_->GetStats(); }
  EngineImpl* impl() { return static_cast<EngineImpl*>(engine_.get()); }

 private:
  FakeClock clock_;
  std::unique_ptr<Engine> engine_;
};

long long CountKeys(const std::string& socket, const std::string& pattern) {
  redisContext* c = redisConnectUnix(socket.c_str());
  auto* r = static_cast<redisReply*>(redisCommand(c, "KEYS %s", pattern.c_str()));
  const long long n = r != nullptr && r->type == REDIS_REPLY_ARRAY ? r->elements : -1;
  if (r != nullptr) freeReplyObject(r);
  redisFree(c);
  return n;
}

class RemoteEngineTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!redis_.ok()) GTEST_SKIP() << "redis-server is not installed (scripts/setup installs it)";
    model_ = MakeTestModel();
    ASSERT_NE(model_, nullptr);
    rng_.seed(model_->seed);
    turn1_ = RandomTokens(rng_, 5 * kBlockSize + 7);
    // The reference: one engine, a big device pool, nothing ever leaves it.
    Instance ref(*model_, 64, "", "");
    const Outcome r1 = ref.Run(1, turn1_);
    turn2_ = turn1_;
    turn2_.insert(turn2_.end(), r1.tokens.begin(), r1.tokens.end());
    const std::vector<int32_t> user = RandomTokens(rng_, 9);
    turn2_.insert(turn2_.end(), user.begin(), user.end());
    want_ = ref.Run(2, turn2_).tokens;
  }
  // Turn 1 on instance A, pushed down to its disk and so to Redis.
  void RunTurn1OnA(uint64_t salt = 0) {
    Instance a(*model_, 10, dir_a_.path(), redis_.address());
    a.Run(1, turn1_, salt);
    a.Churn(rng_, 100, salt);
    EXPECT_GT(a.stats().remote.blocks_written, 0);
  }  // destroyed: the remote writes are flushed

  RedisServer redis_;
  std::unique_ptr<enginetest::TestModel> model_;
  std::mt19937_64 rng_;
  std::vector<int32_t> turn1_, turn2_, want_;
  testing::TempDir dir_a_, dir_b_;
};

TEST_F(RemoteEngineTest, SecondInstanceContinuesFromTheRemoteTier) {
  RunTurn1OnA();
  Instance b(*model_, 10, dir_b_.path(), redis_.address());
  const Outcome t2 = b.Run(2, turn2_);
  EXPECT_EQ(t2.tokens, want_) << "KV fetched from Redis changed the answer";
  // Turn 1's five full blocks came from Redis (the rest of turn 2 is new).
  EXPECT_EQ(t2.usage.cached_remote_tokens, 5 * kBlockSize);
  EXPECT_EQ(t2.usage.cached_tokens, t2.usage.cached_device_tokens + t2.usage.cached_host_tokens +
                                        t2.usage.cached_disk_tokens +
                                        t2.usage.cached_remote_tokens);
  EXPECT_EQ(t2.usage.cached_tokens + t2.usage.recomputed_tokens, t2.usage.prompt_tokens);
  const EngineStats s = b.stats();
  EXPECT_EQ(s.remote.hits, 5);
  EXPECT_EQ(s.cached_remote_tokens, 5 * kBlockSize);
  EXPECT_GT(s.remote.bytes_read, 0);
}

TEST_F(RemoteEngineTest, TenantsShareNothing) {
  RunTurn1OnA(/*salt=*/1);
  const long long keys = CountKeys(redis_.socket(), "kvkeep:b:*");
  EXPECT_GT(keys, 0);
  EXPECT_EQ(CountKeys(redis_.socket(), fmt::format("kvkeep:b:*:{:016x}:*", 2)), 0);
  Instance b(*model_, 10, dir_b_.path(), redis_.address());
  const Outcome t2 = b.Run(2, turn2_, /*salt=*/2);
  EXPECT_EQ(t2.tokens, want_);
  EXPECT_EQ(t2.usage.cached_remote_tokens, 0);
  EXPECT_EQ(b.stats().remote.hits, 0);
}

TEST_F(RemoteEngineTest, KilledRedisMeansRecomputeWithinTheTimeout) {
  RunTurn1OnA();
  Instance b(*model_, 10, dir_b_.path(), redis_.address());
  redis_.Kill();
  const auto t0 = std::chrono::steady_clock::now();
  const Outcome t2 = b.Run(2, turn2_);
  EXPECT_LT(std::chrono::steady_clock::now() - t0, std::chrono::seconds(5));
  EXPECT_EQ(t2.tokens, want_);
  EXPECT_EQ(t2.usage.cached_remote_tokens, 0);
  EXPECT_GE(b.stats().remote.errors, 1);
}

TEST_F(RemoteEngineTest, RestartedEmptyRedisMeansRecompute) {
  RunTurn1OnA();
  ASSERT_TRUE(redis_.Restart());
  Instance b(*model_, 10, dir_b_.path(), redis_.address());
  const Outcome t2 = b.Run(2, turn2_);
  EXPECT_EQ(t2.tokens, want_);
  EXPECT_EQ(t2.usage.cached_remote_tokens, 0);
}

TEST_F(RemoteEngineTest, CorruptedValueIsRecomputedFromThere) {
  RunTurn1OnA();
  // Flip a payload byte of turn 1's third block.
  const HashScope scope{HashModelId("remote-test"), 0};
  BlockHash h = kRootParentHash;
  for (int i = 0; i < 3; ++i) {
    h = HashBlock(h, std::span(turn1_).subspan(i * kBlockSize, kBlockSize), scope);
  }
  const std::string key = RemoteBlockStore::KeyOf(h, scope);
  redisContext* c = redisConnectUnix(redis_.socket().c_str());
  auto* r = static_cast<redisReply*>(redisCommand(c, "STRLEN %s", key.c_str()));
  ASSERT_TRUE(r != nullptr && r->type == REDIS_REPLY_INTEGER && r->integer > 100);
  const long long at = r->integer - 50;
  freeReplyObject(r);
  r = static_cast<redisReply*>(redisCommand(c, "GETRANGE %s %lld %lld", key.c_str(), at, at));
  ASSERT_TRUE(r != nullptr && r->type == REDIS_REPLY_STRING && r->len == 1);
  const char flipped = static_cast<char>(r->str[0] ^ 0x10);
  freeReplyObject(r);
  r = static_cast<redisReply*>(
      redisCommand(c, "SETRANGE %s %lld %b", key.c_str(), at, &flipped, size_t{1}));
  ASSERT_NE(r, nullptr);
  freeReplyObject(r);
  redisFree(c);

  Instance b(*model_, 10, dir_b_.path(), redis_.address());
  const Outcome t2 = b.Run(2, turn2_);
  EXPECT_EQ(t2.tokens, want_);
  EXPECT_EQ(t2.usage.cached_remote_tokens, 2 * kBlockSize);  // the two blocks before it
  EXPECT_EQ(b.stats().remote.corrupt, 1);
}

TEST(RemoteEngineOptionsTest, RemoteTierNeedsADiskTier) {
  auto model = MakeTestModel();
  ASSERT_NE(model, nullptr);
  EngineOptions o;
  o.model_id = "remote-test";
  o.remote_tier = RemoteTierOptions{};
  FakeClock clock;
  auto e = Engine::Create(o, MakeBackend(*model->weights, 10), model->tokenizer.get(), &clock);
  EXPECT_EQ(e.status().code(), StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace kvkeep
