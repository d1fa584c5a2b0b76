// Tests of the remote tier against a real redis-server on a temp unix socket: round trip,
// missing and corrupt values, tenant isolation, and a server that is killed, paused (slow)
// and restarted empty.
#include "cache/remote_tier.h"

#include <gtest/gtest.h>
#include <hiredis/hiredis.h>

#include <chrono>
#include <numeric>
#include <random>
#include <thread>

#include "tests/testlib/redis_server.h"

namespace kvkeep {
namespace {

using testing::RedisServer;

constexpr int32_t kBlockSize = 4;
constexpr size_t kBlockBytes = 3000;
constexpr HashScope kScope{0xabc, 0x1234};
constexpr int64_t kTimeoutUs = 200'000;

struct Chain {
  std::vector<DiskBlockHeader> headers;
  std::vector<std::vector<uint8_t>> bytes;
  std::vector<BlockHash> hashes() const {
    std::vector<BlockHash> h;
    for (const DiskBlockHeader& x : headers) h.push_back(x.hash);
    return h;
  }
};

Chain MakeChain(int n, HashScope scope, uint64_t seed) {
  Chain c;
  std::mt19937_64 rng(seed);
  BlockHash parent = kRootParentHash;
  for (int i = 0; i < n; ++i) {
    DiskBlockHeader h;
    h.tokens.resize(kBlockSize);
    std::iota(h.tokens.begin(), h.tokens.end(), 100 * i + static_cast<int32_t>(seed % 50));
    h.parent_hash = parent;
    h.scope = scope;
    h.hash = HashBlock(parent, h.tokens, scope);
    parent = h.hash;
    std::vector<uint8_t> b(kBlockBytes);
    for (uint8_t& x : b) x = static_cast<uint8_t>(rng());
    c.headers.push_back(h);
    c.bytes.push_back(std::move(b));
  }
  return c;
}

// A direct hiredis connection for checking what the server holds.
class Inspector {
 public:
  explicit Inspector(const std::string& socket) : ctx_(redisConnectUnix(socket.c_str())) {}
  ~Inspector() {
    if (ctx_ != nullptr) redisFree(ctx_);
  }
  long long Count(const std::string& pattern) {
    auto* r = static_cast<redisReply*>(redisCommand(ctx_, "KEYS %s", pattern.c_str()));
    const long long n = r != nullptr && r->type == REDIS_REPLY_ARRAY ? r->elements : -1;
    if (r != nullptr) freeReplyObject(r);
    return n;
  }
  void FlipByte(const std::string& key, int64_t offset) {
    auto* r = static_cast<redisReply*>(redisCommand(ctx_, "GETRANGE %s %lld %lld", key.c_str(),
                                                    (long long)offset, (long long)offset));
    ASSERT_TRUE(r != nullptr && r->type == REDIS_REPLY_STRING && r->len == 1);
    char c = static_cast<char>(r->str[0] ^ 0x40);
    freeReplyObject(r);
    r = static_cast<redisReply*>(
        redisCommand(ctx_, "SETRANGE %s %lld %b", key.c_str(), (long long)offset, &c, size_t{1}));
    ASSERT_NE(r, nullptr);
    freeReplyObject(r);
  }
  void Copy(const std::string& from, const std::string& to) {
    auto* r = static_cast<redisReply*>(redisCommand(ctx_, "COPY %s %s", from.c_str(), to.c_str()));
    ASSERT_NE(r, nullptr);
    freeReplyObject(r);
  }

 private:
  redisContext* ctx_;
};

class RemoteTierTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!redis_.ok()) GTEST_SKIP() << "redis-server is not installed (scripts/setup installs it)";
  }
  std::unique_ptr<RemoteBlockStore> Store(int64_t reconnect_us = 50'000) {
    RemoteTierOptions o;
    o.address = *ParseRemoteAddress(redis_.address());
    o.timeout_us = kTimeoutUs;
    o.reconnect_interval_us = reconnect_us;
    o.max_batch_blocks = 3;  // several pipelines and MGETs per call
    return std::make_unique<RemoteBlockStore>(o, &codec_);
  }
  void PutAll(RemoteBlockStore* store, const Chain& c) {
    for (size_t i = 0; i < c.headers.size(); ++i) store->Put(c.headers[i], c.bytes[i].data());
    store->Flush();
  }

  RedisServer redis_;
  DiskBlockStore codec_{DefaultEnv(), "/nonexistent", kBlockSize, kBlockBytes};
};

