// Tests of BlockPool's tiers: demotion to host and disk, promotion back, disk loads and
// failed reads, start-up adoption, session-level reclaim on the host and disk tiers, and
// the invariants across all of it.
#include <gtest/gtest.h>

#include <map>
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

// The engine's TierVictimChooser in miniature: OrderByClass over per-session infos the test
// sets, recording each question.
class PolicyChooser : public TierVictimChooser {
 public:
  std::map<SessionId, SessionReclaimInfo> infos;
  std::vector<std::pair<Tier, std::vector<TierHolder>>> calls;
  void ChooseTierVictims(const ReclaimRequest& request, std::span<const TierHolder> holders,
                         std::vector<SessionId>* victims) override {
    calls.emplace_back(request.tier, std::vector<TierHolder>(holders.begin(), holders.end()));
    std::vector<SessionReclaimInfo> candidates;
    for (const TierHolder& h : holders) {
      SessionReclaimInfo c = infos[h.session];
      c.session = h.session;
      for (int32_t& b : c.blocks_on_tier) b = 0;
      c.blocks_on_tier[static_cast<int>(request.tier)] = h.blocks;
      candidates.push_back(c);
    }
    std::vector<ReclaimVictim> ordered;
    OrderByClass(request, candidates, &ordered);
    for (const ReclaimVictim& v : ordered) victims->push_back(v.session);
  }
};

// A session's prefill, its hashes, then its release to the cache as `session`'s.
std::vector<BlockHash> RunSession(BlockPool& pool, SimKv& kv, const std::vector<int32_t>& tokens,
                                  SessionId session) {
  BlockTable t = Prefill(pool, kv, tokens);
  std::vector<BlockHash> hashes(t.block_hashes().begin(), t.block_hashes().end());
  if (session != 0) pool.SetOwner(t, session);
  pool.Free(&t);
  return hashes;
}

std::vector<Tier> TiersOf(const BlockPool& pool, const std::vector<BlockHash>& hashes) {
  std::vector<Tier> tiers;
  for (BlockHash h : hashes) {
    Tier tier = Tier::kDevice;
    int32_t loc = -1;
    tiers.push_back(pool.TEST_Locate(h, &tier, &loc) ? tier : static_cast<Tier>(99));
  }
  return tiers;
}

const std::vector<Tier> kBothOnHost{Tier::kHost, Tier::kHost};
const std::vector<Tier> kBothOnDisk{Tier::kDisk, Tier::kDisk};

// Host full of sessions 1 (older blocks) and 2; session 2 is the least recently used
// session, so the policy names it and both its blocks go to disk, while per-block LRU
// would have taken session 1's two oldest blocks.
TEST(BlockPoolTiersTest, HostOverflowDemotesThePolicysVictimSessionWhole) {
  BlockPool pool(
      {.num_blocks = 4, .block_size = kBlockSize, .num_host_blocks = 4, .num_disk_blocks = 8});
  PolicyChooser chooser;
  pool.SetTierVictimChooser(&chooser);
  chooser.infos[1].last_use_us = 200;
  chooser.infos[2].last_use_us = 100;
  chooser.infos[3].last_use_us = 300;
  SimKv kv(4, kBlockSize, 4);
  const std::vector<BlockHash> a = RunSession(pool, kv, Iota(8), 1);
  const std::vector<BlockHash> b = RunSession(pool, kv, Iota(8, 100), 2);
  RunSession(pool, kv, Iota(16, 200), 3);  // a's then b's blocks go to the host: it is full
  EXPECT_EQ(TiersOf(pool, a), kBothOnHost);
  EXPECT_EQ(TiersOf(pool, b), kBothOnHost);
  EXPECT_TRUE(chooser.calls.empty());
  BlockTable d = Prefill(pool, kv, Iota(8, 300));  // two of session 3's blocks need host slots
  EXPECT_EQ(TiersOf(pool, a), kBothOnHost);
  EXPECT_EQ(TiersOf(pool, b), kBothOnDisk);
  ASSERT_EQ(chooser.calls.size(), 1u);  // one session covered both slots
  EXPECT_EQ(chooser.calls[0].first, Tier::kHost);
  ASSERT_EQ(chooser.calls[0].second.size(), 2u);
  EXPECT_EQ(chooser.calls[0].second[0].blocks, 2);
  EXPECT_EQ(pool.stats().disk_used, 2);
  ASSERT_TRUE(pool.TEST_CheckInvariants().ok());
  pool.Free(&d);
}

// Blocks no session owns leave the host first, even the most recently used ones, and
// without asking the policy.
TEST(BlockPoolTiersTest, UnownedBlocksLeaveALowerTierBeforeAnySession) {
  BlockPool pool(
      {.num_blocks = 4, .block_size = kBlockSize, .num_host_blocks = 4, .num_disk_blocks = 8});
  PolicyChooser chooser;
  pool.SetTierVictimChooser(&chooser);
  SimKv kv(4, kBlockSize, 4);
  const std::vector<BlockHash> owned = RunSession(pool, kv, Iota(8), 2);
  const std::vector<BlockHash> unowned = RunSession(pool, kv, Iota(8, 100), 0);
  RunSession(pool, kv, Iota(16, 200), 3);
  BlockTable d = Prefill(pool, kv, Iota(8, 300));
  EXPECT_EQ(TiersOf(pool, owned), kBothOnHost);
  EXPECT_EQ(TiersOf(pool, unowned), kBothOnDisk);
  EXPECT_TRUE(chooser.calls.empty());
  ASSERT_TRUE(pool.TEST_CheckInvariants().ok());
  pool.Free(&d);
}

