// BlockPool's tiers: demotion (device -> host -> disk -> dropped), promotion (host ->
// device, disk -> host), the transfer plan and start-up adoption of disk blocks.
#include <algorithm>

#include "cache/block_pool.h"
#include "cache/cache_check.h"

namespace kvkeep {

void BlockPool::DemoteFromDevice(int32_t record) {
  const bool room = MakeTenantRoom(index_.scope(record).tenant_salt, Tier::kHost);
  const int32_t host_slot = room ? AcquireHostSlot() : -1;
  if (host_slot < 0) {
    index_.Erase(record);  // no host tier (or no room): dropped, as before tiers
    ++num_dropped_;
    return;
  }
  plan_.ops.push_back({BlockTransfer::Kind::kSwapOut, index_.location(record), host_slot, {}, -1});
  index_.Move(record, Tier::kHost, host_slot);
  host_pending_.push_back(record);  // evictable from the host once the swap-out has run
  ++num_demotions_;
}

int32_t BlockPool::AcquireHostSlot() {
  if (num_host_blocks_ == 0) return -1;
  // Every evictable host block busy with pending transfers: no slot this plan.
  if (host_free_.empty() && !ReclaimLowerTier(Tier::kHost)) return -1;
  if (host_free_.empty()) return -1;
  const int32_t slot = host_free_.back();
  host_free_.pop_back();
  return slot;
}

bool BlockPool::ReclaimLowerTier(Tier tier) {
  const int32_t head = index_.LruHead(tier);
  if (head < 0) return false;
  // A block no session owns goes first, least recently used first: it is nobody's
  // retained context. (The index threads the list per owner: no walk finds them.)
  if (const int32_t unowned = index_.LruOwnerHead(tier, 0); unowned >= 0) {
    EvictFromLowerTier(unowned);
    return true;
  }
  if (chooser_ != nullptr) {
    std::vector<std::pair<SessionId, int32_t>> owned;
    index_.LruHolders(tier, &owned);
    std::vector<TierHolder> holders;
    holders.reserve(owned.size());
    for (const auto& [session, blocks] : owned) holders.push_back({session, blocks});
    std::vector<SessionId> victims;
    chooser_->ChooseTierVictims({tier, 1, 0}, holders, &victims);
    for (SessionId victim : victims) {
      // The whole session leaves the tier together (collected first: eviction edits the
      // list).
      std::vector<int32_t> records;
      for (int32_t r = index_.LruOwnerHead(tier, victim); r >= 0; r = index_.LruOwnerNext(r)) {
        records.push_back(r);
      }
      if (records.empty()) continue;  // not a holder
      for (int32_t r : records) EvictFromLowerTier(r);
      return true;
    }
  }
  EvictFromLowerTier(head);  // no chooser, or every holder is running
  return true;
}

int32_t BlockPool::TenantBlocks(uint64_t tenant, Tier tier) const {
  const auto it = index_.tenant_counts().find(tenant);
  return it == index_.tenant_counts().end() ? 0 : it->second[static_cast<int>(tier)];
}

bool BlockPool::MakeTenantRoom(uint64_t tenant, Tier tier) {
  const int32_t cap = tier == Tier::kHost ? max_host_per_tenant_ : max_disk_per_tenant_;
  if (cap <= 0) return true;
  while (TenantBlocks(tenant, tier) >= cap) {
    // Its least recently used evictable block there. O(the tier's LRU list), only for a
    // tenant at its cap; blocks busy with pending transfers are not on the list.
    int32_t r = index_.LruHead(tier);
    while (r >= 0 && index_.scope(r).tenant_salt != tenant) r = index_.LruNext(r);
    if (r < 0) return false;
    EvictFromLowerTier(r);
  }
  return true;
}

void BlockPool::EvictFromLowerTier(int32_t record) {
  if (index_.tier(record) == Tier::kHost) {
    index_.LruRemove(record);
    DemoteToDisk(record);
  } else {
    DropRecord(record);
  }
}

void BlockPool::SetOwner(const BlockTable& table, SessionId session) {
  for (int32_t b : table.block_ids()) {
    if (meta_[b].record >= 0) index_.set_owner(meta_[b].record, session);
  }
}

void BlockPool::DemoteToDisk(int32_t record) {
  const int32_t host_slot = index_.location(record);
  const bool disk =
      num_disk_blocks_ > 0 && MakeTenantRoom(index_.scope(record).tenant_salt, Tier::kDisk);
  if (disk && index_.num_on_tier(Tier::kDisk) >= num_disk_blocks_) {
    ReclaimLowerTier(Tier::kDisk);
  }
  if (disk && index_.num_on_tier(Tier::kDisk) < num_disk_blocks_) {
    // The write reads host_slot before any swap-out of this plan overwrites it.
    const std::span<const int32_t> tokens = index_.tokens(record);
    plan_.ops.push_back({BlockTransfer::Kind::kDiskWrite, -1, host_slot, index_.hash(record),
                         static_cast<int32_t>(plan_.disk_writes.size())});
    plan_.disk_writes.push_back({host_slot,
                                 index_.hash(record),
                                 index_.parent_hash(record),
                                 index_.scope(record),
                                 {tokens.begin(), tokens.end()}});
    index_.Move(record, Tier::kDisk, -1);
    index_.LruPushBack(record);
    ++num_demotions_;
  } else {
    index_.Erase(record);
    ++num_dropped_;
  }
  host_free_.push_back(host_slot);  // reused at once: the write snapshot runs first
}

void BlockPool::LeaveLowerTier(int32_t record) {
  if (index_.on_lru(record)) index_.LruRemove(record);
  if (index_.tier(record) == Tier::kHost) {
    host_deferred_.push_back(index_.location(record));  // a pending transfer may read it
    loading_[record] = 0;
  } else if (index_.tier(record) == Tier::kDisk) {
    plan_.ops.push_back({BlockTransfer::Kind::kDiskDrop, -1, -1, index_.hash(record), -1});
  }
}

void BlockPool::DropRecord(int32_t record) {
  KVKEEP_CACHE_CHECK(index_.tier(record) != Tier::kDevice, "drop of device record {}", record);
  LeaveLowerTier(record);
  index_.Erase(record);
  ++num_dropped_;
}

int32_t BlockPool::PromoteToDevice(int32_t record) {
  const int32_t host_slot = index_.location(record);
  LeaveLowerTier(record);  // before TakeOne, which may demote into the host tier
  const int32_t block = TakeOne();
  index_.Move(record, Tier::kDevice, block);
  meta_[block].record = record;
  plan_.ops.push_back({BlockTransfer::Kind::kSwapIn, block, host_slot, index_.hash(record), -1});
  ++num_promotions_;
  return block;
}

int32_t BlockPool::PlanDiskLoads(std::span<const int32_t> tokens, HashScope scope) {
  int32_t planned = 0;
  ForEachVerifiedPrefixRecord(tokens, scope, [&](int32_t r, BlockHash hash) {
    if (index_.tier(r) != Tier::kDisk) return true;
    index_.LruRemove(r);  // not evictable while we look for a host slot
    const int32_t host_slot = AcquireHostSlot();
    if (host_slot < 0) {
      index_.LruPushBack(r);
      return false;
    }
    index_.Move(r, Tier::kHost, host_slot);
    loading_[r] = 1;
    plan_.ops.push_back({BlockTransfer::Kind::kDiskRead, -1, host_slot, hash, -1});
    ++planned;
    return true;
  });
  return planned;
}

int32_t BlockPool::CountLoadingPrefix(std::span<const int32_t> tokens, HashScope scope) const {
  int32_t loading = 0;
  ForEachVerifiedPrefixRecord(tokens, scope, [&](int32_t r, BlockHash) {
    loading += loading_[r];
    return true;
  });
  return loading;
}

void BlockPool::FinishDiskRead(BlockHash hash, bool ok) {
  const int32_t r = index_.Owner(hash);
  if (r < 0 || !loading_[r]) return;
  loading_[r] = 0;
  // The file is deleted either way: the block now lives on the host (a later demotion
  // writes it again), or its file was bad.
  plan_.ops.push_back({BlockTransfer::Kind::kDiskDrop, -1, -1, hash, -1});
  if (ok) {
    index_.LruPushBack(r);
    ++num_promotions_;
    return;
  }
  host_free_.push_back(index_.location(r));  // the read that targeted it is over
  index_.Erase(r);
  ++num_dropped_;
}

bool BlockPool::AdoptDiskBlock(BlockHash hash, BlockHash parent_hash,
                               std::span<const int32_t> tokens, HashScope scope) {
  if (!prefix_caching_ || index_.num_on_tier(Tier::kDisk) >= num_disk_blocks_ ||
      static_cast<int32_t>(tokens.size()) != block_size_ || index_.Owner(hash) >= 0) {
    return false;
  }
  RecordLink parent = kRootLink;
  if (parent_hash != kRootParentHash) {
    const int32_t p = index_.Owner(parent_hash);
    if (p < 0) return false;
    parent = index_.LinkOf(p);
  }
  if (hash_fn_(parent_hash, tokens, scope) != hash) return false;  // header does not name it
  const int32_t r = index_.Insert(hash, parent_hash, tokens, scope, parent, Tier::kDisk, -1);
  index_.LruPushBack(r);
  return true;
}

void BlockPool::FinishTransfers() {
  for (int32_t slot : host_deferred_) host_free_.push_back(slot);
  host_deferred_.clear();
  for (int32_t r : host_pending_) {
    // Still the host block this plan swapped out (not promoted or re-adopted since).
    if (index_.live(r) && index_.tier(r) == Tier::kHost && !index_.on_lru(r) && !loading_[r]) {
      index_.LruPushBack(r);
    }
  }
  host_pending_.clear();
  plan_.ops.clear();
  plan_.disk_writes.clear();
}

bool BlockPool::TEST_Locate(BlockHash hash, Tier* tier, int32_t* location) const {
  const int32_t r = index_.Owner(hash);
  if (r < 0) return false;
  *tier = index_.tier(r);
  *location = index_.location(r);
  return true;
}

}  // namespace kvkeep
