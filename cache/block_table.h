// BlockTable: one sequence's view of the paged KV pool. It holds the ordered physical
// block ids (raw int32 in [0, num_blocks), ready for ForwardBatch::block_tables), the
// number of tokens whose KV is stored, and the content hashes of its leading full blocks.
//
// Token position p lives in block block_ids()[p / block_size] at offset p % block_size,
// i.e. in slot block_id * block_size + p % block_size (kernels/paged_kv.h).
//
// Ownership: a table holds one reference on each of its blocks in the BlockPool that
// filled it. The table itself never talks to the pool: blocks come in through
// BlockPool::PrepareAppend / MatchPrefix / Fork, and Truncate / Clear hand back the ids
// the caller must pass to BlockPool::Release. A table is move-only, so a plain copy can
// never duplicate references behind the pool's back; BlockPool::Fork copies and retains.
//
// Invariants:
//   capacity_tokens() - block_size < num_tokens() <= capacity_tokens()   (or both 0)
//   num_hashed_blocks() <= num_tokens() / block_size   (only full blocks are hashed)
//
// Thread-safety: none; owned by the engine thread together with the pool.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "cache/prefix_hash.h"

namespace kvkeep {

class BlockPool;

class BlockTable {
 public:
  // REQUIRES: block_size > 0.
  explicit BlockTable(int32_t block_size = 16, HashScope scope = {});
  BlockTable(BlockTable&&) noexcept = default;
  BlockTable& operator=(BlockTable&&) noexcept = default;
  BlockTable(const BlockTable&) = delete;
  BlockTable& operator=(const BlockTable&) = delete;

  // Blocks needed to hold num_tokens tokens: ceil(num_tokens / block_size).
  static int32_t NumBlocksForTokens(int64_t num_tokens, int32_t block_size);

  int32_t block_size() const { return block_size_; }
  const HashScope& scope() const { return scope_; }
  int64_t num_tokens() const { return num_tokens_; }
  int32_t num_blocks() const { return static_cast<int32_t>(block_ids_.size()); }
  int64_t capacity_tokens() const { return int64_t{num_blocks()} * block_size_; }
  int32_t num_full_blocks() const { return static_cast<int32_t>(num_tokens_ / block_size_); }
  bool empty() const { return block_ids_.empty(); }

  // The raw block ids, in sequence order.
  std::span<const int32_t> block_ids() const { return block_ids_; }
  // REQUIRES: 0 <= index < num_blocks().
  int32_t block_id(int32_t index) const { return block_ids_[index]; }

  // Content hashes of blocks [0, num_hashed_blocks()), filled by BlockPool::MatchPrefix
  // and BlockPool::CommitFullBlocks (a prefix of the full blocks; empty when prefix
  // caching is off). These name the blocks on every tier.
  int32_t num_hashed_blocks() const { return static_cast<int32_t>(block_hashes_.size()); }
  std::span<const BlockHash> block_hashes() const { return block_hashes_; }

  // Slot of token position p: block_id(p / block_size) * block_size + p % block_size.
  // REQUIRES: 0 <= position < capacity_tokens().
  int32_t Slot(int64_t position) const;

  // Blocks to add so that num_new_tokens more tokens fit (not counting copy-on-write).
  int32_t NumNewBlocksFor(int64_t num_new_tokens) const;

  // Records that the KV of num_new_tokens more tokens is now stored (after the forward
  // step that wrote them). REQUIRES: num_tokens() + num_new_tokens <= capacity_tokens().
  void AdvanceTokens(int64_t num_new_tokens);

  // Keeps the first num_tokens tokens, drops blocks no longer needed and hashes of blocks
  // no longer full. Returns the dropped block ids in release order (last block first) for
  // BlockPool::Release. A kept partial last block that is hashed or shared is copied on the
  // next PrepareAppend. REQUIRES: 0 <= num_tokens <= this->num_tokens().
  [[nodiscard]] std::vector<int32_t> Truncate(int64_t num_tokens);

  // Drops everything; returns all block ids in release order (last block first), so that
  // releasing them leaves the prefix most recently used and the tail evicted first.
  [[nodiscard]] std::vector<int32_t> Clear();

 private:
  friend class BlockPool;

  BlockTable Clone() const;  // copies ids and hashes; the pool retains (BlockPool::Fork)
  void AppendBlock(int32_t block_id) { block_ids_.push_back(block_id); }
  void ReplaceBlock(int32_t index, int32_t block_id) { block_ids_[index] = block_id; }
  void AppendHash(BlockHash hash) { block_hashes_.push_back(hash); }

  int32_t block_size_;
  HashScope scope_;
  int64_t num_tokens_ = 0;
  std::vector<int32_t> block_ids_;
  std::vector<BlockHash> block_hashes_;
};

}  // namespace kvkeep
