// Tests of the disk tier's files (checksums, scan, fault injection), its worker thread and
// start-up adoption into a BlockPool.
#include "cache/disk_tier.h"

#include <gtest/gtest.h>

#include <numeric>
#include <random>

#include "cache/disk_worker.h"
#include "tests/testlib/test_util.h"

namespace kvkeep {
namespace {

constexpr int32_t kBlockSize = 4;
constexpr size_t kBlockBytes = 1000;
constexpr HashScope kScope{0xabc, 1};

DiskBlockHeader Header(BlockHash parent, int32_t first_token) {
  DiskBlockHeader h;
  h.tokens.resize(kBlockSize);
  std::iota(h.tokens.begin(), h.tokens.end(), first_token);
  h.parent_hash = parent;
  h.scope = kScope;
  h.hash = HashBlock(parent, h.tokens, kScope);
  return h;
}

std::vector<uint8_t> Bytes(uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::vector<uint8_t> b(kBlockBytes);
  for (uint8_t& x : b) x = static_cast<uint8_t>(rng());
  return b;
}

void FlipByte(const std::string& path, uint64_t offset) {
  auto file = DefaultEnv()->OpenRandomRWFile(path, false);
  ASSERT_TRUE(file.ok());
  uint8_t b;
  ASSERT_TRUE((*file)->ReadAt(offset, &b, 1).ok());
  b ^= 0x40;
  ASSERT_TRUE((*file)->WriteAt(offset, &b, 1).ok());
}

TEST(DiskBlockStore, WriteReadRoundTripAndScan) {
  testing::TempDir dir;
  DiskBlockStore store(DefaultEnv(), JoinPath(dir.path(), "kv"), kBlockSize, kBlockBytes);
  ASSERT_TRUE(store.Open().ok());
  const DiskBlockHeader h0 = Header(kRootParentHash, 0), h1 = Header(h0.hash, 4);
  ASSERT_TRUE(store.Write(h0, Bytes(1).data()).ok());
  ASSERT_TRUE(store.Write(h1, Bytes(2).data()).ok());
  std::vector<uint8_t> got(kBlockBytes);
  ASSERT_TRUE(store.Read(h1.hash, got.data()).ok());
  EXPECT_EQ(got, Bytes(2));
  EXPECT_EQ(store.Read(BlockHash{12345}, got.data()).code(), StatusCode::kNotFound);
  int32_t bad = -1;
  auto headers = store.Scan(&bad);
  ASSERT_TRUE(headers.ok());
  EXPECT_EQ(bad, 0);
  ASSERT_EQ(headers->size(), 2u);
  for (const DiskBlockHeader& h : *headers) {
    const DiskBlockHeader& want = h.hash == h0.hash ? h0 : h1;
    EXPECT_EQ(h.parent_hash, want.parent_hash);
    EXPECT_EQ(h.tokens, want.tokens);
    EXPECT_EQ(h.scope, want.scope);
  }
  ASSERT_TRUE(store.Remove(h0.hash).ok());
  ASSERT_TRUE(store.Remove(h0.hash).ok());  // already gone is fine
  EXPECT_EQ(store.Read(h0.hash, got.data()).code(), StatusCode::kNotFound);
}

TEST(DiskBlockStore, FlippedPayloadByteFailsReadFlippedHeaderFailsScan) {
  testing::TempDir dir;
  DiskBlockStore store(DefaultEnv(), dir.path(), kBlockSize, kBlockBytes);
  ASSERT_TRUE(store.Open().ok());
  const DiskBlockHeader h0 = Header(kRootParentHash, 0), h1 = Header(h0.hash, 4);
  ASSERT_TRUE(store.Write(h0, Bytes(1).data()).ok());
  ASSERT_TRUE(store.Write(h1, Bytes(2).data()).ok());
  FlipByte(store.PathOf(h0.hash), store.file_bytes() - 10);  // payload
  FlipByte(store.PathOf(h1.hash), 30);                       // header
  std::vector<uint8_t> got(kBlockBytes);
  EXPECT_EQ(store.Read(h0.hash, got.data()).code(), StatusCode::kCorruption);
  EXPECT_EQ(store.Read(h1.hash, got.data()).code(), StatusCode::kCorruption);
  int32_t bad = 0;
  auto headers = store.Scan(&bad);
  ASSERT_TRUE(headers.ok());
  EXPECT_EQ(bad, 1);  // the header flip; the payload flip is caught on read
  EXPECT_EQ(headers->size(), 1u);
  EXPECT_FALSE(DefaultEnv()->FileExists(store.PathOf(h1.hash)));
}

TEST(DiskBlockStore, InjectedWriteFaultLeavesNoBlockAndTmpIsCleaned) {
  testing::TempDir dir;
  FaultInjectionEnv env(DefaultEnv());
  DiskBlockStore store(&env, dir.path(), kBlockSize, kBlockBytes);
  ASSERT_TRUE(store.Open().ok());
  const DiskBlockHeader h0 = Header(kRootParentHash, 0);
  env.FailAfter(3);  // open = 1, header write = 2, payload write = 3
  EXPECT_EQ(store.Write(h0, Bytes(1).data()).code(), StatusCode::kIOError);
  env.FailAfter(0);
  EXPECT_FALSE(env.FileExists(store.PathOf(h0.hash)));
  EXPECT_TRUE(env.FileExists(store.PathOf(h0.hash) + ".tmp"));
  ASSERT_TRUE(store.Open().ok());  // start-up removes the torn temporary
  EXPECT_FALSE(env.FileExists(store.PathOf(h0.hash) + ".tmp"));
  ASSERT_TRUE(store.Write(h0, Bytes(1).data()).ok());
  env.FailAfter(3);  // open = 1, header read = 2, payload read = 3
  std::vector<uint8_t> got(kBlockBytes);
  EXPECT_EQ(store.Read(h0.hash, got.data()).code(), StatusCode::kIOError);
}

TEST(DiskWorker, RunsJobsInOrderOffTheCallingThread) {
  testing::TempDir dir;
  DiskBlockStore store(DefaultEnv(), dir.path(), kBlockSize, kBlockBytes);
  ASSERT_TRUE(store.Open().ok());
  DiskWorker worker(&store);
  const DiskBlockHeader h0 = Header(kRootParentHash, 0);
  std::vector<uint8_t> got(kBlockBytes), missing(kBlockBytes);
  worker.Write(h0, Bytes(9));
  worker.Read(h0.hash, got.data());  // FIFO: sees the write
  worker.Remove(h0.hash);
  worker.Read(h0.hash, missing.data());  // and the removal
  worker.WaitIdle();
  auto done = worker.TakeCompletedReads();
  ASSERT_EQ(done.size(), 2u);
  EXPECT_TRUE(done[0].second);
  EXPECT_FALSE(done[1].second);
  EXPECT_EQ(got, Bytes(9));
  EXPECT_EQ(worker.stats().blocks_written, 1);
  EXPECT_EQ(worker.stats().read_failures, 1);
}

TEST(AdoptDiskBlocks, ParentsFirstOrphansAndLiarsRejected) {
  BlockPool pool(
      {.num_blocks = 4, .block_size = kBlockSize, .num_host_blocks = 2, .num_disk_blocks = 16});
  const DiskBlockHeader a = Header(kRootParentHash, 0), b = Header(a.hash, 4),
                        c = Header(b.hash, 8);
  const DiskBlockHeader orphan = Header(BlockHash{777}, 50);
  DiskBlockHeader liar = Header(c.hash, 12);
  liar.tokens[0] = 99;  // its hash no longer names its content
  const std::vector<DiskBlockHeader> scanned = {c, liar, orphan, b, a};  // children first
  std::vector<BlockHash> rejected = AdoptDiskBlocks(scanned, &pool);
  EXPECT_EQ(rejected.size(), 2u);
  std::vector<int32_t> tokens(12);
  std::iota(tokens.begin(), tokens.end(), 0);
  EXPECT_EQ(pool.ProbePrefix(tokens, kScope).disk, 3);
  EXPECT_TRUE(pool.TEST_CheckInvariants().ok());
}

}  // namespace
}  // namespace kvkeep
