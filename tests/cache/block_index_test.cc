// Tests of BlockIndex's per-owner threading of the lower tiers' LRU lists: after any mix of
// inserts, tier moves, LRU pushes and removals, owner changes (also of records on a list)
// and erases, each owner's sub-list is exactly the tier's LRU list filtered by that owner,
// in the same order, and the holders are the owners with their counts.
#include <gtest/gtest.h>

#include <map>
#include <random>
#include <vector>

#include "cache/block_index.h"

namespace kvkeep {
namespace {

constexpr int32_t kBlockSize = 2;
constexpr Tier kLowerTiers[] = {Tier::kHost, Tier::kDisk};

// The reference: the tier's whole LRU list, walked and filtered by owner.
std::map<SessionId, std::vector<int32_t>> FilteredWalk(const BlockIndex& index, Tier tier) {
  std::map<SessionId, std::vector<int32_t>> by_owner;
  for (int32_t r = index.LruHead(tier); r >= 0; r = index.LruNext(r)) {
    by_owner[index.owner(r)].push_back(r);
  }
  return by_owner;
}

void ExpectSubListsMatchTheList(const BlockIndex& index) {
  ASSERT_TRUE(index.CheckInvariants().ok()) << index.CheckInvariants().ToString();
  for (Tier tier : kLowerTiers) {
    const auto expected = FilteredWalk(index, tier);
    std::vector<std::pair<SessionId, int32_t>> holders;
    index.LruHolders(tier, &holders);
    std::vector<std::pair<SessionId, int32_t>> expected_holders;
    for (const auto& [owner, records] : expected) {
      std::vector<int32_t> sub;
      for (int32_t r = index.LruOwnerHead(tier, owner); r >= 0; r = index.LruOwnerNext(r)) {
        sub.push_back(r);
      }
      EXPECT_EQ(sub, records) << "owner " << owner;
      EXPECT_EQ(index.LruOwnedBy(tier, owner), static_cast<int32_t>(records.size()));
      if (owner != 0) expected_holders.emplace_back(owner, static_cast<int32_t>(records.size()));
    }
    EXPECT_EQ(holders, expected_holders);
    if (!expected.contains(0)) {
      EXPECT_EQ(index.LruOwnerHead(tier, 0), -1);
      EXPECT_EQ(index.LruOwnedBy(tier, 0), 0);
    }
  }
}

TEST(BlockIndexTest, OwnerSubListsFollowTheLruListInOrder) {
  BlockIndex index(16, kBlockSize);
  const std::vector<int32_t> tokens = {1, 2};
  std::vector<int32_t> records;
  for (uint64_t i = 0; i < 6; ++i) {
    records.push_back(index.Insert(BlockHash{i + 1}, kRootParentHash, tokens, HashScope{},
                                   kRootLink, Tier::kHost, static_cast<int32_t>(i)));
  }
  // Owners 7, 0, 9, 7, 9, 7 on the host list, in that order.
  const SessionId owners[] = {7, 0, 9, 7, 9, 7};
  for (size_t i = 0; i < records.size(); ++i) {
    index.set_owner(records[i], owners[i]);
    index.LruPushBack(records[i]);
  }
  ExpectSubListsMatchTheList(index);
  EXPECT_EQ(index.LruOwnerHead(Tier::kHost, 0), records[1]);
  EXPECT_EQ(index.LruOwnedBy(Tier::kHost, 7), 3);

  // An owner change of a record on the list puts it in the new owner's sub-list at its
  // place in the LRU order (between 9's records 2 and 4).
  index.set_owner(records[3], 9);
  ExpectSubListsMatchTheList(index);
  index.set_owner(records[0], 9);  // before every record of 9
  index.set_owner(records[5], 0);  // after the unowned record 1
  ExpectSubListsMatchTheList(index);

  index.LruRemove(records[2]);
  index.Move(records[2], Tier::kDisk, -1);
  index.LruPushBack(records[2]);
  index.LruRemove(records[1]);
  index.Erase(records[1]);
  ExpectSubListsMatchTheList(index);
  EXPECT_EQ(index.LruOwnedBy(Tier::kDisk, 9), 1);
}

TEST(BlockIndexTest, RandomOperationsKeepOwnerSubListsExact) {
  constexpr int32_t kCapacity = 48;
  BlockIndex index(kCapacity, kBlockSize);
  std::mt19937_64 rng(20261206);
  const std::vector<int32_t> tokens = {3, 4};
  uint64_t next_hash = 1;
  std::vector<int32_t> live;
  auto pick = [&](std::vector<int32_t>& v) -> int32_t {
    return v[std::uniform_int_distribution<size_t>(0, v.size() - 1)(rng)];
  };
  for (int op = 0; op < 4000; ++op) {
    const int kind = std::uniform_int_distribution<int>(0, 5)(rng);
    if (kind == 0 || live.empty()) {
      if (index.size() >= kCapacity) continue;
      const Tier tier = kLowerTiers[rng() % 2];
      live.push_back(index.Insert(BlockHash{next_hash++}, kRootParentHash, tokens, HashScope{},
                                  kRootLink, tier, -1));
      continue;
    }
    const int32_t r = pick(live);
    switch (kind) {
      case 1:  // onto or off its tier's list
        if (index.on_lru(r)) {
          index.LruRemove(r);
        } else {
          index.LruPushBack(r);
        }
        break;
      case 2:  // a new owner, on the list or not (0 included)
      case 3:
        index.set_owner(r, rng() % 5);
        break;
      case 4:  // to the other lower tier
        if (index.on_lru(r)) index.LruRemove(r);
        index.Move(r, index.tier(r) == Tier::kHost ? Tier::kDisk : Tier::kHost, -1);
        break;
      case 5:  // dropped
        if (index.on_lru(r)) index.LruRemove(r);
        index.Erase(r);
        std::erase(live, r);
        break;
    }
    ExpectSubListsMatchTheList(index);
    if (HasFatalFailure() || HasFailure()) FAIL() << "after operation " << op;
  }
}

}  // namespace
}  // namespace kvkeep
