// BlockPool: bookkeeping for one device's paged KV pool and the tiers below it, as vLLM's
// block manager with automatic prefix caching plus demotion. It owns device block ids,
// reference counts, the free list, the LRU list of cached device blocks, the host tier's
// slots and the tier-neutral block index (cache/block_index.h) that names every cached
// block on every tier. It never touches KV bytes: those live in engine/backend.h; the
// pool hands out copy-on-write pairs and a TransferPlan of swaps and disk I/O to run.
// docs/kv_cache.md has the state diagram and a block's life across tiers.
//
// Block states (every block is in exactly one; TEST_CheckInvariants verifies it):
//   free    ref_count == 0, no hash, on the free list.
//   in use  ref_count > 0 (held by ref_count BlockTables); may hold a hash.
//   cached  ref_count == 0, holds a hash; evictable, on the LRU list (head = oldest).
//
//   Allocate: free -> in use, else cached (LRU head) -> in use; the cached block's record
//             is demoted to the host tier (a swap-out is planned) or, without room
//             there, dropped
//   Release to 0: in use -> cached (LRU tail) if hashed, else -> free;
//                 FreeAsLeastRecentlyUsed's cached blocks go after the other victims' at
//                 the LRU head instead
//   MatchPrefix / Retain / Fork: cached -> in use, or in use ref_count + 1
//
// Prefix caching: full blocks are registered under HashBlock(parent, tokens, scope)
// (cache/prefix_hash.h) as records of the BlockIndex. At most one record owns a hash. A
// hit is verified before it is served: the record's tokens and scope must equal the
// request's, and its parent link (the record id + generation it was committed on top of)
// must be the record matched one step earlier. By induction a matched run holds exactly
// the KV of the request's prefix even if two prefixes collide in 64 bits. A record's
// generation changes when it is dropped, so links to dropped blocks go dead instead of
// dangling; demotion and promotion keep the record, so links survive tier moves.
//
// Tiers (num_host_blocks > 0, and num_disk_blocks > 0 with a host tier):
//   device cached --Allocate needs the slot--> host (swap-out device slot -> host slot)
//   host victim   --host needs a slot-->       disk (write the host slot to a file)
//   disk victim   --disk full-->               dropped (delete the file)
// A tenant at its per-tier cap (max_host_blocks_per_tenant, max_disk_blocks_per_tenant)
// first moves its own least recently used evictable block on that tier down, so one
// tenant's load reclaims only its own lower-tier blocks while the caps fit the tiers.
// The lower tiers reclaim by session (ReclaimLowerTier): a block without an owner (no
// session released it, or SetOwner was never called) goes first, least recently used
// first; then the TierVictimChooser names a victim session and all of that session's
// evictable blocks on the tier move down (host) or are dropped (disk) together. Without a
// chooser, or when it names nobody (every holder is running), the tier's LRU head goes.
//   MatchPrefix: a host record is promoted into a fresh device slot (swap-in host slot ->
//     device slot); a disk record ends the match: PlanDiskLoads reads it into a host slot
//     on the disk worker, and FinishDiskRead makes it matchable.
// The transfers accumulate in transfers() and the caller runs them, in plan order, before
// the next forward step, then calls FinishTransfers(). Until then no host slot a pending
// swap-in reads is reused, and no record demoted by a pending swap-out is evicted further.
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
#include "cache/block_index.h"
#include "cache/block_table.h"
#include "cache/prefix_hash.h"