TEST(RemoteAddressTest, ParsesBothFormsAndRejectsOthers) {
  auto tcp = ParseRemoteAddress("redis://cache.internal:6380/2");
  ASSERT_TRUE(tcp.ok());
  EXPECT_EQ(tcp->host, "cache.internal");
  EXPECT_EQ(tcp->port, 6380);
  EXPECT_EQ(tcp->db, 2);
  auto dflt = ParseRemoteAddress("redis://10.0.0.1");
  ASSERT_TRUE(dflt.ok());
  EXPECT_EQ(dflt->port, 6379);
  EXPECT_EQ(dflt->db, 0);
  auto unix_addr = ParseRemoteAddress("unix:/run/redis.sock?db=3");
  ASSERT_TRUE(unix_addr.ok());
  EXPECT_EQ(unix_addr->unix_path, "/run/redis.sock");
  EXPECT_EQ(unix_addr->db, 3);
  for (const char* bad : {"", "http://x", "redis://", "redis://h:0", "redis://h:99999",
                          "redis://h:1/x", "unix:", "redis://h:12ab"}) {
    EXPECT_EQ(ParseRemoteAddress(bad).status().code(), StatusCode::kInvalidArgument) << bad;
  }
}

TEST_F(RemoteTierTest, RoundTripReturnsEveryBlockIntact) {
  auto store = Store();
  ASSERT_TRUE(store->Ping().ok());
  const Chain c = MakeChain(8, kScope, 1);
  PutAll(store.get(), c);
  std::vector<RemoteBlock> got = store->GetPrefix(c.hashes(), kScope, kRootParentHash);
  ASSERT_EQ(got.size(), c.headers.size());
  for (size_t i = 0; i < got.size(); ++i) {
    EXPECT_EQ(got[i].header.hash, c.headers[i].hash);
    EXPECT_EQ(got[i].header.parent_hash, c.headers[i].parent_hash);
    EXPECT_EQ(got[i].header.tokens, c.headers[i].tokens);
    EXPECT_EQ(got[i].bytes, c.bytes[i]);
  }
  const RemoteTierStats s = store->stats();
  EXPECT_EQ(s.hits, 8);
  EXPECT_EQ(s.misses, 0);
  EXPECT_EQ(s.blocks_written, 8);
  EXPECT_EQ(s.bytes_written, static_cast<int64_t>(8 * codec_.file_bytes()));
  EXPECT_EQ(s.bytes_read, s.bytes_written);
  EXPECT_TRUE(s.connected);
  Inspector redis(redis_.socket());
  EXPECT_EQ(redis.Count("kvkeep:b:*"), 8);
  EXPECT_EQ(redis.Count(RemoteBlockStore::KeyOf(c.headers[0].hash, kScope)), 1);
}

TEST_F(RemoteTierTest, MissingBlockEndsTheRun) {
  auto store = Store();
  const Chain c = MakeChain(6, kScope, 2);
  for (size_t i = 0; i < c.headers.size(); ++i) {
    if (i != 3) store->Put(c.headers[i], c.bytes[i].data());
  }
  store->Flush();
  EXPECT_EQ(store->GetPrefix(c.hashes(), kScope, kRootParentHash).size(), 3u);
  EXPECT_EQ(store->stats().misses, 3);
  // A chain never written is all misses, without errors.
  const Chain other = MakeChain(4, kScope, 3);
  EXPECT_TRUE(store->GetPrefix(other.hashes(), kScope, kRootParentHash).empty());
  EXPECT_EQ(store->stats().errors, 0);
}

TEST_F(RemoteTierTest, CorruptValueIsCaughtByItsChecksum) {
  auto store = Store();
  const Chain c = MakeChain(5, kScope, 4);
  PutAll(store.get(), c);
  Inspector redis(redis_.socket());
  // One byte of block 2's payload (after the header), then one of block 4's header.
  redis.FlipByte(RemoteBlockStore::KeyOf(c.headers[2].hash, kScope),
                 static_cast<int64_t>(codec_.file_bytes()) - 17);
  std::vector<RemoteBlock> got = store->GetPrefix(c.hashes(), kScope, kRootParentHash);
  ASSERT_EQ(got.size(), 2u);
  EXPECT_EQ(got[1].bytes, c.bytes[1]);
  EXPECT_EQ(store->stats().corrupt, 1);
  redis.FlipByte(RemoteBlockStore::KeyOf(c.headers[0].hash, kScope), 20);
  EXPECT_TRUE(store->GetPrefix(c.hashes(), kScope, kRootParentHash).empty());
  EXPECT_EQ(store->stats().corrupt, 2);
}

