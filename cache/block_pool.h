// BlockPool: bookkeeping for one device's paged KV pool, as vLLM's block manager with
// automatic prefix caching. It owns block ids, reference counts, the free list, the LRU
// list of cached blocks and the hash -> block map. It never touches KV bytes: those live
// in engine/backend.h, and copy-on-write hands the Backend (src, dst) pairs to copy.
// docs/kv_cache.md has the state diagram.
//
// Block states (every block is in exactly one; TEST_CheckInvariants verifies it):
//   free    ref_count == 0, no hash, on the free list.
//   in use  ref_count > 0 (held by ref_count BlockTables); may hold a hash.
//   cached  ref_count == 0, holds a hash; evictable, on the LRU list (head = oldest).
//
//   Allocate: free -> in use, else cached (LRU head) -> in use, dropping its hash
//   Release to 0: in use -> cached (LRU tail) if hashed, else -> free
//   MatchPrefix / Retain / Fork: cached -> in use, or in use ref_count + 1
//
// Prefix caching: full blocks are registered under HashBlock(parent, tokens, scope)
// (cache/prefix_hash.h). At most one block owns a hash. A hit is verified before it is
// served: the block's stored tokens and scope must equal the request's, and its parent
// link (the block id + generation it was committed on top of) must be the block matched
// one step earlier. By induction a matched run holds exactly the KV of the request's
// prefix even if two prefixes collide in 64 bits. A block's generation changes whenever it
// loses its hash, so links to evicted blocks go dead instead of dangling.
//
// Nothing here allocates after construction except the std::vectors of BlockTables and
// results (amortised). All failing calls check first and change nothing.
//
// Thread-safety: none. Single-threaded: owned and called by the engine thread only.
#pragma once

#include <cstdint>
#include <span>
#include <utility>
#include <vector>

#include "base/status.h"
#include "cache/block_hash_map.h"
#include "cache/block_table.h"
#include "cache/prefix_hash.h"

namespace kvkeep {

struct BlockPoolOptions {
  int32_t num_blocks = 0;             // pool size; REQUIRES > 0
  int32_t block_size = 16;            // tokens per block; REQUIRES > 0
  bool enable_prefix_caching = true;  // false: the "none" policy, no KV reuse at all
};

struct BlockPoolStats {
  int32_t num_total = 0;           // == num_free + num_in_use + num_cached
  int32_t num_free = 0;            // free list
  int32_t num_in_use = 0;          // ref_count > 0
  int32_t num_cached = 0;          // ref_count == 0 with a hash (evictable)
  int32_t num_shared = 0;          // ref_count > 1 (subset of in use)
  int64_t num_evictions = 0;       // cumulative: cached blocks whose hash Allocate dropped
  int64_t num_cow_copies = 0;      // cumulative: copy-on-write copies planned
  int64_t num_hit_blocks = 0;      // cumulative: blocks returned by MatchPrefix
  int64_t num_queried_blocks = 0;  // cumulative: full blocks MatchPrefix looked up
};

// A whole-block copy the Backend must perform (Backend::CopyBlocks) before the next
// forward step writes into dst.
using BlockCopy = std::pair<int32_t, int32_t>;  // (src, dst)

class BlockPool {
 public:
  // Allocates all metadata once. REQUIRES: options.num_blocks > 0, options.block_size > 0.
  explicit BlockPool(const BlockPoolOptions& options);
  BlockPool(const BlockPool&) = delete;
  BlockPool& operator=(const BlockPool&) = delete;

  int32_t num_blocks() const { return num_blocks_; }
  int32_t block_size() const { return block_size_; }
  bool prefix_caching_enabled() const { return prefix_caching_; }
  // Blocks Allocate can hand out now: free + cached.
  int32_t num_allocatable() const;

  // --- Raw blocks ---------------------------------------------------------------------
  // n blocks with ref_count 1: free ones first, then the least recently used cached ones
  // (their hashes dropped). ResourceExhausted if fewer than n are allocatable; nothing
  // changes then. REQUIRES: n >= 0.
  Result<std::vector<int32_t>> Allocate(int32_t n);
  // ref_count + 1 (a cached block becomes in use). REQUIRES: block is in use or cached.
  void Retain(int32_t block);
  // ref_count - 1 each, in order; at 0 a hashed block becomes cached (most recently
  // used), an unhashed one free. REQUIRES: each block is in use.
  void Release(std::span<const int32_t> blocks);

  // --- Sequences ----------------------------------------------------------------------
  // Makes room for num_new_tokens more tokens at the end of *table, copy-on-write:
  //  - an existing block the append will write into (in practice the partial last block)
  //    that is shared (ref_count > 1) or hashed is swapped for a fresh block; if it holds
  //    tokens, (old, fresh) is appended to *copies and the pair keeps one reference on
  //    old, so old cannot be reused before it is copied;
  //  - then the missing blocks are appended.
  // The caller runs Backend::CopyBlocks(*copies) before the next forward step and then
  // ReleaseCopySources(*copies) (also when the step is abandoned). With sources held
  // until then, no block is both a source and a destination within one step.
  // Does not change num_tokens(): call table->AdvanceTokens once the KV is written.
  // ResourceExhausted if the pool cannot supply the blocks; then neither the pool,
  // *table nor *copies change.
  // REQUIRES: table->block_size() == block_size(), num_new_tokens >= 0.
  Status PrepareAppend(BlockTable* table, int64_t num_new_tokens, std::vector<BlockCopy>* copies);
  // Gives back the source references of copies planned by PrepareAppend, once
  // Backend::CopyBlocks has run (each source is released once per pair).
  void ReleaseCopySources(std::span<const BlockCopy> copies);