namespace kvkeep {

struct BlockPoolOptions {
  int32_t num_blocks = 0;             // device pool size; REQUIRES > 0
  int32_t block_size = 16;            // tokens per block; REQUIRES > 0
  bool enable_prefix_caching = true;  // false: the "none" policy, no KV reuse at all
  int32_t num_host_blocks = 0;        // host tier slots; 0: no host tier
  int32_t num_disk_blocks = 0;        // disk tier blocks; used only with a host tier
  // Full blocks one tenant (scope.tenant_salt) may keep on the host / disk tier; 0: no cap.
  // A tenant at its cap makes room from its own least recently used blocks there (host:
  // pushed down to disk; disk: dropped), never another tenant's; a block of its that no
  // room can be made for goes one tier further down (or is dropped).
  int32_t max_host_blocks_per_tenant = 0;
  int32_t max_disk_blocks_per_tenant = 0;
};

// Blocks of a matched prefix per tier they were found on.
struct TierCounts {
  int32_t device = 0;
  int32_t host = 0;
  int32_t disk = 0;
  int32_t total() const { return device + host + disk; }
};

// A block demoted from the host tier to disk: the bytes of host_slot go to a file named by
// hash, with the header fields a restart needs to rebuild the record.
struct DiskWrite {
  int32_t host_slot = -1;
  BlockHash hash;
  BlockHash parent_hash;
  HashScope scope;
  std::vector<int32_t> tokens;
};

// One planned transfer. Plans run strictly in order (consecutive ops of one kind may be
// batched): a later op may reuse a slot an earlier one vacated.
struct BlockTransfer {
  enum class Kind : uint8_t {
    kDiskWrite,  // copy host_slot's bytes out now, write them as disk_writes[write] later
    kSwapOut,    // device_block -> host_slot
    kSwapIn,     // host_slot -> device_block
    kDiskRead,   // the disk worker reads hash into host_slot, then FinishDiskRead
    kDiskDrop,   // the disk worker deletes hash's file
  };
  Kind kind = Kind::kSwapOut;
  int32_t device_block = -1;
  int32_t host_slot = -1;
  BlockHash hash;
  int32_t write = -1;  // kDiskWrite: index into TransferPlan::disk_writes
};

// The transfers the pool planned since the last FinishTransfers. The caller runs them
// before the step's copy-on-write pairs and forward pass; disk ops go to the disk worker
// in plan order (its queue is FIFO), with kDiskWrite's bytes copied out at its place.
struct TransferPlan {
  std::vector<BlockTransfer> ops;
  std::vector<DiskWrite> disk_writes;
  bool empty() const { return ops.empty(); }
  int32_t Count(BlockTransfer::Kind kind) const {
    int32_t n = 0;
    for (const BlockTransfer& op : ops) n += op.kind == kind;
    return n;
  }
};

// The sessions holding evictable blocks on one lower tier, as BlockPool sees them.
struct TierHolder {
  SessionId session = 0;
  int32_t blocks = 0;
};

// Decides which sessions a lower tier reclaims; the engine implements it with its reclaim
// policy (policy/reclaim_policy.h, OrderByClass), so the host and disk tiers reclaim in
// the device tier's order. Called on the pool's (engine) thread.
class TierVictimChooser {
 public:
  virtual ~TierVictimChooser() = default;
  // Appends to *victims, in reclaim order, sessions among holders (never one it does not
  // list) until their blocks cover request.shortfall_blocks.
  virtual void ChooseTierVictims(const ReclaimRequest& request, std::span<const TierHolder> holders,
                                 std::vector<SessionId>* victims) = 0;
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
  int32_t host_total = 0;          // host tier slots
  int32_t host_used = 0;           // host slots holding (or loading, or leaving) a block
  int32_t disk_total = 0;          // disk tier capacity in blocks
  int32_t disk_used = 0;           // blocks on disk
  int64_t num_demotions = 0;       // cumulative: blocks moved one tier down
  int64_t num_promotions = 0;      // cumulative: blocks moved up (swap-ins, disk reads)
  int64_t num_dropped = 0;         // cumulative: records dropped from the bottom tier
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
  // Free, but the blocks that become cached are the next evicted: they join the victims'
  // run at the head of the LRU list, after the blocks of earlier victims (so victims go in
  // the order they were freed, each tail first, and a partial eviction leaves a prefix).
  // For a table the caller gave up to make room, which must go before the cached blocks
  // of turns about to be admitted.
  void FreeAsLeastRecentlyUsed(BlockTable* table);

