#include "cache/block_index.h"

#include <algorithm>

#include "cache/cache_check.h"

namespace kvkeep {

BlockIndex::BlockIndex(int32_t capacity, int32_t block_size)
    : block_size_(block_size),
      records_(std::max(capacity, 0)),
      tokens_(static_cast<size_t>(std::max(capacity, 0)) * std::max(block_size, 0)),
      owners_(std::max(capacity, 0)) {
  KVKEEP_CACHE_CHECK(capacity > 0 && block_size > 0, "capacity {} block_size {}", capacity,
                     block_size);
  free_ids_.reserve(capacity);
  for (int32_t r = capacity - 1; r >= 0; --r) free_ids_.push_back(r);
}

std::span<const int32_t> BlockIndex::tokens(int32_t record) const {
  return std::span<const int32_t>(tokens_).subspan(static_cast<size_t>(record) * block_size_,
                                                   block_size_);
}

bool BlockIndex::IsLive(RecordLink link) const {
  if (link == kRootLink) return true;
  if (link.record < 0) return false;
  const Record& r = records_[link.record];
  return r.live && r.generation == link.generation;
}

bool BlockIndex::SameContent(int32_t record, std::span<const int32_t> tokens, HashScope scope,
                             RecordLink parent) const {
  const Record& r = records_[record];
  return r.live && r.scope == scope && r.parent == parent &&
         std::ranges::equal(this->tokens(record), tokens);
}

int32_t BlockIndex::LookupVerified(BlockHash hash, std::span<const int32_t> tokens, HashScope scope,
                                   RecordLink parent) const {
  const int32_t r = owners_.Find(hash);
  if (r < 0 || !SameContent(r, tokens, scope, parent)) return -1;
  return r;
}

int32_t BlockIndex::Insert(BlockHash hash, BlockHash parent_hash, std::span<const int32_t> tokens,
                           HashScope scope, RecordLink parent, Tier tier, int32_t location) {
  KVKEEP_CACHE_CHECK(!free_ids_.empty() && owners_.Find(hash) < 0 &&
                         static_cast<int32_t>(tokens.size()) == block_size_,
                     "insert of hash {:x} ({} free ids, {} tokens)", hash.value, free_ids_.size(),
                     tokens.size());
  const int32_t id = free_ids_.back();
  free_ids_.pop_back();
  Record& r = records_[id];
  r.hash = hash;
  r.parent_hash = parent_hash;
  r.scope = scope;
  r.parent = parent;
  r.tier = tier;
  r.location = location;
  r.live = true;
  r.owner = 0;
  std::ranges::copy(tokens, tokens_.begin() + static_cast<ptrdiff_t>(id) * block_size_);
  owners_.Insert(hash, id);
  ++on_tier_[static_cast<int>(tier)];
  CountTenant(scope.tenant_salt, tier, +1);
  return id;
}

void BlockIndex::CountTenant(uint64_t tenant, Tier tier, int32_t delta) {
  auto& counts = tenant_on_tier_[tenant];
  counts[static_cast<int>(tier)] += delta;
  if (counts == std::array<int32_t, kNumTiers>{}) tenant_on_tier_.erase(tenant);
}

void BlockIndex::Erase(int32_t record) {
  Record& r = records_[record];
  KVKEEP_CACHE_CHECK(r.live && !r.on_lru, "erase of record {} (live {}, on lru {})", record, r.live,
                     r.on_lru);
  owners_.Erase(r.hash);
  --on_tier_[static_cast<int>(r.tier)];
  CountTenant(r.scope.tenant_salt, r.tier, -1);
  r.live = false;
  r.location = -1;
  ++r.generation;
  free_ids_.push_back(record);
}

void BlockIndex::Move(int32_t record, Tier tier, int32_t location) {
  Record& r = records_[record];
  KVKEEP_CACHE_CHECK(r.live && !r.on_lru, "move of record {}", record);
  --on_tier_[static_cast<int>(r.tier)];
  ++on_tier_[static_cast<int>(tier)];
  CountTenant(r.scope.tenant_salt, r.tier, -1);
  CountTenant(r.scope.tenant_salt, tier, +1);
  r.tier = tier;
  r.location = location;
}

void BlockIndex::set_owner(int32_t record, SessionId session) {
  Record& r = records_[record];
  if (!r.on_lru || r.owner == session) {
    r.owner = session;
    return;
  }
  // Into the new owner's list after its last record before this one on the LRU list.
  OwnerUnlink(record);
  r.owner = session;
  int32_t after = r.lru_prev;
  while (after >= 0 && records_[after].owner != session) after = records_[after].lru_prev;
  OwnerLink(record, after);
}

void BlockIndex::OwnerLink(int32_t record, int32_t after) {
  Record& r = records_[record];
  OwnerList& list = lru_owned_[static_cast<int>(r.tier)][r.owner];
  r.owner_prev = after;
  r.owner_next = after >= 0 ? records_[after].owner_next : list.head;
  (after >= 0 ? records_[after].owner_next : list.head) = record;
  (r.owner_next >= 0 ? records_[r.owner_next].owner_prev : list.tail) = record;
  ++list.size;
}

void BlockIndex::OwnerUnlink(int32_t record) {
  Record& r = records_[record];
  auto& lists = lru_owned_[static_cast<int>(r.tier)];
  const auto it = lists.find(r.owner);
  OwnerList& list = it->second;
  (r.owner_prev >= 0 ? records_[r.owner_prev].owner_next : list.head) = r.owner_next;
  (r.owner_next >= 0 ? records_[r.owner_next].owner_prev : list.tail) = r.owner_prev;
  r.owner_prev = r.owner_next = -1;
  if (--list.size == 0) lists.erase(it);
}

int32_t BlockIndex::LruOwnedBy(Tier tier, SessionId owner) const {
  const auto& lists = lru_owned_[static_cast<int>(tier)];
  const auto it = lists.find(owner);
  return it == lists.end() ? 0 : it->second.size;
}

int32_t BlockIndex::LruOwnerHead(Tier tier, SessionId owner) const {
  const auto& lists = lru_owned_[static_cast<int>(tier)];
  const auto it = lists.find(owner);
  return it == lists.end() ? -1 : it->second.head;
}

void BlockIndex::LruHolders(Tier tier, std::vector<std::pair<SessionId, int32_t>>* holders) const {
  holders->clear();
  for (const auto& [owner, list] : lru_owned_[static_cast<int>(tier)]) {
    if (owner != 0) holders->emplace_back(owner, list.size);
  }
  std::sort(holders->begin(), holders->end());
}

void BlockIndex::LruPushBack(int32_t record) {
  Record& r = records_[record];
  KVKEEP_CACHE_CHECK(r.live && !r.on_lru, "lru push of record {}", record);
  const int t = static_cast<int>(r.tier);
  r.on_lru = true;
  r.lru_prev = lru_tail_[t];
  r.lru_next = -1;
  (lru_tail_[t] >= 0 ? records_[lru_tail_[t]].lru_next : lru_head_[t]) = record;
  lru_tail_[t] = record;
  ++lru_size_[t];
  OwnerLink(record, lru_owned_[t][r.owner].tail);  // the newest: the owner's last
}

void BlockIndex::LruRemove(int32_t record) {
  Record& r = records_[record];
  KVKEEP_CACHE_CHECK(r.on_lru, "lru remove of record {}", record);
  OwnerUnlink(record);
  const int t = static_cast<int>(r.tier);
  (r.lru_prev >= 0 ? records_[r.lru_prev].lru_next : lru_head_[t]) = r.lru_next;
  (r.lru_next >= 0 ? records_[r.lru_next].lru_prev : lru_tail_[t]) = r.lru_prev;
  r.lru_prev = r.lru_next = -1;
  r.on_lru = false;
  --lru_size_[t];
}

Status BlockIndex::CheckInvariants() const {
  auto fail = [](const std::string& what) { return Status::Internal("BlockIndex: " + what); };
  int32_t live = 0;
  int32_t per_tier[kNumTiers] = {0, 0, 0};
  TenantTierCounts per_tenant;
  for (int32_t id = 0; id < capacity(); ++id) {
    const Record& r = records_[id];
    if (!r.live) {
      if (r.on_lru) return fail("dead record " + std::to_string(id) + " on an LRU list");
      continue;
    }
    ++live;
    ++per_tier[static_cast<int>(r.tier)];
    ++per_tenant[r.scope.tenant_salt][static_cast<int>(r.tier)];
    if (owners_.Find(r.hash) != id)
      return fail("record " + std::to_string(id) + " not its hash's owner");
  }
  if (live != owners_.size()) return fail("hash map size disagrees with live records");
  if (per_tenant != tenant_on_tier_) return fail("per-tenant counts disagree");
  if (live + static_cast<int32_t>(free_ids_.size()) != capacity()) return fail("records leaked");
  for (int t = 0; t < kNumTiers; ++t) {
    if (per_tier[t] != on_tier_[t]) return fail("per-tier counts disagree");
    std::unordered_map<SessionId, std::vector<int32_t>> owned;  // owner -> records in order
    int32_t n = 0;
    for (int32_t id = lru_head_[t], prev = -1; id >= 0; prev = id, id = records_[id].lru_next) {
      const Record& r = records_[id];
      if (!r.live || !r.on_lru || static_cast<int>(r.tier) != t || r.lru_prev != prev) {
        return fail("broken LRU list of tier " + std::to_string(t));
      }
      if (r.lru_next < 0 && lru_tail_[t] != id) return fail("LRU tail mismatch");
      if (++n > capacity()) return fail("LRU cycle");
      owned[r.owner].push_back(id);
    }
    if (n != lru_size_[t]) return fail("LRU size disagrees");
    if (owned.size() != lru_owned_[t].size()) return fail("per-owner LRU lists disagree");
    for (const auto& [owner, list] : lru_owned_[t]) {
      std::vector<int32_t> walked;
      for (int32_t id = list.head, prev = -1; id >= 0; prev = id, id = records_[id].owner_next) {
        if (records_[id].owner_prev != prev || walked.size() > owned[owner].size()) break;
        walked.push_back(id);
      }
      if (walked != owned[owner] || list.size != static_cast<int32_t>(walked.size()) ||
          (walked.empty() ? -1 : walked.back()) != list.tail) {
        return fail("the LRU sub-list of owner " + std::to_string(owner) + " disagrees");
      }
    }
  }
  for (int32_t id : free_ids_) {
    if (id < 0 || id >= capacity() || records_[id].live) return fail("bad free record id");
  }
  return Status::OK();
}

}  // namespace kvkeep