TEST_F(RemoteTierTest, TenantsAndModelsShareNothing) {
  auto store = Store();
  const HashScope other_tenant{kScope.model_id_hash, 0x9999};
  const HashScope other_model{0xdef, kScope.tenant_salt};
  const Chain c = MakeChain(4, kScope, 5);
  PutAll(store.get(), c);
  // The same hashes asked for under another scope: other keys, so nothing.
  EXPECT_TRUE(store->GetPrefix(c.hashes(), other_tenant, kRootParentHash).empty());
  EXPECT_TRUE(store->GetPrefix(c.hashes(), other_model, kRootParentHash).empty());
  // A value copied under another tenant's key (a confused writer) is refused on its scope.
  Inspector redis(redis_.socket());
  redis.Copy(RemoteBlockStore::KeyOf(c.headers[0].hash, kScope),
             RemoteBlockStore::KeyOf(c.headers[0].hash, other_tenant));
  ASSERT_EQ(redis.Count("kvkeep:b:*"), 5);
  EXPECT_TRUE(store->GetPrefix({c.headers[0].hash}, other_tenant, kRootParentHash).empty());
  EXPECT_EQ(store->stats().hits, 0);
}

TEST_F(RemoteTierTest, KilledServerDegradesToMissesWithinTheTimeout) {
  auto store = Store(/*reconnect_us=*/10'000'000);
  const Chain c = MakeChain(6, kScope, 6);
  PutAll(store.get(), c);
  ASSERT_EQ(store->GetPrefix(c.hashes(), kScope, kRootParentHash).size(), 6u);
  redis_.Kill();
  const auto t0 = std::chrono::steady_clock::now();
  EXPECT_TRUE(store->GetPrefix(c.hashes(), kScope, kRootParentHash).empty());
  const auto first_ms =
      std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - t0)
          .count();
  EXPECT_LT(first_ms, 3 * kTimeoutUs / 1000);
  // Within the reconnect interval a call does not even try: immediate misses.
  const auto t1 = std::chrono::steady_clock::now();
  for (int i = 0; i < 20; ++i) store->GetPrefix(c.hashes(), kScope, kRootParentHash);
  EXPECT_LT(std::chrono::steady_clock::now() - t1, std::chrono::milliseconds(50));
  // Writes are dropped, not queued forever, and never block the caller.
  PutAll(store.get(), MakeChain(4, kScope, 7));
  const RemoteTierStats s = store->stats();
  EXPECT_GE(s.errors, 1);
  EXPECT_GE(s.writes_dropped, 4);
  EXPECT_FALSE(s.connected);
}

TEST_F(RemoteTierTest, PausedServerIsBoundedByTheTimeout) {
  auto store = Store();
  const Chain c = MakeChain(6, kScope, 8);
  PutAll(store.get(), c);
  redis_.Pause();
  const auto t0 = std::chrono::steady_clock::now();
  EXPECT_TRUE(store->GetPrefix(c.hashes(), kScope, kRootParentHash).empty());
  const auto ms =
      std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - t0)
          .count();
  redis_.Resume();
  EXPECT_GE(ms, kTimeoutUs / 1000 / 2);
  EXPECT_LT(ms, 3 * kTimeoutUs / 1000);
  EXPECT_GE(store->stats().errors, 1);
}

TEST_F(RemoteTierTest, RestartedEmptyServerMissesThenServesAgain) {
  auto store = Store(/*reconnect_us=*/20'000);
  const Chain c = MakeChain(5, kScope, 9);
  PutAll(store.get(), c);
  ASSERT_TRUE(redis_.Restart());
  // The first call finds the old connection dead; a later one reconnects to the empty server.
  store->GetPrefix(c.hashes(), kScope, kRootParentHash);
  std::this_thread::sleep_for(std::chrono::milliseconds(40));
  EXPECT_TRUE(store->GetPrefix(c.hashes(), kScope, kRootParentHash).empty());
  EXPECT_TRUE(store->stats().connected);
  // Likewise the writer: its first batch after the restart is dropped on the stale connection.
  PutAll(store.get(), MakeChain(1, kScope, 10));
  std::this_thread::sleep_for(std::chrono::milliseconds(40));
  PutAll(store.get(), c);
  EXPECT_EQ(store->GetPrefix(c.hashes(), kScope, kRootParentHash).size(), 5u);
}

}  // namespace
}  // namespace kvkeep
