#include "cache/block_pool.h"

#include <algorithm>
#include <string>

#include "cache/cache_check.h"

namespace kvkeep {
namespace {

BlockHash RealHashBlock(BlockHash parent, std::span<const int32_t> tokens, HashScope scope) {
  return HashBlock(parent, tokens, scope);
}

}  // namespace

BlockPool::BlockPool(const BlockPoolOptions& options)
    : num_blocks_(options.num_blocks),
      block_size_(options.block_size),
      prefix_caching_(options.enable_prefix_caching),
      num_host_blocks_(std::max(options.num_host_blocks, 0)),
      num_disk_blocks_(options.num_host_blocks > 0 ? std::max(options.num_disk_blocks, 0) : 0),
      max_host_per_tenant_(std::max(options.max_host_blocks_per_tenant, 0)),
      max_disk_per_tenant_(std::max(options.max_disk_blocks_per_tenant, 0)),
      meta_(std::max(options.num_blocks, 0)),
      index_(std::max(options.num_blocks, 1) + num_host_blocks_ + num_disk_blocks_,
             std::max(options.block_size, 1)),
      loading_(static_cast<size_t>(index_.capacity()), 0),
      hash_fn_(&RealHashBlock) {
  KVKEEP_CACHE_CHECK(num_blocks_ > 0 && block_size_ > 0, "num_blocks {} block_size {}", num_blocks_,
                     block_size_);
  free_list_.reserve(num_blocks_);
  for (int32_t b = num_blocks_ - 1; b >= 0; --b) free_list_.push_back(b);  // 0 goes first
  host_free_.reserve(num_host_blocks_);
  for (int32_t h = num_host_blocks_ - 1; h >= 0; --h) host_free_.push_back(h);
  host_deferred_.reserve(num_host_blocks_);
  host_pending_.reserve(num_host_blocks_);
}

int32_t BlockPool::num_allocatable() const {
  return static_cast<int32_t>(free_list_.size()) + num_cached_;
}

// ---- Raw blocks -------------------------------------------------------------------------

Result<std::vector<int32_t>> BlockPool::Allocate(int32_t n) {
  KVKEEP_CACHE_CHECK(n >= 0, "n {}", n);
  if (n > num_allocatable()) {
    return Status::ResourceExhausted("KV pool: need " + std::to_string(n) + " blocks, " +
                                     std::to_string(free_list_.size()) + " free + " +
                                     std::to_string(num_cached_) + " cached");
  }
  std::vector<int32_t> blocks(n);
  for (int32_t& b : blocks) b = TakeOne();
  return blocks;
}

int32_t BlockPool::TakeOne() {
  int32_t b;
  if (!free_list_.empty()) {
    b = free_list_.back();
    free_list_.pop_back();
  } else {
    b = lru_head_;  // least recently used cached block
    LruRemove(b);
    --num_cached_;
    const int32_t record = meta_[b].record;
    meta_[b].record = -1;
    ++num_evictions_;
    DemoteFromDevice(record);
  }
  Meta& m = meta_[b];
  m.ref_count = 1;
  m.state = State::kInUse;
  m.alias = kNoLink;
  ++num_in_use_;
  return b;
}

void BlockPool::Retain(int32_t block) {
  Meta& m = meta_[block];
  KVKEEP_CACHE_CHECK(m.state != State::kFree, "Retain of free block {}", block);
  if (m.state == State::kCached) {
    LruRemove(block);
    --num_cached_;
    ++num_in_use_;
    m.state = State::kInUse;
  }
  if (++m.ref_count == 2) ++num_shared_;
}

void BlockPool::Release(std::span<const int32_t> blocks) { ReleaseTo(blocks, false); }

void BlockPool::ReleaseTo(std::span<const int32_t> blocks, bool as_victim) {
  for (int32_t b : blocks) {
    Meta& m = meta_[b];
    KVKEEP_CACHE_CHECK(m.state == State::kInUse, "Release of block {} not in use", b);
    if (--m.ref_count == 1) --num_shared_;
    if (m.ref_count > 0) continue;
    --num_in_use_;
    // A victim is as old as the oldest cached block (the LRU list stays in tick order).
    m.last_use_tick = as_victim && lru_head_ >= 0 ? meta_[lru_head_].last_use_tick : ++tick_;
    if (m.record >= 0) {
      m.state = State::kCached;
      as_victim ? LruPushVictim(b) : LruPushBack(b);
      ++num_cached_;
    } else {
      m.state = State::kFree;
      free_list_.push_back(b);
    }
  }
}

void BlockPool::DropHash(int32_t block) {
  Meta& m = meta_[block];
  index_.Erase(m.record);
  m.record = -1;
  if (m.state == State::kCached) {
    LruRemove(block);
    --num_cached_;
    m.state = State::kFree;
    free_list_.push_back(block);
  }
}

void BlockPool::LruInsertAfter(int32_t prev, int32_t block) {
  Meta& m = meta_[block];
  m.lru_prev = prev;
  m.lru_next = prev >= 0 ? meta_[prev].lru_next : lru_head_;
  (prev >= 0 ? meta_[prev].lru_next : lru_head_) = block;
  (m.lru_next >= 0 ? meta_[m.lru_next].lru_prev : lru_tail_) = block;
}

void BlockPool::LruPushBack(int32_t block) { LruInsertAfter(lru_tail_, block); }

void BlockPool::LruPushVictim(int32_t block) {
  LruInsertAfter(lru_victims_tail_, block);
  meta_[block].lru_victim = true;
  lru_victims_tail_ = block;
}

void BlockPool::LruRemove(int32_t block) {
  Meta& m = meta_[block];
  if (block == lru_victims_tail_) {
    lru_victims_tail_ = m.lru_prev >= 0 && meta_[m.lru_prev].lru_victim ? m.lru_prev : -1;
  }
  m.lru_victim = false;
  (m.lru_prev >= 0 ? meta_[m.lru_prev].lru_next : lru_head_) = m.lru_next;
  (m.lru_next >= 0 ? meta_[m.lru_next].lru_prev : lru_tail_) = m.lru_prev;
  m.lru_prev = m.lru_next = -1;
}

// ---- Sequences --------------------------------------------------------------------------

Status BlockPool::PrepareAppend(BlockTable* table, int64_t num_new_tokens,
                                std::vector<BlockCopy>* copies) {
  KVKEEP_CACHE_CHECK(table->block_size() == block_size_ && num_new_tokens >= 0,
                     "block_size {} vs {}, num_new_tokens {}", table->block_size(), block_size_,
                     num_new_tokens);
  if (num_new_tokens == 0) return Status::OK();
  // Existing blocks this append writes into: [first, end).
  const int32_t first = table->num_full_blocks();
  const int32_t end =
      std::min(table->num_blocks(),
               BlockTable::NumBlocksForTokens(table->num_tokens() + num_new_tokens, block_size_));
  int32_t num_cow = 0;
  for (int32_t i = first; i < end; ++i) {
    const Meta& m = meta_[table->block_id(i)];
    if (m.ref_count > 1 || m.record >= 0) ++num_cow;
  }
  const int32_t num_new = table->NumNewBlocksFor(num_new_tokens);
  if (num_cow + num_new > num_allocatable()) {
    return Status::ResourceExhausted("KV pool: append needs " + std::to_string(num_cow + num_new) +
                                     " blocks, " + std::to_string(num_allocatable()) +
                                     " allocatable");
  }
  // Act. Every fresh block is taken before any old one is let go. Only the block at
  // index `first` can hold tokens (when it is partial): its pair keeps the table's
  // reference on the source until ReleaseCopySources. The others need no copy.
  const bool first_holds_tokens = table->num_tokens() % block_size_ != 0;
  const size_t first_copy = copies->size();
  for (int32_t i = first; i < end; ++i) {
    const int32_t old_block = table->block_id(i);
    Meta& m = meta_[old_block];
    if (m.ref_count > 1 || m.record >= 0) {
      const int32_t fresh = TakeOne();
      table->ReplaceBlock(i, fresh);
      copies->emplace_back(old_block, fresh);
    } else {
      m.alias = kNoLink;  // about to be overwritten
    }
  }
  for (int32_t i = 0; i < num_new; ++i) table->AppendBlock(TakeOne());
  size_t kept = first_copy;
  for (size_t c = first_copy; c < copies->size(); ++c) {
    const BlockCopy pair = (*copies)[c];
    if (first_holds_tokens && pair.second == table->block_id(first)) {
      (*copies)[kept++] = pair;
      ++num_cow_copies_;
    } else {
      Release(std::span<const int32_t>(&pair.first, 1));
    }
  }
  copies->resize(kept);
  return Status::OK();
}

void BlockPool::ReleaseCopySources(std::span<const BlockCopy> copies) {
  for (const BlockCopy& pair : copies) Release(std::span<const int32_t>(&pair.first, 1));
}

BlockTable BlockPool::Fork(const BlockTable& table) {
  BlockTable copy = table.Clone();
  for (int32_t b : copy.block_ids()) Retain(b);
  return copy;
}

void BlockPool::Free(BlockTable* table) {
  std::vector<int32_t> blocks = table->Clear();
  Release(blocks);
}

void BlockPool::FreeAsLeastRecentlyUsed(BlockTable* table) {
  std::vector<int32_t> blocks = table->Clear();  // tail first
  ReleaseTo(blocks, true);
}

// ---- Prefix cache -----------------------------------------------------------------------

RecordLink BlockPool::CanonicalOf(int32_t block) const {
  const Meta& m = meta_[block];
  if (m.record >= 0) return index_.LinkOf(m.record);
  return index_.IsLive(m.alias) ? m.alias : kNoLink;
}

BlockTable BlockPool::MatchPrefix(std::span<const int32_t> tokens, HashScope scope,
                                  TierCounts* from_tiers) {
  BlockTable table(block_size_, scope);
  TierCounts counts;
  if (prefix_caching_) {
    num_queried_ += static_cast<int64_t>(tokens.size() / block_size_);
    ForEachVerifiedPrefixRecord(tokens, scope, [&](int32_t r, BlockHash hash) {
      if (loading_[r]) return false;
      int32_t b;
      if (index_.tier(r) == Tier::kDevice) {
        b = index_.location(r);
        Retain(b);
        ++counts.device;
      } else if (index_.tier(r) == Tier::kHost && num_allocatable() > 0) {
        b = PromoteToDevice(r);
        ++counts.host;
      } else {
        return false;  // on disk (PlanDiskLoads brings it up), or no device slot left
      }
      table.AppendBlock(b);
      table.AppendHash(hash);
      return true;
    });
    table.AdvanceTokens(table.capacity_tokens());
    num_hit_blocks_ += table.num_blocks();
  }
  if (from_tiers != nullptr) *from_tiers = counts;
  return table;
}

TierCounts BlockPool::ProbePrefix(std::span<const int32_t> tokens, HashScope scope) const {
  TierCounts counts;
  ForEachVerifiedPrefixRecord(tokens, scope, [&](int32_t r, BlockHash) {
    if (loading_[r]) return false;
    switch (index_.tier(r)) {
      case Tier::kDevice:
        ++counts.device;
        break;
      case Tier::kHost:
        ++counts.host;
        break;
      case Tier::kDisk:
        ++counts.disk;
        break;
    }
    return true;
  });
  return counts;
}

BlockPool::MatchPlan BlockPool::PlanMatch(std::span<const int32_t> tokens, HashScope scope) const {
  // The same walk and stopping rules as MatchPrefix.
  MatchPlan plan;
  int32_t allocatable = num_allocatable();
  ForEachVerifiedPrefixRecord(tokens, scope, [&](int32_t r, BlockHash) {
    if (loading_[r]) return false;
    if (index_.tier(r) == Tier::kDevice) {
      ++plan.tiers.device;
      if (meta_[index_.location(r)].state == State::kCached) {
        ++plan.slots_taken;
        --allocatable;
      }
      return true;
    }
    if (index_.tier(r) == Tier::kHost && allocatable > 0) {
      ++plan.tiers.host;
      ++plan.slots_taken;
      --allocatable;
      return true;
    }
    return false;
  });
  return plan;
}

int32_t BlockPool::CountCachedPrefix(std::span<const int32_t> tokens, HashScope scope) const {
  // What MatchPrefix would take: it stops at the first loading or disk block.
  int32_t n = 0;
  ForEachVerifiedPrefixRecord(tokens, scope, [&](int32_t r, BlockHash) {
    if (loading_[r] || index_.tier(r) == Tier::kDisk) return false;
    ++n;
    return true;
  });
  return n;
}

void BlockPool::CommitFullBlocks(BlockTable* table, std::span<const int32_t> tokens) {
  if (!prefix_caching_) return;
  KVKEEP_CACHE_CHECK(static_cast<int64_t>(tokens.size()) >= table->num_tokens(),
                     "{} tokens for a table of {}", tokens.size(), table->num_tokens());
  for (int32_t i = table->num_hashed_blocks(); i < table->num_full_blocks(); ++i) {
    const auto chunk = tokens.subspan(static_cast<size_t>(i) * block_size_, block_size_);
    const BlockHash parent_hash = i == 0 ? kRootParentHash : table->block_hashes()[i - 1];
    const BlockHash hash = hash_fn_(parent_hash, chunk, table->scope());
    const RecordLink parent = i == 0 ? kRootLink : CanonicalOf(table->block_id(i - 1));
    CommitBlock(table->block_id(i), hash, parent_hash, chunk, table->scope(), parent);
    table->AppendHash(hash);
  }
}

void BlockPool::CommitBlock(int32_t block, BlockHash hash, BlockHash parent_hash,
                            std::span<const int32_t> tokens, HashScope scope, RecordLink parent) {
  Meta& m = meta_[block];
  if (m.record >= 0) {  // already registered (a prefix hit, or committed by a fork sibling)
    KVKEEP_CACHE_CHECK(index_.hash(m.record) == hash, "block {} rewritten while hashed", block);
    return;
  }
  m.alias = kNoLink;
  if (!index_.IsLive(parent)) return;  // its prefix cannot be verified: never shareable
  int32_t owner = index_.Owner(hash);
  if (owner >= 0 && !loading_[owner] && !index_.IsLive(index_.parent(owner))) {
    // Stale: its parent is gone, so it can never be matched again.
    if (index_.tier(owner) == Tier::kDevice) {
      DropHash(index_.location(owner));
    } else {
      DropRecord(owner);
    }
    owner = -1;
  }
  if (owner < 0) {
    m.record = index_.Insert(hash, parent_hash, tokens, scope, parent, Tier::kDevice, block);
    return;
  }
  if (!index_.SameContent(owner, tokens, scope, parent)) return;  // a collision: stay unhashed
  if (index_.tier(owner) != Tier::kDevice && !loading_[owner]) {
    // The same block sits on a lower tier: this freshly computed copy takes its record.
    LeaveLowerTier(owner);
    index_.Move(owner, Tier::kDevice, block);
    m.record = owner;
    ++num_promotions_;
    return;
  }
  // Another block owns the hash: keep that mapping, leave this block unhashed, and remember
  // the owner as its alias, so that the rest of this sequence still chains onto it.
  m.alias = index_.LinkOf(owner);
}

// ---- Accounting and tests ---------------------------------------------------------------

BlockPoolStats BlockPool::stats() const {
  BlockPoolStats s;
  s.num_total = num_blocks_;
  s.num_free = static_cast<int32_t>(free_list_.size());
  s.num_in_use = num_in_use_;
  s.num_cached = num_cached_;
  s.num_shared = num_shared_;
  s.num_evictions = num_evictions_;
  s.num_cow_copies = num_cow_copies_;
  s.num_hit_blocks = num_hit_blocks_;
  s.num_queried_blocks = num_queried_;
  s.host_total = num_host_blocks_;
  s.host_used = num_host_blocks_ - static_cast<int32_t>(host_free_.size());
  s.disk_total = num_disk_blocks_;
  s.disk_used = index_.num_on_tier(Tier::kDisk);
  s.num_demotions = num_demotions_;
  s.num_promotions = num_promotions_;
  s.num_dropped = num_dropped_;
  return s;
}

int64_t BlockPool::WastedSlots(std::span<const BlockTable* const> tables) const {
  std::vector<int32_t> filled(num_blocks_, -1);  // tokens held, max over holders
  for (const BlockTable* t : tables) {
    for (int32_t i = 0; i < t->num_blocks(); ++i) {
      const int64_t held =
          std::clamp<int64_t>(t->num_tokens() - int64_t{i} * block_size_, 0, block_size_);
      int32_t& f = filled[t->block_id(i)];
      f = std::max(f, static_cast<int32_t>(held));
    }
  }
  int64_t wasted = 0;
  for (int32_t f : filled) {
    if (f >= 0) wasted += block_size_ - f;
  }
  return wasted;
}

void BlockPool::TEST_SetHashFunction(BlockHashFn fn) {
  KVKEEP_CACHE_CHECK(index_.size() == 0, "hash function set with {} hashed blocks", index_.size());
  hash_fn_ = fn;
}

bool BlockPool::TEST_IsCached(int32_t block) const { return meta_[block].state == State::kCached; }
bool BlockPool::TEST_IsFree(int32_t block) const { return meta_[block].state == State::kFree; }

std::vector<int32_t> BlockPool::TEST_LruOrder() const {
  std::vector<int32_t> order;
  for (int32_t b = lru_head_; b >= 0; b = meta_[b].lru_next) order.push_back(b);
  return order;
}

Status BlockPool::TEST_CheckInvariants() const {
  auto fail = [](const std::string& what) { return Status::Internal("BlockPool: " + what); };
  std::vector<uint8_t> on_free(num_blocks_, 0), on_lru(num_blocks_, 0);
  for (int32_t b : free_list_) {
    if (b < 0 || b >= num_blocks_ || on_free[b]++) return fail("bad or repeated free id");
  }
  int32_t lru_count = 0;
  uint64_t last_tick = 0;
  int32_t last_victim = -1;
  for (int32_t b = lru_head_, prev = -1; b >= 0; prev = b, b = meta_[b].lru_next) {
    if (on_lru[b]++ || meta_[b].lru_prev != prev) return fail("broken LRU list");
    if (meta_[b].last_use_tick < last_tick) return fail("LRU out of tick order");
    last_tick = meta_[b].last_use_tick;
    if (meta_[b].lru_next < 0 && lru_tail_ != b) return fail("LRU tail mismatch");
    if (meta_[b].lru_victim && prev >= 0 && !meta_[prev].lru_victim) {
      return fail("a victim block after a non-victim on the LRU list");
    }
    if (meta_[b].lru_victim) last_victim = b;
    ++lru_count;
  }
  if (last_victim != lru_victims_tail_) return fail("victims' tail mismatch");
  int32_t in_use = 0, cached = 0, shared = 0;
  for (int32_t b = 0; b < num_blocks_; ++b) {
    const Meta& m = meta_[b];
    const std::string id = "block " + std::to_string(b);
    bool ok = false;
    switch (m.state) {
      case State::kFree:
        ok = m.ref_count == 0 && m.record < 0 && on_free[b] && !on_lru[b];
        break;
      case State::kInUse:
        ok = m.ref_count > 0 && !on_free[b] && !on_lru[b];
        ++in_use;
        break;
      case State::kCached:
        ok = m.ref_count == 0 && m.record >= 0 && !on_free[b] && on_lru[b];
        ++cached;
        break;
    }
    if (!ok) return fail(id + " is not in exactly one consistent state");
    if (m.ref_count > 1) ++shared;
    if (m.record >= 0 && (!index_.live(m.record) || index_.tier(m.record) != Tier::kDevice ||
                          index_.location(m.record) != b)) {
      return fail(id + " holds a record that is not located in it");
    }
  }
  RETURN_IF_ERROR(index_.CheckInvariants());
  // Every record is where it says: a device record in its slot, a host record in a host slot
  // no other record, free list or deferred list holds; disk within its bound.
  std::vector<uint8_t> host_seen(num_host_blocks_, 0);
  for (int32_t h : host_free_) {
    if (h < 0 || h >= num_host_blocks_ || host_seen[h]++) return fail("bad host free slot");
  }
  for (int32_t h : host_deferred_) {
    if (h < 0 || h >= num_host_blocks_ || host_seen[h]++) return fail("bad deferred host slot");
  }
  Status records_ok;
  int32_t host_records = 0;
  index_.ForEachLive([&](int32_t r) {
    if (!records_ok.ok()) return;
    const int32_t loc = index_.location(r);
    const std::string id = "record " + std::to_string(r);
    switch (index_.tier(r)) {
      case Tier::kDevice:
        if (loc < 0 || loc >= num_blocks_ || meta_[loc].record != r) {
          records_ok = fail(id + " on device is not in its slot");
        } else if (loading_[r] || index_.on_lru(r)) {
          records_ok = fail(id + " on device is loading or on a lower-tier LRU");
        }
        break;
      case Tier::kHost:
        ++host_records;
        if (loc < 0 || loc >= num_host_blocks_ || host_seen[loc]++) {
          records_ok = fail(id + " on host has a bad or shared slot");
        } else if (loading_[r] && index_.on_lru(r)) {
          records_ok = fail(id + " is loading but evictable");
        }
        break;
      case Tier::kDisk:
        if (!index_.on_lru(r) || loading_[r]) records_ok = fail(id + " on disk is off its LRU");
        break;
    }
  });
  RETURN_IF_ERROR(records_ok);
  if (static_cast<int32_t>(host_free_.size() + host_deferred_.size()) + host_records !=
      num_host_blocks_) {
    return fail("host slots leaked");
  }
  if (index_.num_on_tier(Tier::kDisk) > num_disk_blocks_) return fail("disk tier over its bound");
  if (in_use != num_in_use_ || cached != num_cached_ || cached != lru_count ||
      shared != num_shared_) {
    return fail("counters disagree with blocks");
  }
  if (static_cast<int32_t>(free_list_.size()) + in_use + cached != num_blocks_) {
    return fail("free + in use + cached != total");
  }
  return Status::OK();
}

}  // namespace kvkeep
