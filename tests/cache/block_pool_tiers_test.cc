// Tests of BlockPool's tiers: demotion to host and disk, promotion back, disk loads and
// failed reads, start-up adoption, and the invariants across all of it.
#include <gtest/gtest.h>

#include <numeric>
#include <vector>

#include "cache/block_pool.h"
#include "tests/cache/sim_kv.h"

namespace kvkeep {
namespace {

using testing::Extend;
using testing::SimKv;

constexpr HashScope kScope{0x2222, 3};
constexpr int32_t kBlockSize = 4;

std::vector<int32_t> Iota(int n, int start = 0) {
  std::vector<int32_t> v(n);
  std::iota(v.begin(), v.end(), start);
  return v;
}

BlockTable Prefill(BlockPool& pool, SimKv& kv, const std::vector<int32_t>& tokens) {
  BlockTable table(pool.block_size(), kScope);
  std::vector<int32_t> held;
  EXPECT_TRUE(Extend(pool, kv, table, held, tokens).ok());
  return table;
}

Tier TierOf(const BlockPool& pool, const BlockTable& t, int i) {
  Tier tier = Tier::kDevice;
  int32_t loc = -1;
  EXPECT_TRUE(pool.TEST_Locate(t.block_hashes()[i], &tier, &loc));
  return tier;
}

TEST(BlockPoolTiersTest, EvictedChainIsDemotedToHostAndMatchedBackInFull) {
  BlockPool pool({.num_blocks = 4, .block_size = kBlockSize, .num_host_blocks = 8});
  SimKv kv(4, kBlockSize, 8);
  const std::vector<int32_t> a_tokens = Iota(12);  // 3 full blocks
  BlockTable a = Prefill(pool, kv, a_tokens);
  std::vector<BlockHash> a_hashes(a.block_hashes().begin(), a.block_hashes().end());
  pool.Free(&a);
  BlockTable b = Prefill(pool, kv, Iota(16, 100));  // needs every device slot
  ASSERT_TRUE(pool.TEST_CheckInvariants().ok());
  for (BlockHash h : a_hashes) {
    Tier tier;
    int32_t loc;
    ASSERT_TRUE(pool.TEST_Locate(h, &tier, &loc));
    EXPECT_EQ(tier, Tier::kHost);
  }
  EXPECT_EQ(pool.stats().host_used, 3);
  EXPECT_EQ(pool.stats().num_demotions, 3);
  pool.Free(&b);
  // The whole chain matches again, from the host, into fresh device slots (parent links
  // survived the move), and the swapped-in bytes are the chain's own KV.
  TierCounts from;
  BlockTable again = pool.MatchPrefix(a_tokens, kScope, &from);
  EXPECT_EQ(from.host, 3);
  EXPECT_EQ(from.device, 0);
  EXPECT_EQ(pool.transfers().Count(BlockTransfer::Kind::kSwapIn), 3);
  kv.RunTransfers(pool);
  ASSERT_EQ(again.num_tokens(), 12);
  EXPECT_TRUE(kv.Holds(again, a_tokens));
  EXPECT_EQ(TierOf(pool, again, 0), Tier::kDevice);
  ASSERT_TRUE(pool.TEST_CheckInvariants().ok());
  pool.Free(&again);
}

TEST(BlockPoolTiersTest, WithoutHostTierEvictionDrops) {
  BlockPool pool({.num_blocks = 4, .block_size = kBlockSize});
  SimKv kv(4, kBlockSize);
  BlockTable a = Prefill(pool, kv, Iota(8));
  pool.Free(&a);
  BlockTable b = Prefill(pool, kv, Iota(16, 50));
  EXPECT_EQ(pool.stats().num_dropped, 2);
  EXPECT_EQ(pool.transfers().ops.size(), 0u);
  pool.Free(&b);
  EXPECT_EQ(pool.CountCachedPrefix(Iota(8), kScope), 0);
}

// device (2) -> host (2) -> disk; a disk block is read back through the host, and a failed
// read (bad checksum) drops it so the block is recomputed.
TEST(BlockPoolTiersTest, DiskBlocksLoadThroughHostAndBadReadsDrop) {
  BlockPool pool(
      {.num_blocks = 2, .block_size = kBlockSize, .num_host_blocks = 2, .num_disk_blocks = 8});
  SimKv kv(2, kBlockSize, 2);
  const std::vector<int32_t> a_tokens = Iota(8);
  BlockTable a = Prefill(pool, kv, a_tokens);
  pool.Free(&a);
  for (int round = 0; round < 2; ++round) {  // push a's blocks down: host, then disk
    BlockTable x = Prefill(pool, kv, Iota(8, 200 + 10 * round));
    pool.Free(&x);
  }
  ASSERT_TRUE(pool.TEST_CheckInvariants().ok());
  TierCounts probe = pool.ProbePrefix(a_tokens, kScope);
  EXPECT_EQ(probe.disk, 2);
  EXPECT_EQ(pool.CountCachedPrefix(a_tokens, kScope), 0);  // disk ends MatchPrefix
  EXPECT_EQ(pool.stats().disk_used, 2);

  // Load the first block fine, fail the second.
  ASSERT_EQ(pool.PlanDiskLoads(a_tokens, kScope), 2);
  int reads = 0;
  kv.RunTransfers(pool, [&](BlockHash) { return reads++ == 1; });
  kv.RunTransfers(pool);  // the file deletions FinishDiskRead planned
  ASSERT_TRUE(pool.TEST_CheckInvariants().ok());
  probe = pool.ProbePrefix(a_tokens, kScope);
  EXPECT_EQ(probe.host, 1);
  EXPECT_EQ(probe.disk, 0);
  TierCounts from;
  BlockTable again = pool.MatchPrefix(a_tokens, kScope, &from);
  kv.RunTransfers(pool);
  EXPECT_EQ(from.host, 1);
  ASSERT_EQ(again.num_tokens(), 4);
  EXPECT_TRUE(kv.Holds(again, a_tokens));
  // The dropped block is recomputed and committed again.
  std::vector<int32_t> held(a_tokens.begin(), a_tokens.begin() + 4);
  ASSERT_TRUE(Extend(pool, kv, again, held, std::span(a_tokens).subspan(4)).ok());
  EXPECT_TRUE(kv.Holds(again, a_tokens));
  EXPECT_EQ(again.num_hashed_blocks(), 2);
  ASSERT_TRUE(pool.TEST_CheckInvariants().ok());
  pool.Free(&again);
  EXPECT_EQ(pool.CountCachedPrefix(a_tokens, kScope), 2);
}

TEST(BlockPoolTiersTest, AdoptDiskBlockNeedsItsParentAndItsOwnHash) {
  BlockPool pool(
      {.num_blocks = 4, .block_size = kBlockSize, .num_host_blocks = 2, .num_disk_blocks = 4});
  const std::vector<int32_t> t = Iota(8);
  const BlockHash h0 = HashBlock(kRootParentHash, std::span(t).first(4), kScope);
  const BlockHash h1 = HashBlock(h0, std::span(t).subspan(4), kScope);
  EXPECT_FALSE(pool.AdoptDiskBlock(h1, h0, std::span(t).subspan(4), kScope));  // no parent yet
  EXPECT_FALSE(pool.AdoptDiskBlock(h1, kRootParentHash, std::span(t).first(4), kScope));  // lies
  EXPECT_TRUE(pool.AdoptDiskBlock(h0, kRootParentHash, std::span(t).first(4), kScope));
  EXPECT_FALSE(pool.AdoptDiskBlock(h0, kRootParentHash, std::span(t).first(4), kScope));  // dup
  EXPECT_TRUE(pool.AdoptDiskBlock(h1, h0, std::span(t).subspan(4), kScope));
  EXPECT_EQ(pool.ProbePrefix(t, kScope).disk, 2);
  const HashScope other{0x2222, 4};  // another tenant never sees them
  EXPECT_EQ(pool.ProbePrefix(t, other).total(), 0);
  ASSERT_TRUE(pool.TEST_CheckInvariants().ok());
}

TEST(BlockPoolTiersTest, RecomputedBlockTakesOverItsHostRecord) {
  BlockPool pool({.num_blocks = 4, .block_size = kBlockSize, .num_host_blocks = 4});
  SimKv kv(4, kBlockSize, 4);
  BlockTable a = Prefill(pool, kv, Iota(4));
  pool.Free(&a);
  BlockTable b = Prefill(pool, kv, Iota(16, 100));  // a's block goes to the host
  pool.Free(&b);
  // Prefill a's tokens again without matching: the commit finds the host record with the
  // same content and moves it to the new device block, freeing the host slot.
  const int32_t host_before = pool.stats().host_used;
  BlockTable c = Prefill(pool, kv, Iota(4));
  kv.RunTransfers(pool);
  EXPECT_EQ(TierOf(pool, c, 0), Tier::kDevice);
  EXPECT_LE(pool.stats().host_used, host_before);
  ASSERT_TRUE(pool.TEST_CheckInvariants().ok());
  pool.Free(&c);
}

}  // namespace
}  // namespace kvkeep