  // --- Prefix cache -------------------------------------------------------------------
  // The longest run of cached or in-use blocks holding tokens' leading full blocks under
  // scope, verified as described above, as a new table holding one reference on each
  // (cached ones move back to in use) with num_tokens() = matched blocks * block_size.
  // A trailing partial block is never matched. Callers that need logits for the last
  // prompt token pass the prompt minus its last token. Empty when caching is off.
  // Host hits are promoted into fresh device slots (swap-ins planned; each may demote a
  // cached device block); the match stops at a disk or loading record, or when no device
  // slot is left. *from_tiers (if set) receives where the matched blocks were found.
  BlockTable MatchPrefix(std::span<const int32_t> tokens, HashScope scope,
                         TierCounts* from_tiers = nullptr);
  // How many leading full blocks MatchPrefix would return now, changing nothing (with an
  // unbounded device pool).
  int32_t CountCachedPrefix(std::span<const int32_t> tokens, HashScope scope) const;
  // What MatchPrefix would do now, changing nothing: the blocks it would return per tier
  // (host ones promoted) and how many allocatable device slots it would take (each
  // promotion, and each cached device block it moves back to in use).
  struct MatchPlan {
    TierCounts tiers;
    int32_t slots_taken = 0;
  };
  MatchPlan PlanMatch(std::span<const int32_t> tokens, HashScope scope) const;
  // The leading verified run per tier, through disk records, changing nothing.
  TierCounts ProbePrefix(std::span<const int32_t> tokens, HashScope scope) const;
  // Blocks of that run whose disk read (PlanDiskLoads) has not finished yet.
  int32_t CountLoadingPrefix(std::span<const int32_t> tokens, HashScope scope) const;

  // --- Tiers --------------------------------------------------------------------------
  // Plans reads of the disk records in the leading verified run of tokens into host slots
  // (disk_reads in transfers()); returns how many. Stops when no host slot can be freed.
  int32_t PlanDiskLoads(std::span<const int32_t> tokens, HashScope scope);
  // The disk worker finished reading hash into its host slot: ok makes it a matchable
  // host block; !ok (a missing file or a bad checksum) drops it, so it is recomputed.
  // Either way the file's deletion is planned. Unknown or no longer loading hashes are
  // ignored.
  void FinishDiskRead(BlockHash hash, bool ok);
  // Adds a block found on disk at start-up (docs/kv_cache.md, Restart). Its parent must be
  // kRootParentHash or an already adopted block; returns false (adopting nothing) if not,
  // if the hash is owned or if the disk tier is full.
  bool AdoptDiskBlock(BlockHash hash, BlockHash parent_hash, std::span<const int32_t> tokens,
                      HashScope scope);
  // Stamps every hashed block of table with session (0: none), the owner its lower-tier
  // reclaim goes by. Call when the session lets the table go (before Free).
  void SetOwner(const BlockTable& table, SessionId session);
  // The chooser the host and disk tiers ask for victim sessions; nullptr: block LRU only.
  // REQUIRES: chooser outlives the pool or is reset first.
  void SetTierVictimChooser(TierVictimChooser* chooser) { chooser_ = chooser; }
  // Transfers planned since the last FinishTransfers.
  const TransferPlan& transfers() const { return plan_; }
  // The plan has run: host slots read by swap-ins become reusable, blocks demoted by it
  // become evictable, and the plan is cleared.
  void FinishTransfers();

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
  // Full blocks holding each tenant's KV (by scope.tenant_salt), per tier (indexed by Tier:
  // device in use or cached, host, disk). Unhashed blocks (a sequence's partial last
  // block) are not in it.
  const BlockIndex::TenantTierCounts& tenant_blocks() const { return index_.tenant_counts(); }
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
  // Tier and location of the record owning hash; false if none owns it.
  bool TEST_Locate(BlockHash hash, Tier* tier, int32_t* location) const;
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
  struct Meta {
    int32_t ref_count = 0;
    State state = State::kFree;
    int32_t record = -1;         // the BlockIndex record this slot holds, -1: unhashed
    RecordLink alias = kNoLink;  // unhashed full block: the owner holding identical content
    uint64_t last_use_tick = 0;
    int32_t lru_prev = -1;
    int32_t lru_next = -1;
    bool lru_victim = false;  // in the victims' run at the LRU head
  };

