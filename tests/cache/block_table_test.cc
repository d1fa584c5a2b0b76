// Tests of BlockTable: sizing, slots, truncation and forking (through the pool).
#include "cache/block_table.h"

#include <gtest/gtest.h>
#include <spdlog/sinks/stdout_sinks.h>
#include <spdlog/spdlog.h>

#include <numeric>
#include <type_traits>
#include <vector>

#include "cache/block_pool.h"
#include "tests/cache/sim_kv.h"

namespace kvkeep {
namespace {

static_assert(!std::is_copy_constructible_v<BlockTable>,
              "a plain copy would duplicate references behind the pool's back");
static_assert(std::is_move_constructible_v<BlockTable>);

constexpr HashScope kScope{42, 3};

std::vector<int32_t> Iota(int n, int start = 0) {
  std::vector<int32_t> v(n);
  std::iota(v.begin(), v.end(), start);
  return v;
}

std::vector<int32_t> Ids(const BlockTable& t) {
  return std::vector<int32_t>(t.block_ids().begin(), t.block_ids().end());
}

TEST(BlockTableTest, NumBlocksForTokensIsCeilingDivision) {
  for (int32_t bs : {1, 4, 16}) {
    int64_t blocks = 0, room = 0;  // grow one token at a time
    for (int64_t n = 0; n <= 100; ++n) {
      if (n > room) {
        ++blocks;
        room += bs;
      }
      EXPECT_EQ(BlockTable::NumBlocksForTokens(n, bs), blocks) << n << " tokens, bs " << bs;
    }
  }
}

TEST(BlockTableTest, EmptyTable) {
  BlockTable t(16, kScope);
  EXPECT_TRUE(t.empty());
  EXPECT_EQ(t.num_tokens(), 0);
  EXPECT_EQ(t.capacity_tokens(), 0);
  EXPECT_EQ(t.NumNewBlocksFor(1), 1);
  EXPECT_EQ(t.NumNewBlocksFor(16), 1);
  EXPECT_EQ(t.NumNewBlocksFor(17), 2);
  EXPECT_EQ(t.scope(), kScope);
  EXPECT_TRUE(t.Clear().empty());
}

TEST(BlockTableTest, SlotsFollowTheBlockList) {
  BlockPool pool({.num_blocks = 8, .block_size = 4});
  // Make the table's ids non-contiguous: hold 0..2, release 1.
  auto held = pool.Allocate(3);
  ASSERT_TRUE(held.ok());
  pool.Release(std::vector<int32_t>{(*held)[1]});
  BlockTable t(4, kScope);
  std::vector<BlockCopy> copies;
  ASSERT_TRUE(pool.PrepareAppend(&t, 10, &copies).ok());
  EXPECT_TRUE(copies.empty());
  ASSERT_EQ(t.num_blocks(), 3);
  EXPECT_EQ(t.num_tokens(), 0);  // reserved, not yet written
  t.AdvanceTokens(10);
  std::vector<int32_t> expected;  // every slot of every block, in order
  for (int32_t b : t.block_ids()) {
    for (int32_t off = 0; off < 4; ++off) expected.push_back(b * 4 + off);
  }
  for (int64_t p = 0; p < t.capacity_tokens(); ++p) EXPECT_EQ(t.Slot(p), expected[p]) << p;
  EXPECT_NE(t.block_id(1), t.block_id(0) + 1);  // really non-contiguous
  EXPECT_EQ(t.NumNewBlocksFor(2), 0);
  EXPECT_EQ(t.NumNewBlocksFor(3), 1);
  EXPECT_EQ(t.num_full_blocks(), 2);
}

TEST(BlockTableTest, TruncateReturnsDroppedBlocksTailFirstAndTrimsHashes) {
  BlockPool pool({.num_blocks = 8, .block_size = 4});
  testing::SimKv kv(8, 4);
  BlockTable t(4, kScope);
  std::vector<int32_t> tokens;
  ASSERT_TRUE(testing::Extend(pool, kv, t, tokens, Iota(14)).ok());
  const std::vector<int32_t> ids = Ids(t);
  ASSERT_EQ(ids.size(), 4u);
  EXPECT_EQ(t.num_hashed_blocks(), 3);
  const std::vector<BlockHash> hashes(t.block_hashes().begin(), t.block_hashes().end());

  EXPECT_TRUE(t.Truncate(14).empty());
  std::vector<int32_t> dropped = t.Truncate(6);  // keeps blocks 0 and 1 (partial)
  EXPECT_EQ(dropped, (std::vector<int32_t>{ids[3], ids[2]}));
  EXPECT_EQ(t.num_tokens(), 6);
  EXPECT_EQ(t.num_blocks(), 2);
  ASSERT_EQ(t.num_hashed_blocks(), 1);
  EXPECT_EQ(t.block_hashes()[0], hashes[0]);
  pool.Release(dropped);

  dropped = t.Clear();
  EXPECT_EQ(dropped, (std::vector<int32_t>{ids[1], ids[0]}));
  EXPECT_TRUE(t.empty());
  EXPECT_EQ(t.num_hashed_blocks(), 0);
  pool.Release(dropped);
  EXPECT_EQ(pool.stats().num_in_use, 0);
  EXPECT_TRUE(pool.TEST_CheckInvariants().ok());
}

TEST(BlockTableTest, ForkCopiesEverythingAndRetains) {
  BlockPool pool({.num_blocks = 8, .block_size = 4});
  testing::SimKv kv(8, 4);
  BlockTable t(4, kScope);
  std::vector<int32_t> tokens;
  ASSERT_TRUE(testing::Extend(pool, kv, t, tokens, Iota(9)).ok());
  BlockTable f = pool.Fork(t);
  EXPECT_EQ(Ids(f), Ids(t));
  EXPECT_EQ(f.num_tokens(), 9);
  EXPECT_EQ(f.scope(), kScope);
  EXPECT_TRUE(std::ranges::equal(f.block_hashes(), t.block_hashes()));
  for (int32_t b : t.block_ids()) EXPECT_EQ(pool.TEST_RefCount(b), 2);
  pool.Free(&t);
  for (int32_t b : f.block_ids()) EXPECT_EQ(pool.TEST_RefCount(b), 1);
  EXPECT_TRUE(kv.Holds(f, tokens));
}

TEST(BlockTableDeathTest, AdvancePastCapacityAborts) {
  BlockTable t(4, kScope);
  EXPECT_DEATH(
      {
        spdlog::set_default_logger(spdlog::stderr_logger_mt("death"));
        t.AdvanceTokens(1);
      },
      "past capacity");
}

}  // namespace
}  // namespace kvkeep