// Disk full of sessions 1 (oldest blocks, kept by a retention priority) and 2: a third
// session's demotion drops all of session 2 and nothing of session 1; per-block LRU would
// have dropped session 1's blocks.
TEST(BlockPoolTiersTest, DiskOverflowDropsThePolicysVictimSessionWhole) {
  BlockPool pool(
      {.num_blocks = 2, .block_size = kBlockSize, .num_host_blocks = 2, .num_disk_blocks = 4});
  PolicyChooser chooser;
  pool.SetTierVictimChooser(&chooser);
  chooser.infos[1].retention_priority = 5;
  SimKv kv(2, kBlockSize, 2);
  const std::vector<BlockHash> a = RunSession(pool, kv, Iota(8), 1);
  const std::vector<BlockHash> b = RunSession(pool, kv, Iota(8, 100), 2);  // a -> host
  const std::vector<BlockHash> c = RunSession(pool, kv, Iota(8, 200), 3);  // a -> disk
  RunSession(pool, kv, Iota(8, 300), 4);                                   // b -> disk
  EXPECT_EQ(TiersOf(pool, a), kBothOnDisk);
  EXPECT_EQ(TiersOf(pool, b), kBothOnDisk);
  EXPECT_EQ(pool.stats().num_dropped, 0);
  chooser.calls.clear();
  BlockTable e = Prefill(pool, kv, Iota(8, 400));  // c -> disk, which is full
  EXPECT_EQ(TiersOf(pool, a), kBothOnDisk);
  EXPECT_EQ(TiersOf(pool, c), kBothOnDisk);
  for (BlockHash h : b) {
    Tier tier;
    int32_t loc;
    EXPECT_FALSE(pool.TEST_Locate(h, &tier, &loc)) << "session 2 was not dropped whole";
  }
  EXPECT_EQ(pool.stats().num_dropped, 2);
  int disk_calls = 0;
  for (const auto& [tier, holders] : chooser.calls) disk_calls += tier == Tier::kDisk;
  EXPECT_EQ(disk_calls, 1);  // one victim session covered both blocks
  kv.RunTransfers(pool);
  EXPECT_EQ(kv.num_disk_blocks(), 4u);  // the files follow the records
  ASSERT_TRUE(pool.TEST_CheckInvariants().ok());
  pool.Free(&e);
}

// Per-tenant caps on the lower tiers: tenant 2's load pushes its own oldest host blocks
// down (to disk, and from there, at its disk cap, out) and never tenant 1's; the control
// without the caps shows the same load takes tenant 1's host blocks.
std::vector<Tier> TenantOneAfterTenantTwosLoad(int32_t host_cap, int32_t disk_cap,
                                               int32_t* two_on_host, int32_t* two_on_disk) {
  BlockPool pool({.num_blocks = 4,
                  .block_size = kBlockSize,
                  .num_host_blocks = 6,
                  .num_disk_blocks = 4,
                  .max_host_blocks_per_tenant = host_cap,
                  .max_disk_blocks_per_tenant = disk_cap});
  SimKv kv(4, kBlockSize, 6);
  auto run = [&](HashScope scope, const std::vector<int32_t>& tokens) {
    BlockTable t(pool.block_size(), scope);
    std::vector<int32_t> held;
    EXPECT_TRUE(Extend(pool, kv, t, held, tokens).ok());
    std::vector<BlockHash> hashes(t.block_hashes().begin(), t.block_hashes().end());
    pool.Free(&t);
    return hashes;
  };
  const HashScope one{0x2222, 1}, two{0x2222, 2};
  const std::vector<BlockHash> mine = run(one, Iota(8));
  for (int i = 0; i < 6; ++i) run(two, Iota(16, 100 * (i + 1)));
  run(two, Iota(16, 5000));  // the last of tenant 2's blocks leave the device too
  kv.RunTransfers(pool);
  EXPECT_TRUE(pool.TEST_CheckInvariants().ok());
  const auto& counts = pool.tenant_blocks();
  *two_on_host = counts.at(2)[static_cast<int>(Tier::kHost)];
  *two_on_disk = counts.at(2)[static_cast<int>(Tier::kDisk)];
  return TiersOf(pool, mine);
}

TEST(BlockPoolTiersTest, ATenantAtItsLowerTierCapsMovesOnlyItsOwnBlocks) {
  int32_t on_host = 0, on_disk = 0;
  EXPECT_EQ(TenantOneAfterTenantTwosLoad(/*host_cap=*/3, /*disk_cap=*/2, &on_host, &on_disk),
            kBothOnHost);
  EXPECT_EQ(on_host, 3);
  EXPECT_EQ(on_disk, 2);
  const std::vector<Tier> control = TenantOneAfterTenantTwosLoad(0, 0, &on_host, &on_disk);
  EXPECT_NE(control, kBothOnHost) << "without the caps tenant 2's load should move tenant 1's";
}

}  // namespace
}  // namespace kvkeep