  bool is_hashed(int32_t block) const { return meta_[block].record >= 0; }
  // Walks the leading full blocks of tokens while each is in the index (hash chain and
  // tokens verified, on any tier): fn(record, hash) for each in order, which returns false
  // to stop. The walk also stops at the first block not found. fn may move its record
  // between tiers (the next lookup follows the record's link after fn returns).
  template <typename Fn>
  void ForEachVerifiedPrefixRecord(std::span<const int32_t> tokens, HashScope scope, Fn fn) const {
    if (!prefix_caching_) return;
    BlockHash parent_hash = kRootParentHash;
    RecordLink parent = kRootLink;
    for (size_t i = 0; i < tokens.size() / block_size_; ++i) {
      const auto chunk = tokens.subspan(i * block_size_, block_size_);
      const BlockHash hash = hash_fn_(parent_hash, chunk, scope);
      const int32_t r = index_.LookupVerified(hash, chunk, scope, parent);
      if (r < 0 || !fn(r, hash)) return;
      parent_hash = hash;
      parent = index_.LinkOf(r);
    }
  }
  RecordLink CanonicalOf(int32_t block) const;  // its record, its live alias, or kNoLink
  void CommitBlock(int32_t block, BlockHash hash, BlockHash parent_hash,
                   std::span<const int32_t> tokens, HashScope scope, RecordLink parent);
  void DropHash(int32_t block);  // drop its record; a cached block goes to the free list
  int32_t TakeOne();             // REQUIRES: num_allocatable() > 0
  // Release's work; as_victim: a block that becomes cached joins the victims' run.
  void ReleaseTo(std::span<const int32_t> blocks, bool as_victim);
  void LruInsertAfter(int32_t prev, int32_t block);  // prev -1: at the head
  void LruPushBack(int32_t block);
  void LruPushVictim(int32_t block);  // after lru_victims_tail_, or at the head
  void LruRemove(int32_t block);
  // Tiers.
  void DemoteFromDevice(int32_t record);  // REQUIRES: on device, its slot about to be reused
  int32_t AcquireHostSlot();              // a free host slot, reclaiming the host tier; -1
  // Frees room on a lower tier (host: demote to disk; disk: drop): the least recent
  // unowned block, else every evictable block of the chooser's first victim session, else
  // the tier's LRU head. False if nothing there is evictable.
  bool ReclaimLowerTier(Tier tier);
  void EvictFromLowerTier(int32_t record);  // REQUIRES: on tier's LRU
  void DemoteToDisk(int32_t record);        // REQUIRES: on host, off the LRU
  // Makes room for one more of tenant's blocks on tier (host or disk) under its cap by
  // evicting its own least recently used evictable blocks there (a walk of the tier's
  // LRU list). False if it is at its cap with nothing of its own evictable.
  bool MakeTenantRoom(uint64_t tenant, Tier tier);
  int32_t TenantBlocks(uint64_t tenant, Tier tier) const;
  void DropRecord(int32_t record);          // frees its lower-tier location, erases it
  void LeaveLowerTier(int32_t record);      // off its LRU; host slot deferred, disk count - 1
  int32_t PromoteToDevice(int32_t record);  // host -> a fresh device slot; REQUIRES allocatable

  int32_t num_blocks_;
  int32_t block_size_;
  bool prefix_caching_;
  int32_t num_host_blocks_;
  int32_t num_disk_blocks_;
  int32_t max_host_per_tenant_;  // 0: no cap
  int32_t max_disk_per_tenant_;  // 0: no cap
  std::vector<Meta> meta_;
  std::vector<int32_t> free_list_;  // stack; back is allocated next
  int32_t lru_head_ = -1, lru_tail_ = -1;
  int32_t lru_victims_tail_ = -1;  // the last block of the victims' run, -1: none
  int32_t num_cached_ = 0, num_in_use_ = 0, num_shared_ = 0;
  uint64_t tick_ = 0;
  int64_t num_evictions_ = 0, num_cow_copies_ = 0, num_hit_blocks_ = 0, num_queried_ = 0;
  int64_t num_demotions_ = 0, num_promotions_ = 0, num_dropped_ = 0;
  BlockIndex index_;                    // every cached block on every tier
  std::vector<int32_t> host_free_;      // free host slots (stack)
  std::vector<int32_t> host_deferred_;  // host slots freed once the plan has run
  std::vector<int32_t> host_pending_;   // records demoted to host by the pending plan
  std::vector<uint8_t> loading_;        // per record: a disk read into host is in flight
  TransferPlan plan_;
  TierVictimChooser* chooser_ = nullptr;
  BlockHashFn hash_fn_;  // HashBlock, except in tests
};

}  // namespace kvkeep
