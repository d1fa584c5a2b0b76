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
      meta_(std::max(options.num_blocks, 0)),
      tokens_(static_cast<size_t>(std::max(options.num_blocks, 0)) *
              std::max(options.block_size, 0)),
      owners_(std::max(options.num_blocks, 0)),
      hash_fn_(&RealHashBlock) {
  KVKEEP_CACHE_CHECK(num_blocks_ > 0 && block_size_ > 0, "num_blocks {} block_size {}", num_blocks_,
                     block_size_);
  free_list_.reserve(num_blocks_);
  for (int32_t b = num_blocks_ - 1; b >= 0; --b) free_list_.push_back(b);  // 0 goes first
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
    meta_[b].is_hashed = false;  // DropHash without the free-list move
    owners_.Erase(meta_[b].hash);
    ++meta_[b].generation;
    ++num_evictions_;
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

void BlockPool::Release(std::span<const int32_t> blocks) {
  for (int32_t b : blocks) {
    Meta& m = meta_[b];
    KVKEEP_CACHE_CHECK(m.state == State::kInUse, "Release of block {} not in use", b);
    if (--m.ref_count == 1) --num_shared_;
    if (m.ref_count > 0) continue;
    --num_in_use_;
    m.last_use_tick = ++tick_;
    if (m.is_hashed) {
      m.state = State::kCached;
      LruPushBack(b);
      ++num_cached_;
    } else {
      m.state = State::kFree;
      free_list_.push_back(b);
    }
  }
}

void BlockPool::DropHash(int32_t block) {
  Meta& m = meta_[block];
  owners_.Erase(m.hash);
  m.is_hashed = false;
  ++m.generation;
  if (m.state == State::kCached) {
    LruRemove(block);
    --num_cached_;
    m.state = State::kFree;
    free_list_.push_back(block);
  }
}

void BlockPool::LruPushBack(int32_t block) {
  Meta& m = meta_[block];
  m.lru_prev = lru_tail_;
  m.lru_next = -1;
  (lru_tail_ >= 0 ? meta_[lru_tail_].lru_next : lru_head_) = block;
  lru_tail_ = block;
}

void BlockPool::LruRemove(int32_t block) {
  Meta& m = meta_[block];
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
    if (m.ref_count > 1 || m.is_hashed) ++num_cow;
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
    if (m.ref_count > 1 || m.is_hashed) {
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

// ---- Prefix cache -----------------------------------------------------------------------

std::span<const int32_t> BlockPool::StoredTokens(int32_t block) const {
  return std::span<const int32_t>(tokens_).subspan(static_cast<size_t>(block) * block_size_,
                                                   block_size_);
}

bool BlockPool::IsLive(Link link) const {
  if (link == kRootLink) return true;
  if (link.block < 0) return false;
  const Meta& m = meta_[link.block];
  return m.is_hashed && m.generation == link.generation;
}

BlockPool::Link BlockPool::CanonicalOf(int32_t block) const {
  const Meta& m = meta_[block];
  if (m.is_hashed) return Link{block, m.generation};
  return IsLive(m.alias) ? m.alias : kNoLink;
}

int32_t BlockPool::LookupVerified(BlockHash hash, std::span<const int32_t> tokens, HashScope scope,
                                  Link parent) const {
  const int32_t b = owners_.Find(hash);
  if (b < 0) return -1;
  const Meta& m = meta_[b];
  if (m.scope != scope || m.parent != parent) return -1;
  if (!std::ranges::equal(StoredTokens(b), tokens)) return -1;
  return b;
}

BlockTable BlockPool::MatchPrefix(std::span<const int32_t> tokens, HashScope scope) {
  BlockTable table(block_size_, scope);
  if (!prefix_caching_) return table;
  const size_t num_full = tokens.size() / block_size_;
  num_queried_ += static_cast<int64_t>(num_full);
  BlockHash parent_hash = kRootParentHash;
  Link parent = kRootLink;
  for (size_t i = 0; i < num_full; ++i) {
    const auto chunk = tokens.subspan(i * block_size_, block_size_);
    const BlockHash hash = hash_fn_(parent_hash, chunk, scope);
    const int32_t b = LookupVerified(hash, chunk, scope, parent);
    if (b < 0) break;
    Retain(b);
    table.AppendBlock(b);
    table.AppendHash(hash);
    parent_hash = hash;
    parent = Link{b, meta_[b].generation};
  }
  table.AdvanceTokens(table.capacity_tokens());
  num_hit_blocks_ += table.num_blocks();
  return table;
}

int32_t BlockPool::CountCachedPrefix(std::span<const int32_t> tokens, HashScope scope) const {
  if (!prefix_caching_) return 0;
  const size_t num_full = tokens.size() / block_size_;
  BlockHash parent_hash = kRootParentHash;
  Link parent = kRootLink;
  int32_t count = 0;
  for (size_t i = 0; i < num_full; ++i) {
    const auto chunk = tokens.subspan(i * block_size_, block_size_);
    const BlockHash hash = hash_fn_(parent_hash, chunk, scope);
    const int32_t b = LookupVerified(hash, chunk, scope, parent);
    if (b < 0) break;
    parent_hash = hash;
    parent = Link{b, meta_[b].generation};
    ++count;
  }
  return count;
}

void BlockPool::CommitFullBlocks(BlockTable* table, std::span<const int32_t> tokens) {
  if (!prefix_caching_) return;
  KVKEEP_CACHE_CHECK(static_cast<int64_t>(tokens.size()) >= table->num_tokens(),
                     "{} tokens for a table of {}", tokens.size(), table->num_tokens());
  for (int32_t i = table->num_hashed_blocks(); i < table->num_full_blocks(); ++i) {
    const auto chunk = tokens.subspan(static_cast<size_t>(i) * block_size_, block_size_);
    const BlockHash parent_hash = i == 0 ? kRootParentHash : table->block_hashes()[i - 1];
    const BlockHash hash = hash_fn_(parent_hash, chunk, table->scope());
    const Link parent = i == 0 ? kRootLink : CanonicalOf(table->block_id(i - 1));
    CommitBlock(table->block_id(i), hash, chunk, table->scope(), parent);
    table->AppendHash(hash);
  }
}

void BlockPool::CommitBlock(int32_t block, BlockHash hash, std::span<const int32_t> tokens,
                            HashScope scope, Link parent) {
  Meta& m = meta_[block];
  if (m.is_hashed) {  // already registered (a prefix hit, or committed by a fork sibling)
    KVKEEP_CACHE_CHECK(m.hash == hash, "block {} rewritten while hashed", block);
    return;
  }
  m.alias = kNoLink;
  if (!IsLive(parent)) return;  // its prefix cannot be verified: never shareable
  int32_t owner = owners_.Find(hash);
  if (owner >= 0 && !IsLive(meta_[owner].parent)) {
    DropHash(owner);  // stale: its parent is gone, so it can never be matched again
    owner = -1;
  }
  if (owner < 0) {
    m.is_hashed = true;
    m.hash = hash;
    m.scope = scope;
    m.parent = parent;
    std::ranges::copy(tokens, tokens_.begin() + static_cast<ptrdiff_t>(block) * block_size_);
    owners_.Insert(hash, block);
    return;
  }
  // Another block owns the hash: keep that mapping, leave this block unhashed, and remember
  // the owner as its alias if the content is verified identical, so that the rest of this
  // sequence still chains onto the shared prefix.
  const Meta& o = meta_[owner];
  if (o.scope == scope && o.parent == parent && std::ranges::equal(StoredTokens(owner), tokens)) {
    m.alias = Link{owner, o.generation};
  }
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
  KVKEEP_CACHE_CHECK(owners_.size() == 0, "hash function set with {} hashed blocks",
                     owners_.size());
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
  for (int32_t b = lru_head_, prev = -1; b >= 0; prev = b, b = meta_[b].lru_next) {
    if (on_lru[b]++ || meta_[b].lru_prev != prev) return fail("broken LRU list");
    if (meta_[b].last_use_tick < last_tick) return fail("LRU out of tick order");
    last_tick = meta_[b].last_use_tick;
    if (meta_[b].lru_next < 0 && lru_tail_ != b) return fail("LRU tail mismatch");
    ++lru_count;
  }
  int32_t in_use = 0, cached = 0, shared = 0, hashed = 0;
  for (int32_t b = 0; b < num_blocks_; ++b) {
    const Meta& m = meta_[b];
    const std::string id = "block " + std::to_string(b);
    bool ok = false;
    switch (m.state) {
      case State::kFree:
        ok = m.ref_count == 0 && !m.is_hashed && on_free[b] && !on_lru[b];
        break;
      case State::kInUse:
        ok = m.ref_count > 0 && !on_free[b] && !on_lru[b];
        ++in_use;
        break;
      case State::kCached:
        ok = m.ref_count == 0 && m.is_hashed && !on_free[b] && on_lru[b];
        ++cached;
        break;
    }
    if (!ok) return fail(id + " is not in exactly one consistent state");
    if (m.ref_count > 1) ++shared;
    if (m.is_hashed) {
      ++hashed;
      if (owners_.Find(m.hash) != b) return fail(id + " is hashed but not the hash's owner");
    }
  }
  bool map_ok = true;
  owners_.ForEach([&](BlockHash h, int32_t b) {
    map_ok = map_ok && b >= 0 && b < num_blocks_ && meta_[b].is_hashed && meta_[b].hash == h;
  });
  if (!map_ok || owners_.size() != hashed) return fail("hash map disagrees with blocks");
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
