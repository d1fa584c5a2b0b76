// Tests of BlockPool: states, refcounts, copy-on-write, prefix caching, LRU, accounting,
// and a randomized stress test against an independent model.
#include "cache/block_pool.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <map>
#include <numeric>
#include <random>
#include <vector>

#include "tests/cache/sim_kv.h"
#include "tests/testlib/test_util.h"

namespace kvkeep {
namespace {

using testing::Extend;
using testing::SimKv;

constexpr HashScope kScope{0x1111, 7};

std::vector<int32_t> Iota(int n, int start = 0) {
  std::vector<int32_t> v(n);
  std::iota(v.begin(), v.end(), start);
  return v;
}

struct Snapshot {
  std::vector<int32_t> refcounts;
  std::vector<bool> cached;
  BlockPoolStats stats;
};

Snapshot Take(const BlockPool& pool) {
  Snapshot s;
  for (int32_t b = 0; b < pool.num_blocks(); ++b) {
    s.refcounts.push_back(pool.TEST_RefCount(b));
    s.cached.push_back(pool.TEST_IsCached(b));
  }
  s.stats = pool.stats();
  return s;
}

void ExpectSame(const Snapshot& a, const Snapshot& b) {
  EXPECT_EQ(a.refcounts, b.refcounts);
  EXPECT_EQ(a.cached, b.cached);
  EXPECT_EQ(a.stats.num_free, b.stats.num_free);
  EXPECT_EQ(a.stats.num_in_use, b.stats.num_in_use);
  EXPECT_EQ(a.stats.num_cached, b.stats.num_cached);
  EXPECT_EQ(a.stats.num_evictions, b.stats.num_evictions);
}

// A sequence of `tokens` prefilled into fresh blocks and committed.
BlockTable Prefill(BlockPool& pool, SimKv& kv, const std::vector<int32_t>& tokens,
                   HashScope scope = kScope) {
  BlockTable table(pool.block_size(), scope);
  std::vector<int32_t> held;
  EXPECT_TRUE(Extend(pool, kv, table, held, tokens).ok());
  return table;
}

TEST(BlockPoolTest, AllocateAndReleaseStates) {
  BlockPool pool({.num_blocks = 8, .block_size = 4});
  auto blocks = pool.Allocate(3);
  ASSERT_TRUE(blocks.ok());
  EXPECT_EQ(*blocks, (std::vector<int32_t>{0, 1, 2}));
  EXPECT_EQ(pool.stats().num_in_use, 3);
  EXPECT_EQ(pool.stats().num_free, 5);
  pool.Retain((*blocks)[1]);
  EXPECT_EQ(pool.TEST_RefCount((*blocks)[1]), 2);
  EXPECT_EQ(pool.stats().num_shared, 1);
  pool.Release(*blocks);
  EXPECT_EQ(pool.stats().num_in_use, 1);
  EXPECT_TRUE(pool.TEST_IsFree(0));
  EXPECT_FALSE(pool.TEST_IsFree(1));
  ASSERT_TRUE(pool.TEST_CheckInvariants().ok());
  pool.Release(std::vector<int32_t>{1});
  EXPECT_EQ(pool.stats().num_free, 8);
  EXPECT_TRUE(pool.TEST_CheckInvariants().ok());
}

TEST(BlockPoolTest, ExhaustionReturnsErrorAndChangesNothing) {
  BlockPool pool({.num_blocks = 8, .block_size = 4});
  SimKv kv(8, 4);
  BlockTable cached = Prefill(pool, kv, Iota(8));  // 2 blocks, hashed
  pool.Free(&cached);                              // -> 2 cached
  auto held = pool.Allocate(5);
  ASSERT_TRUE(held.ok());
  const Snapshot before = Take(pool);
  auto more = pool.Allocate(4);  // 1 free + 2 cached < 4
  EXPECT_TRUE(more.status().IsResourceExhausted()) << more.status().ToString();
  ExpectSame(before, Take(pool));
  EXPECT_EQ(pool.CountCachedPrefix(Iota(8), kScope), 2);  // cached blocks not evicted
  EXPECT_TRUE(pool.TEST_CheckInvariants().ok());

  // The same through PrepareAppend: table, copies and pool unchanged.
  BlockTable table(4, kScope);
  std::vector<int32_t> tokens;
  ASSERT_TRUE(Extend(pool, kv, table, tokens, Iota(6, 100)).ok());  // the free one + 1 evicted
  EXPECT_EQ(pool.num_allocatable(), 1);
  const Snapshot before2 = Take(pool);
  std::vector<BlockCopy> copies = {{5, 6}};
  const std::vector<int32_t> ids(table.block_ids().begin(), table.block_ids().end());
  Status st = pool.PrepareAppend(&table, 100, &copies);
  EXPECT_TRUE(st.IsResourceExhausted());
  ExpectSame(before2, Take(pool));
  EXPECT_EQ(std::vector<int32_t>(table.block_ids().begin(), table.block_ids().end()), ids);
  EXPECT_EQ(table.num_tokens(), 6);
  EXPECT_EQ(copies, (std::vector<BlockCopy>{{5, 6}}));
  // Exactly enough succeeds: 2 spare slots + the last cached block's 4.
  EXPECT_TRUE(pool.PrepareAppend(&table, 7, &copies).IsResourceExhausted());
  EXPECT_TRUE(pool.PrepareAppend(&table, 6, &copies).ok());
  EXPECT_EQ(pool.num_allocatable(), 0);
  EXPECT_EQ(pool.stats().num_evictions, 2);
  EXPECT_TRUE(pool.TEST_CheckInvariants().ok());
}

TEST(BlockPoolTest, ForkThenAppendCopiesOnWrite) {
  BlockPool pool({.num_blocks = 16, .block_size = 4});
  SimKv kv(16, 4);
  std::vector<int32_t> ta = Iota(6);  // one full block + 2 tokens
  BlockTable a = Prefill(pool, kv, ta);
  const int32_t full = a.block_id(0), partial = a.block_id(1);
  std::vector<int32_t> tb = ta;
  BlockTable b = pool.Fork(a);
  EXPECT_EQ(pool.TEST_RefCount(full), 2);
  EXPECT_EQ(pool.TEST_RefCount(partial), 2);
  EXPECT_EQ(pool.stats().num_shared, 2);

  std::vector<BlockCopy> copies;
  ASSERT_TRUE(pool.PrepareAppend(&b, 1, &copies).ok());
  ASSERT_EQ(copies.size(), 1u);
  EXPECT_EQ(copies[0].first, partial);
  EXPECT_NE(copies[0].second, partial);
  EXPECT_EQ(b.block_id(0), full);
  EXPECT_EQ(b.block_id(1), copies[0].second);
  EXPECT_EQ(a.block_id(1), partial);
  EXPECT_EQ(pool.TEST_RefCount(full), 2);
  EXPECT_EQ(pool.TEST_RefCount(partial), 2);  // a, and the pending copy's source
  EXPECT_EQ(pool.TEST_RefCount(b.block_id(1)), 1);
  kv.Copy(copies);
  pool.ReleaseCopySources(copies);
  EXPECT_EQ(pool.TEST_RefCount(partial), 1);
  tb.push_back(99);
  kv.Write(b, tb, 6);
  b.AdvanceTokens(1);

  // The other branch now owns its partial block alone: it writes in place.
  copies.clear();
  ASSERT_TRUE(Extend(pool, kv, a, ta, std::vector<int32_t>{55, 56, 57}).ok());
  EXPECT_EQ(a.block_id(1), partial);
  EXPECT_EQ(a.num_blocks(), 3);
  EXPECT_TRUE(kv.Holds(a, ta));
  EXPECT_TRUE(kv.Holds(b, tb));
  EXPECT_EQ(pool.stats().num_cow_copies, 1);
  EXPECT_TRUE(pool.TEST_CheckInvariants().ok());
  pool.Free(&a);
  pool.Free(&b);
  EXPECT_EQ(pool.stats().num_in_use, 0);
  EXPECT_TRUE(pool.TEST_CheckInvariants().ok());
}

TEST(BlockPoolTest, ForkAtBlockBoundarySharesFullBlocksWithoutCopy) {
  BlockPool pool({.num_blocks = 16, .block_size = 4});
  SimKv kv(16, 4);
  std::vector<int32_t> ta = Iota(8);
  BlockTable a = Prefill(pool, kv, ta);
  std::vector<int32_t> tb = ta;
  BlockTable b = pool.Fork(a);
  ASSERT_TRUE(Extend(pool, kv, b, tb, std::vector<int32_t>{1, 2}).ok());
  EXPECT_EQ(pool.stats().num_cow_copies, 0);
  EXPECT_EQ(b.num_blocks(), 3);
  EXPECT_EQ(pool.TEST_RefCount(a.block_id(1)), 2);
  EXPECT_TRUE(kv.Holds(a, ta));
  EXPECT_TRUE(kv.Holds(b, tb));
}

TEST(BlockPoolTest, TruncateIntoHashedBlockCopiesBeforeRewrite) {
  BlockPool pool({.num_blocks = 16, .block_size = 4});
  SimKv kv(16, 4);
  std::vector<int32_t> tokens = Iota(8);
  BlockTable t = Prefill(pool, kv, tokens);
  ASSERT_EQ(t.num_hashed_blocks(), 2);
  const int32_t hashed = t.block_id(1);
  pool.Release(t.Truncate(6));
  EXPECT_EQ(t.num_hashed_blocks(), 1);
  ASSERT_TRUE(Extend(pool, kv, t, tokens, std::vector<int32_t>{70, 71}).ok());
  EXPECT_NE(t.block_id(1), hashed);
  EXPECT_TRUE(pool.TEST_IsCached(hashed));  // the old content stays reusable
  EXPECT_TRUE(kv.Holds(t, tokens));
  EXPECT_EQ(pool.CountCachedPrefix(Iota(8), kScope), 2);
  EXPECT_TRUE(pool.TEST_CheckInvariants().ok());
}

TEST(BlockPoolTest, PrefixMatchSharesExactlyCommonFullBlocks) {
  BlockPool pool({.num_blocks = 32, .block_size = 4});
  SimKv kv(32, 4);
  const std::vector<int32_t> ta = Iota(18);  // 4 full blocks + 2
  BlockTable a = Prefill(pool, kv, ta);
  EXPECT_EQ(a.num_hashed_blocks(), 4);

  std::vector<int32_t> tb(ta.begin(), ta.begin() + 11);  // common prefix 11 tokens
  tb.insert(tb.end(), {500, 501, 502, 503, 504, 505});
  EXPECT_EQ(pool.CountCachedPrefix(tb, kScope), 2);
  const Snapshot before = Take(pool);
  BlockTable b = pool.MatchPrefix(tb, kScope);
  ASSERT_EQ(b.num_blocks(), 2);
  EXPECT_EQ(b.num_tokens(), 8);
  EXPECT_EQ(b.block_id(0), a.block_id(0));
  EXPECT_EQ(b.block_id(1), a.block_id(1));
  EXPECT_EQ(pool.TEST_RefCount(a.block_id(0)), before.refcounts[a.block_id(0)] + 1);
  EXPECT_EQ(pool.TEST_RefCount(a.block_id(2)), before.refcounts[a.block_id(2)]);
  EXPECT_EQ(b.block_hashes()[1], a.block_hashes()[1]);
  EXPECT_TRUE(kv.Holds(b, tb));
  ASSERT_TRUE(Extend(pool, kv, b, tb, std::span(tb).subspan(8)).ok());
  EXPECT_TRUE(kv.Holds(b, tb));
  EXPECT_EQ(b.num_hashed_blocks(), 4);

  // Other tenant or other model: nothing.
  EXPECT_EQ(pool.CountCachedPrefix(ta, HashScope{kScope.model_id_hash, 8}), 0);
  EXPECT_EQ(pool.CountCachedPrefix(ta, HashScope{0x2222, kScope.tenant_salt}), 0);
  EXPECT_EQ(pool.MatchPrefix(ta, HashScope{0x2222, 7}).num_blocks(), 0);
  // A partial last block is never matched: 18 tokens match 4 blocks, 15 match 3.
  EXPECT_EQ(pool.CountCachedPrefix(ta, kScope), 4);
  EXPECT_EQ(pool.CountCachedPrefix(std::span(ta).first(15), kScope), 3);
  // A difference in the first block stops everything.
  std::vector<int32_t> tc = ta;
  tc[0] = 1000;
  EXPECT_EQ(pool.CountCachedPrefix(tc, kScope), 0);
  EXPECT_EQ(pool.stats().num_hit_blocks, 2);
  EXPECT_TRUE(pool.TEST_CheckInvariants().ok());
}

TEST(BlockPoolTest, ReleasedPrefixIsCachedAndReusedAfterFree) {
  BlockPool pool({.num_blocks = 8, .block_size = 4});
  SimKv kv(8, 4);
  const std::vector<int32_t> tokens = Iota(10);
  BlockTable a = Prefill(pool, kv, tokens);
  const std::vector<int32_t> ids(a.block_ids().begin(), a.block_ids().end());
  pool.Free(&a);
  EXPECT_EQ(pool.stats().num_cached, 2);  // the partial block went free
  EXPECT_TRUE(pool.TEST_IsFree(ids[2]));
  BlockTable b = pool.MatchPrefix(tokens, kScope);
  ASSERT_EQ(b.num_blocks(), 2);
  EXPECT_EQ(b.block_id(0), ids[0]);
  EXPECT_EQ(pool.stats().num_cached, 0);
  EXPECT_EQ(pool.stats().num_in_use, 2);
  EXPECT_TRUE(kv.Holds(b, tokens));
  EXPECT_TRUE(pool.TEST_CheckInvariants().ok());
}

TEST(BlockPoolTest, LruEvictsLeastRecentlyUsedFirst) {
  BlockPool pool({.num_blocks = 6, .block_size = 4});
  SimKv kv(6, 4);
  std::vector<std::vector<int32_t>> prompts;
  std::vector<int32_t> ids;
  for (int i = 0; i < 4; ++i) {
    prompts.push_back(Iota(4, 100 * i));
    BlockTable t = Prefill(pool, kv, prompts.back());
    ids.push_back(t.block_id(0));
    pool.Free(&t);
  }
  EXPECT_EQ(pool.TEST_LruOrder(), ids);
  // Touch prompt 1: it becomes the most recently used.
  BlockTable touched = pool.MatchPrefix(prompts[1], kScope);
  ASSERT_EQ(touched.num_blocks(), 1);
  pool.Free(&touched);
  EXPECT_EQ(pool.TEST_LruOrder(), (std::vector<int32_t>{ids[0], ids[2], ids[3], ids[1]}));
  // 2 free blocks go first, then prompts 0 and 2 are evicted.
  auto got = pool.Allocate(4);
  ASSERT_TRUE(got.ok());
  EXPECT_EQ(pool.stats().num_evictions, 2);
  EXPECT_EQ(pool.CountCachedPrefix(prompts[0], kScope), 0);
  EXPECT_EQ(pool.CountCachedPrefix(prompts[2], kScope), 0);
  EXPECT_EQ(pool.CountCachedPrefix(prompts[3], kScope), 1);
  EXPECT_EQ(pool.CountCachedPrefix(prompts[1], kScope), 1);
  EXPECT_TRUE(pool.TEST_CheckInvariants().ok());
}

TEST(BlockPoolTest, FreeReleasesTailFirstSoPrefixOutlivesTail) {
  BlockPool pool({.num_blocks = 3, .block_size = 4});
  SimKv kv(3, 4);
  const std::vector<int32_t> tokens = Iota(12);
  BlockTable t = Prefill(pool, kv, tokens);
  const std::vector<int32_t> ids(t.block_ids().begin(), t.block_ids().end());
  pool.Free(&t);
  EXPECT_EQ(pool.TEST_LruOrder(), (std::vector<int32_t>{ids[2], ids[1], ids[0]}));
  ASSERT_TRUE(pool.Allocate(1).ok());
  EXPECT_EQ(pool.CountCachedPrefix(tokens, kScope), 2);
}

// Tables freed as victims go before every other cached block, even blocks freed earlier
// (a queued turn's prefix, handed to the cache on arrival); among themselves in the order
// they were freed, each tail first.
TEST(BlockPoolTest, FreeAsLeastRecentlyUsedIsEvictedBeforeOlderCachedBlocks) {
  const std::vector<int32_t> queued = Iota(8, 100), first = Iota(12, 200), second = Iota(8, 300);
  BlockPool pool({.num_blocks = 7, .block_size = 4});
  SimKv kv(7, 4);
  BlockTable q = Prefill(pool, kv, queued);
  BlockTable v = Prefill(pool, kv, first);
  BlockTable w = Prefill(pool, kv, second);
  const std::vector<int32_t> qids(q.block_ids().begin(), q.block_ids().end());
  const std::vector<int32_t> vids(v.block_ids().begin(), v.block_ids().end());
  const std::vector<int32_t> wids(w.block_ids().begin(), w.block_ids().end());
  pool.Free(&q);  // freed first: with Free, the oldest
  pool.FreeAsLeastRecentlyUsed(&v);
  pool.FreeAsLeastRecentlyUsed(&w);
  EXPECT_EQ(pool.TEST_LruOrder(),
            (std::vector<int32_t>{vids[2], vids[1], vids[0], wids[1], wids[0], qids[1], qids[0]}));
  EXPECT_TRUE(pool.TEST_CheckInvariants().ok());
  ASSERT_TRUE(pool.Allocate(4).ok());
  EXPECT_EQ(pool.CountCachedPrefix(first, kScope), 0);
  EXPECT_EQ(pool.CountCachedPrefix(second, kScope), 1);  // its prefix block is left
  EXPECT_EQ(pool.CountCachedPrefix(queued, kScope), 2);
  EXPECT_TRUE(pool.TEST_CheckInvariants().ok());
  // A victim matched again leaves the run; freed as a victim again, it rejoins at the head.
  BlockTable again = pool.MatchPrefix(second, kScope);
  ASSERT_EQ(again.num_blocks(), 1);
  pool.FreeAsLeastRecentlyUsed(&again);
  EXPECT_EQ(pool.TEST_LruOrder(), (std::vector<int32_t>{wids[0], qids[1], qids[0]}));
  EXPECT_TRUE(pool.TEST_CheckInvariants().ok());
  // The same three tables freed with Free: the queued prefix is evicted first.
  BlockPool plain({.num_blocks = 7, .block_size = 4});
  SimKv kv2(7, 4);
  BlockTable q2 = Prefill(plain, kv2, queued);
  BlockTable v2 = Prefill(plain, kv2, first);
  BlockTable w2 = Prefill(plain, kv2, second);
  plain.Free(&q2);
  plain.Free(&v2);
  plain.Free(&w2);
  ASSERT_TRUE(plain.Allocate(4).ok());
  EXPECT_EQ(plain.CountCachedPrefix(queued, kScope), 0);
}

TEST(BlockPoolTest, DuplicateCommitKeepsOwnerAndChainsThroughAlias) {
  BlockPool pool({.num_blocks = 16, .block_size = 4});
  SimKv kv(16, 4);
  // Two sequences prefilled side by side with the same first 8 tokens (no match in
  // between), then different tails.
  std::vector<int32_t> ta = Iota(8), tb = Iota(8);
  ta.insert(ta.end(), {50, 51, 52, 53});
  tb.insert(tb.end(), {60, 61, 62, 63});
  BlockTable a = Prefill(pool, kv, ta);
  BlockTable b = Prefill(pool, kv, tb);
  EXPECT_NE(a.block_id(0), b.block_id(0));
  EXPECT_EQ(a.block_hashes()[1], b.block_hashes()[1]);
  // b's copies of the common blocks stay unhashed: freed, not cached, on release.
  const int32_t b0 = b.block_id(0), b2 = b.block_id(2);
  pool.Free(&b);
  EXPECT_TRUE(pool.TEST_IsFree(b0));
  EXPECT_TRUE(pool.TEST_IsCached(b2));  // b's own tail chained onto a's prefix
  BlockTable c = pool.MatchPrefix(tb, kScope);
  ASSERT_EQ(c.num_blocks(), 3);
  EXPECT_EQ(c.block_id(0), a.block_id(0));
  EXPECT_EQ(c.block_id(1), a.block_id(1));
  EXPECT_EQ(c.block_id(2), b2);
  EXPECT_TRUE(kv.Holds(c, tb));
  EXPECT_TRUE(pool.TEST_CheckInvariants().ok());
}

TEST(BlockPoolTest, EvictedParentMakesChildUnmatchable) {
  BlockPool pool({.num_blocks = 4, .block_size = 4});
  SimKv kv(4, 4);
  const std::vector<int32_t> tokens = Iota(8);
  BlockTable t = Prefill(pool, kv, tokens);
  const int32_t old_child = t.block_id(1);
  pool.Release(std::vector<int32_t>{t.block_id(0), t.block_id(1)});  // parent is LRU
  ASSERT_TRUE(pool.Allocate(3).ok());  // 2 free, then evicts the parent only
  EXPECT_TRUE(pool.TEST_IsCached(old_child));
  EXPECT_EQ(pool.CountCachedPrefix(tokens, kScope), 0);
  auto extra = pool.Allocate(1);  // evicts the stale child: it is the only cached block
  ASSERT_TRUE(extra.ok());
  EXPECT_EQ((*extra)[0], old_child);
  EXPECT_TRUE(pool.TEST_CheckInvariants().ok());
}

TEST(BlockPoolTest, StaleOwnerIsReplacedOnRecommit) {
  BlockPool pool({.num_blocks = 8, .block_size = 4});
  SimKv kv(8, 4);
  const std::vector<int32_t> tokens = Iota(8);
  BlockTable t = Prefill(pool, kv, tokens);
  const int32_t old_parent = t.block_id(0), old_child = t.block_id(1);
  pool.Release(std::vector<int32_t>{old_parent, old_child});
  t = BlockTable(4, kScope);
  auto filler = pool.Allocate(7);  // 6 free + the parent (LRU head)
  ASSERT_TRUE(filler.ok());
  EXPECT_TRUE(pool.TEST_IsCached(old_child));
  pool.Release(std::span(*filler).first(2));
  BlockTable again = Prefill(pool, kv, tokens);
  EXPECT_TRUE(pool.TEST_IsFree(old_child));  // its hash went to the new block
  EXPECT_EQ(pool.CountCachedPrefix(tokens, kScope), 2);
  BlockTable hit = pool.MatchPrefix(tokens, kScope);
  EXPECT_EQ(hit.block_id(1), again.block_id(1));
  EXPECT_TRUE(kv.Holds(hit, tokens));
  EXPECT_TRUE(pool.TEST_CheckInvariants().ok());
}

TEST(BlockPoolTest, ParentIdReusedForOtherContentDoesNotRevive) {
  BlockPool pool({.num_blocks = 4, .block_size = 4});
  SimKv kv(4, 4);
  const std::vector<int32_t> xy = Iota(8);
  BlockTable a = Prefill(pool, kv, xy);
  const int32_t parent = a.block_id(0), child = a.block_id(1);
  pool.Release(std::vector<int32_t>{parent, child});  // parent is LRU
  auto filler = pool.Allocate(2);                     // the two free blocks
  ASSERT_TRUE(filler.ok());
  BlockTable b = Prefill(pool, kv, Iota(4, 900));  // evicts the parent and rehashes it
  ASSERT_EQ(b.block_id(0), parent);
  pool.Release(*filler);
  // The child's parent id is hashed again, but as another instance: the child is stale
  // and a re-prefill of the same tokens takes its hash over.
  BlockTable d = Prefill(pool, kv, xy);
  EXPECT_TRUE(pool.TEST_IsFree(child));
  EXPECT_EQ(pool.CountCachedPrefix(xy, kScope), 2);
  EXPECT_TRUE(pool.TEST_CheckInvariants().ok());
}

// Blind to everything but the first token: blocks starting alike collide.
BlockHash FirstTokenHash(BlockHash, std::span<const int32_t> tokens, HashScope) {
  return BlockHash{static_cast<uint64_t>(tokens[0])};
}

TEST(BlockPoolTest, CollidingBlocksAreNeitherServedNorChainedThrough) {
  BlockPool pool({.num_blocks = 16, .block_size = 4});
  pool.TEST_SetHashFunction(&FirstTokenHash);
  SimKv kv(16, 4);
  const std::vector<int32_t> x = {1, 2, 3, 4}, y = {1, 9, 9, 9}, z = {2, 5, 5, 5};
  BlockTable a = Prefill(pool, kv, x);
  std::vector<int32_t> yz = y;
  yz.insert(yz.end(), z.begin(), z.end());
  BlockTable b = Prefill(pool, kv, yz);  // y collides with x; z was computed over y
  std::vector<int32_t> xz = x;
  xz.insert(xz.end(), z.begin(), z.end());
  EXPECT_EQ(pool.CountCachedPrefix(xz, kScope), 1);
  EXPECT_EQ(pool.CountCachedPrefix(yz, kScope), 0);
  BlockTable c = pool.MatchPrefix(xz, kScope);
  EXPECT_EQ(c.num_blocks(), 1);
  EXPECT_TRUE(kv.Holds(c, xz));
  EXPECT_TRUE(pool.TEST_CheckInvariants().ok());
}

TEST(BlockPoolTest, NonePolicyNeverCachesOrMatches) {
  BlockPool pool({.num_blocks = 8, .block_size = 4, .enable_prefix_caching = false});
  SimKv kv(8, 4);
  const std::vector<int32_t> tokens = Iota(8);
  BlockTable t = Prefill(pool, kv, tokens);
  EXPECT_EQ(t.num_hashed_blocks(), 0);
  pool.Free(&t);
  EXPECT_EQ(pool.stats().num_cached, 0);
  EXPECT_EQ(pool.stats().num_free, 8);
  EXPECT_EQ(pool.MatchPrefix(tokens, kScope).num_blocks(), 0);
  EXPECT_EQ(pool.CountCachedPrefix(tokens, kScope), 0);
  EXPECT_TRUE(pool.TEST_CheckInvariants().ok());
}

TEST(BlockPoolTest, StatsAndWastedSlots) {
  BlockPool pool({.num_blocks = 16, .block_size = 4});
  SimKv kv(16, 4);
  BlockTable a = Prefill(pool, kv, Iota(5));  // 2 blocks, 3 slots wasted
  BlockTable b = pool.Fork(a);                // shares both: still 3
  const BlockTable* both[] = {&a, &b};
  EXPECT_EQ(pool.WastedSlots(both), 3);
  std::vector<BlockCopy> copies;
  ASSERT_TRUE(pool.PrepareAppend(&b, 4, &copies).ok());  // copy + 1 new block
  pool.ReleaseCopySources(copies);
  b.AdvanceTokens(4);  // b: 9 tokens in 3 blocks
  // a: 3 wasted in its own partial block; b: 0 in its copy, 3 in its new block.
  EXPECT_EQ(pool.WastedSlots(both), 6);
  const BlockPoolStats s = pool.stats();
  EXPECT_EQ(s.num_total, 16);
  EXPECT_EQ(s.num_in_use, 4);
  EXPECT_EQ(s.num_shared, 1);
  EXPECT_EQ(s.num_cached, 0);
  EXPECT_EQ(s.num_free, 12);
  EXPECT_EQ(s.num_free + s.num_in_use + s.num_cached, s.num_total);
}

// ---- Randomized stress against an independent model ------------------------------------

struct LiveSeq {
  BlockTable table;
  std::vector<int32_t> tokens;
};

// Expected refcounts: how many live tables hold each block.
void CheckAgainstModel(const BlockPool& pool, const SimKv& kv, const std::vector<LiveSeq>& seqs,
                       const std::string& where) {
  SCOPED_TRACE(where);
  Status inv = pool.TEST_CheckInvariants();
  ASSERT_TRUE(inv.ok()) << inv.ToString();
  std::vector<int32_t> expected(pool.num_blocks(), 0);
  for (const LiveSeq& s : seqs) {
    for (int32_t b : s.table.block_ids()) ++expected[b];
    ASSERT_TRUE(kv.Holds(s.table, s.tokens)) << "a sequence reads KV that is not its own";
  }
  int32_t in_use = 0, shared = 0;
  for (int32_t b = 0; b < pool.num_blocks(); ++b) {
    ASSERT_EQ(pool.TEST_RefCount(b), expected[b]) << "block " << b;
    in_use += expected[b] > 0;
    shared += expected[b] > 1;
  }
  EXPECT_EQ(pool.stats().num_in_use, in_use);
  EXPECT_EQ(pool.stats().num_shared, shared);
}

// A deliberately terrible block hash, blind to parent and scope, with 41 values for the
// 81 blocks of the stress test's 3-token vocabulary, so lookups meet other tokens, other
// prefixes and other tenants under the same hash all the time.
BlockHash WeakHash(BlockHash /*parent*/, std::span<const int32_t> tokens, HashScope /*scope*/) {
  uint64_t h = 0;
  for (int32_t t : tokens) h = h * 3 + static_cast<uint64_t>(t);
  return BlockHash{h % 41};
}

// weak_hash: nullptr for the real HashBlock. With host_blocks > 0, evicted blocks are
// demoted to the host tier (and with disk_blocks > 0 on to disk), matches promote them,
// "load" steps bring disk blocks back, and one disk read in five fails (a bad checksum).
void RunStress(BlockPool::BlockHashFn weak_hash, int32_t host_blocks = 0, int32_t disk_blocks = 0) {
  const uint64_t seed = ::kvkeep::testing::TestSeed();
  std::mt19937_64 rng(seed);
  constexpr int32_t kBlocks = 48, kBlockSize = 4;
  BlockPool pool({.num_blocks = kBlocks,
                  .block_size = kBlockSize,
                  .num_host_blocks = host_blocks,
                  .num_disk_blocks = disk_blocks});
  if (weak_hash != nullptr) pool.TEST_SetHashFunction(weak_hash);
  SimKv kv(kBlocks, kBlockSize, host_blocks);
  auto flaky_read = [&](BlockHash) { return rng() % 5 == 0; };
  int64_t disk_loads = 0;
  const HashScope scopes[] = {{1, 0}, {1, 1}};
  // A few base prompts over a tiny vocabulary, so prefixes and blocks recur often.
  std::vector<std::vector<int32_t>> bases(4);
  for (auto& b : bases) {
    b.resize(4 + rng() % 30);
    for (int32_t& t : b) t = static_cast<int32_t>(rng() % 3);
  }
  std::vector<LiveSeq> seqs;
  auto rand_tokens = [&](int n) {
    std::vector<int32_t> v(n);
    for (int32_t& t : v) t = static_cast<int32_t>(rng() % 3);
    return v;
  };
  for (int step = 0; step < 4000; ++step) {
    const int op = static_cast<int>(rng() % (host_blocks > 0 ? 7 : 6));
    std::string what;
    if (op == 0 || seqs.empty()) {  // new sequence: match, then prefill the rest
      what = "new";
      std::vector<int32_t> prompt = bases[rng() % bases.size()];
      prompt.resize(rng() % (prompt.size() + 1));
      auto tail = rand_tokens(1 + rng() % 9);
      prompt.insert(prompt.end(), tail.begin(), tail.end());
      const HashScope scope = scopes[rng() % 2];
      const int32_t peek =
          pool.CountCachedPrefix(std::span(prompt).first(prompt.size() - 1), scope);
      LiveSeq s{pool.MatchPrefix(std::span(prompt).first(prompt.size() - 1), scope), {}};
      kv.RunTransfers(pool);  // swap-ins of promoted host blocks
      if (host_blocks == 0) {
        ASSERT_EQ(s.table.num_blocks(), peek);
      }
      ASSERT_LE(s.table.num_blocks(), peek);
      s.tokens.assign(prompt.begin(), prompt.begin() + s.table.num_tokens());
      ASSERT_TRUE(kv.Holds(s.table, s.tokens)) << "matched KV is wrong, seed " << seed;
      const Snapshot before = Take(pool);
      if (Extend(pool, kv, s.table, s.tokens, std::span(prompt).subspan(s.tokens.size())).ok()) {
        seqs.push_back(std::move(s));
      } else {
        ExpectSame(before, Take(pool));
        pool.Free(&s.table);
      }
    } else if (op == 1) {  // append (decode or a chunk)
      what = "append";
      LiveSeq& s = seqs[rng() % seqs.size()];
      const Snapshot before = Take(pool);
      const std::vector<int32_t> ids(s.table.block_ids().begin(), s.table.block_ids().end());
      if (!Extend(pool, kv, s.table, s.tokens, rand_tokens(1 + rng() % 6)).ok()) {
        ExpectSame(before, Take(pool));
        ASSERT_TRUE(std::ranges::equal(ids, s.table.block_ids()));
      }
    } else if (op == 2) {
      what = "fork";
      const LiveSeq& s = seqs[rng() % seqs.size()];
      seqs.push_back(LiveSeq{pool.Fork(s.table), s.tokens});
    } else if (op == 3) {
      what = "truncate";
      LiveSeq& s = seqs[rng() % seqs.size()];
      const int64_t keep = static_cast<int64_t>(rng() % (s.table.num_tokens() + 1));
      pool.Release(s.table.Truncate(keep));
      s.tokens.resize(keep);
    } else if (op == 4) {  // one engine step: reserve several, maybe preempt, then copy
      what = "step";
      std::vector<size_t> order(seqs.size());
      std::iota(order.begin(), order.end(), 0);
      std::shuffle(order.begin(), order.end(), rng);
      order.resize(std::min<size_t>(order.size(), 1 + rng() % 3));
      std::vector<BlockCopy> copies;
      std::vector<std::pair<size_t, std::vector<int32_t>>> planned;
      for (size_t i : order) {
        std::vector<int32_t> add = rand_tokens(1 + rng() % 6);
        if (!pool.PrepareAppend(&seqs[i].table, static_cast<int64_t>(add.size()), &copies).ok()) {
          break;
        }
        planned.emplace_back(i, std::move(add));
      }
      // Preempt a sequence that is not part of this step, as the scheduler does.
      for (size_t i = 0; i < seqs.size() && rng() % 2 == 0; ++i) {
        if (std::ranges::none_of(planned, [i](const auto& p) { return p.first == i; })) {
          pool.Free(&seqs[i].table);
          seqs[i].tokens.clear();
          break;
        }
      }
      // More reservations after the preemption may reuse what it freed.
      if (planned.size() < order.size()) {
        const size_t i = order[planned.size()];
        std::vector<int32_t> add = rand_tokens(1 + rng() % 6);
        if (pool.PrepareAppend(&seqs[i].table, static_cast<int64_t>(add.size()), &copies).ok()) {
          planned.emplace_back(i, std::move(add));
        }
      }
      kv.RunTransfers(pool);
      kv.Copy(copies);
      pool.ReleaseCopySources(copies);
      for (auto& [i, add] : planned) {
        LiveSeq& s = seqs[i];
        const int64_t from = s.table.num_tokens();
        s.tokens.insert(s.tokens.end(), add.begin(), add.end());
        kv.Write(s.table, s.tokens, from);
        s.table.AdvanceTokens(static_cast<int64_t>(add.size()));
        pool.CommitFullBlocks(&s.table, s.tokens);
      }
    } else if (op == 6) {  // the disk worker brings a prompt's disk blocks up to the host
      what = "load";
      const std::vector<int32_t>& prompt = bases[rng() % bases.size()];
      disk_loads += pool.PlanDiskLoads(prompt, scopes[rng() % 2]);
      kv.RunTransfers(pool, flaky_read);
    } else {
      what = "free";
      const size_t i = rng() % seqs.size();
      pool.Free(&seqs[i].table);
      seqs.erase(seqs.begin() + static_cast<ptrdiff_t>(i));
    }
    CheckAgainstModel(pool, kv, seqs, "step " + std::to_string(step) + " " + what);
    if (::testing::Test::HasFatalFailure()) {
      ADD_FAILURE() << "seed " << seed;
      return;
    }
  }
  for (LiveSeq& s : seqs) pool.Free(&s.table);
  seqs.clear();
  CheckAgainstModel(pool, kv, seqs, "after freeing everything");
  const BlockPoolStats s = pool.stats();
  EXPECT_EQ(s.num_in_use, 0);
  EXPECT_EQ(s.num_free + s.num_cached, kBlocks);  // no leaks
  EXPECT_GT(s.num_hit_blocks, 0) << "the stress test never exercised prefix hits";
  EXPECT_GT(s.num_cow_copies, 0) << "the stress test never exercised copy-on-write";
  EXPECT_GT(s.num_evictions, 0) << "the stress test never exercised eviction";
  if (host_blocks > 0) {
    EXPECT_GT(s.num_demotions, 0);
    EXPECT_GT(s.num_promotions, 0);
  }
  if (disk_blocks > 0) {
    if (weak_hash == nullptr) {
      EXPECT_GT(disk_loads, 0) << "never read a disk block back";
    }
    kv.RunTransfers(pool);  // the drops FinishDiskRead planned
    EXPECT_EQ(static_cast<size_t>(pool.stats().disk_used), kv.num_disk_blocks());
  }
}

TEST(BlockPoolStressTest, RandomOpsKeepRefcountsInvariantsAndContent) { RunStress(nullptr); }

// With the token-sum hash most lookups meet a block of other tokens, another prefix or
// another tenant; verification must reject each one (SimKv's prefix- and scope-dependent
// values catch any wrong block served).
TEST(BlockPoolStressTest, ForcedHashCollisionsNeverServeWrongKv) { RunStress(&WeakHash); }

// The same, with blocks moving device -> host -> disk and back while others append.
TEST(BlockPoolStressTest, TiersKeepRefcountsInvariantsAndContent) { RunStress(nullptr, 16, 24); }
TEST(BlockPoolStressTest, ForcedHashCollisionsAcrossTiersNeverServeWrongKv) {
  RunStress(&WeakHash, 16, 24);
}
TEST(BlockPoolStressTest, HostTierWithoutDisk) { RunStress(&WeakHash, 8, 0); }

}  // namespace
}  // namespace kvkeep
