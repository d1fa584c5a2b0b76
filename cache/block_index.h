// BlockIndex: the tier-neutral records of the prefix cache. A full KV block is named by
// its content hash and scope (cache/prefix_hash.h); its record holds the hash, the scope,
// the parent's record link and hash, the block's tokens, its tier (device, host, disk) and
// its location in that tier (a device slot, a host slot; -1 on disk, where files are named
// by hash). A record keeps its id and generation while its block moves between tiers, so
// parent links survive demotion and promotion; a device slot is a location, never the
// identity. At most one live record owns a hash.
//
// Verification (as cache/block_pool.h describes): a lookup hits only a live record whose
// scope, tokens and parent link equal the request's, so by induction a matched run holds
// exactly the request's prefix even when 64-bit hashes collide.
//
// The index also keeps one LRU list per lower tier (host, disk) of the records that may be
// evicted there, threaded a second time per owner (the same records in the same order), so
// the tiers' reclaim (BlockPool::ReclaimLowerTier) finds the unowned records, the holding
// sessions and one session's records without walking the whole list. BlockPool keeps the
// device tier's LRU over slots.
//
// Nothing allocates after construction except the per-tenant counts (an entry per tenant)
// and the per-owner list heads (one map entry per session holding evictable lower-tier
// records). Thread-safety: none (owned by BlockPool).
#pragma once

#include <array>
#include <cstdint>
#include <span>
#include <string>
#include <unordered_map>
#include <vector>

#include "base/status.h"
#include "cache/block_hash_map.h"
#include "cache/prefix_hash.h"
#include "policy/reclaim_policy.h"

namespace kvkeep {

// A record instance: id + generation. kRootLink is the parent of a sequence's first block;
// kNoLink matches nothing.
struct RecordLink {
  int32_t record;
  uint32_t generation;
  friend bool operator==(RecordLink a, RecordLink b) = default;
};
inline constexpr RecordLink kRootLink{-1, 0};
inline constexpr RecordLink kNoLink{-2, 0};

class BlockIndex {
 public:
  // Room for `capacity` live records of `block_size` tokens each.
  // REQUIRES: capacity > 0, block_size > 0.
  BlockIndex(int32_t capacity, int32_t block_size);
  BlockIndex(const BlockIndex&) = delete;
  BlockIndex& operator=(const BlockIndex&) = delete;

  int32_t capacity() const { return static_cast<int32_t>(records_.size()); }
  int32_t size() const { return owners_.size(); }
  int32_t num_on_tier(Tier tier) const { return on_tier_[static_cast<int>(tier)]; }
  // Live records per tenant (scope.tenant_salt) and tier, indexed by Tier; tenants with
  // none are absent. Kept by Insert, Erase and Move (the one map that may allocate after
  // construction: an entry per tenant holding blocks).
  using TenantTierCounts = std::unordered_map<uint64_t, std::array<int32_t, kNumTiers>>;
  const TenantTierCounts& tenant_counts() const { return tenant_on_tier_; }

  // The live record owning hash, or -1.
  int32_t Owner(BlockHash hash) const { return owners_.Find(hash); }
  // Owner(hash) if its scope, parent link and tokens equal these, else -1.
  int32_t LookupVerified(BlockHash hash, std::span<const int32_t> tokens, HashScope scope,
                         RecordLink parent) const;
  bool SameContent(int32_t record, std::span<const int32_t> tokens, HashScope scope,
                   RecordLink parent) const;

  // A new live record. REQUIRES: hash unowned, size() < capacity(), tokens.size() ==
  // block_size.
  int32_t Insert(BlockHash hash, BlockHash parent_hash, std::span<const int32_t> tokens,
                 HashScope scope, RecordLink parent, Tier tier, int32_t location);
  // Kills the record (its generation changes, so links to it go dead) and frees its id.
  // REQUIRES: live and not on an LRU list.
  void Erase(int32_t record);
  // Moves a live record to another tier/location. REQUIRES: not on an LRU list.
  void Move(int32_t record, Tier tier, int32_t location);