  // A new table with the same blocks, tokens, hashes and scope; each block gains a
  // reference. Both tables then share blocks copy-on-write.
  BlockTable Fork(const BlockTable& table);

  // Releases every block of *table (tail first) and empties it.
  void Free(BlockTable* table);

  // --- Prefix cache -------------------------------------------------------------------
  // The longest run of cached or in-use blocks holding tokens' leading full blocks under
  // scope, verified as described above, as a new table holding one reference on each
  // (cached ones move back to in use) with num_tokens() = matched blocks * block_size.
  // A trailing partial block is never matched. Callers that need logits for the last
  // prompt token pass the prompt minus its last token. Empty when caching is off.
  BlockTable MatchPrefix(std::span<const int32_t> tokens, HashScope scope);
  // How many leading full blocks MatchPrefix would return now, changing nothing.
  int32_t CountCachedPrefix(std::span<const int32_t> tokens, HashScope scope) const;

  // Registers *table's full blocks [num_hashed_blocks(), num_full_blocks()) in the prefix
  // cache under table->scope() and appends their hashes to the table. `tokens` is the
  // sequence's tokens, tokens[p] at position p. If another block already owns a hash, the
  // existing mapping is kept and this block stays unhashed (freed, not cached, on
  // release); later blocks of the table still chain onto it when its content is verified
  // equal to the owner's. Does nothing when caching is off.
  // REQUIRES: tokens.size() >= table->num_tokens(); the blocks' KV has been written.
  void CommitFullBlocks(BlockTable* table, std::span<const int32_t> tokens);

  // --- Accounting ---------------------------------------------------------------------
  BlockPoolStats stats() const;
  // Slots allocated to the given tables but not holding a token; a block shared by
  // several tables counts once, as filled as its fullest holder.
  int64_t WastedSlots(std::span<const BlockTable* const> tables) const;

  // --- Tests --------------------------------------------------------------------------
  // OK iff every block is in exactly one state, the free list, LRU list and hash map agree
  // with the per-block metadata and the counters; Internal naming the first violation.
  Status TEST_CheckInvariants() const;
  int32_t TEST_RefCount(int32_t block) const { return meta_[block].ref_count; }
  bool TEST_IsCached(int32_t block) const;
  bool TEST_IsFree(int32_t block) const;
  // Cached blocks from least to most recently used (the eviction order).
  std::vector<int32_t> TEST_LruOrder() const;
  // Replaces HashBlock (for the map and the tables' hashes) with a weak function, so
  // tests can force collisions and check that verification never serves a colliding
  // block. REQUIRES: no block is hashed yet.
  using BlockHashFn = BlockHash (*)(BlockHash parent, std::span<const int32_t> tokens,
                                    HashScope scope);
  void TEST_SetHashFunction(BlockHashFn fn);

 private:
  enum class State : uint8_t { kFree, kInUse, kCached };
  // A block instance: id + generation. kRootLink is the parent of a sequence's first
  // block; kNoLink matches nothing.
  struct Link {
    int32_t block;
    uint32_t generation;
    friend bool operator==(Link a, Link b) = default;
  };
  static constexpr Link kRootLink{-1, 0};
  static constexpr Link kNoLink{-2, 0};
  struct Meta {
    int32_t ref_count = 0;
    State state = State::kFree;
    bool is_hashed = false;
    uint32_t generation = 0;  // + 1 each time the block loses its hash
    BlockHash hash;           // valid iff is_hashed
    HashScope scope;          // valid iff is_hashed
    Link parent = kNoLink;    // valid iff is_hashed: the instance it was committed on top of
    Link alias = kNoLink;     // unhashed full block: the owner holding identical content
    uint64_t last_use_tick = 0;
    int32_t lru_prev = -1;
    int32_t lru_next = -1;
  };

  std::span<const int32_t> StoredTokens(int32_t block) const;
  bool IsLive(Link link) const;
  Link CanonicalOf(int32_t block) const;  // this instance, its live alias, or kNoLink
  int32_t LookupVerified(BlockHash hash, std::span<const int32_t> tokens, HashScope scope,
                         Link parent) const;
  void CommitBlock(int32_t block, BlockHash hash, std::span<const int32_t> tokens, HashScope scope,
                   Link parent);
  void DropHash(int32_t block);  // unhash; a cached block goes to the free list
  int32_t TakeOne();             // REQUIRES: num_allocatable() > 0
  void LruPushBack(int32_t block);
  void LruRemove(int32_t block);

  int32_t num_blocks_;
  int32_t block_size_;
  bool prefix_caching_;
  std::vector<Meta> meta_;
  std::vector<int32_t> tokens_;     // [num_blocks][block_size], valid iff hashed
  std::vector<int32_t> free_list_;  // stack; back is allocated next
  int32_t lru_head_ = -1, lru_tail_ = -1;
  int32_t num_cached_ = 0, num_in_use_ = 0, num_shared_ = 0;
  uint64_t tick_ = 0;
  int64_t num_evictions_ = 0, num_cow_copies_ = 0, num_hit_blocks_ = 0, num_queried_ = 0;
  BlockHashMap owners_;  // hash -> the one block owning it
  BlockHashFn hash_fn_;  // HashBlock, except in tests
};

}  // namespace kvkeep