  bool IsLive(RecordLink link) const;
  RecordLink LinkOf(int32_t record) const { return {record, records_[record].generation}; }
  bool live(int32_t record) const { return records_[record].live; }
  BlockHash hash(int32_t record) const { return records_[record].hash; }
  BlockHash parent_hash(int32_t record) const { return records_[record].parent_hash; }
  HashScope scope(int32_t record) const { return records_[record].scope; }
  RecordLink parent(int32_t record) const { return records_[record].parent; }
  Tier tier(int32_t record) const { return records_[record].tier; }
  int32_t location(int32_t record) const { return records_[record].location; }
  std::span<const int32_t> tokens(int32_t record) const;
  // The session that last released the block (BlockPool::SetOwner); 0: none. Insert
  // clears it; tier moves keep it.
  SessionId owner(int32_t record) const { return records_[record].owner; }
  void set_owner(int32_t record, SessionId session);

  // Per-tier LRU lists of evictable records (host and disk; head = least recent).
  void LruPushBack(int32_t record);  // on its current tier's list
  void LruRemove(int32_t record);    // REQUIRES: on a list
  bool on_lru(int32_t record) const { return records_[record].on_lru; }
  int32_t LruHead(Tier tier) const { return lru_head_[static_cast<int>(tier)]; }
  int32_t LruNext(int32_t record) const { return records_[record].lru_next; }  // -1 at tail
  int32_t LruSize(Tier tier) const { return lru_size_[static_cast<int>(tier)]; }
  // The records of tier's LRU list whose owner is `owner` (0: unowned), in list order:
  // their number, the first (-1: none) and the next after `record` (-1 at the last).
  int32_t LruOwnedBy(Tier tier, SessionId owner) const;
  int32_t LruOwnerHead(Tier tier, SessionId owner) const;
  int32_t LruOwnerNext(int32_t record) const { return records_[record].owner_next; }
  // (owner, records) of every owner != 0 with records on tier's LRU list, by owner.
  void LruHolders(Tier tier, std::vector<std::pair<SessionId, int32_t>>* holders) const;

  // OK iff the hash map, free ids, per-tier counts and LRU lists agree with the records.
  Status CheckInvariants() const;
  template <typename Fn>
  void ForEachLive(Fn&& fn) const {
    for (int32_t r = 0; r < capacity(); ++r) {
      if (records_[r].live) fn(r);
    }
  }

 private:
  struct Record {
    BlockHash hash;
    BlockHash parent_hash;
    HashScope scope;
    RecordLink parent = kNoLink;
    SessionId owner = 0;
    uint32_t generation = 0;
    Tier tier = Tier::kDevice;
    int32_t location = -1;
    bool live = false;
    bool on_lru = false;
    int32_t lru_prev = -1, lru_next = -1;
    int32_t owner_prev = -1, owner_next = -1;  // the owner's sub-list of the LRU list
  };
  // One owner's records on one tier's LRU list.
  struct OwnerList {
    int32_t size = 0;
    int32_t head = -1, tail = -1;
  };

  // Links record (on_lru, owner set) into its owner's list after `after` (-1: at the head).
  void OwnerLink(int32_t record, int32_t after);
  void OwnerUnlink(int32_t record);

  int32_t block_size_;
  std::vector<Record> records_;
  std::vector<int32_t> tokens_;    // [capacity][block_size]
  std::vector<int32_t> free_ids_;  // stack
  BlockHashMap owners_;
  // Adds delta to tenant's count on tier (erasing the tenant at all zero).
  void CountTenant(uint64_t tenant, Tier tier, int32_t delta);
  int32_t on_tier_[kNumTiers] = {0, 0, 0};
  TenantTierCounts tenant_on_tier_;
  int32_t lru_head_[kNumTiers] = {-1, -1, -1};
  int32_t lru_tail_[kNumTiers] = {-1, -1, -1};
  int32_t lru_size_[kNumTiers] = {0, 0, 0};
  std::unordered_map<SessionId, OwnerList> lru_owned_[kNumTiers];  // no empty lists
};

}  // namespace kvkeep
