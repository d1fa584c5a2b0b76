#include "cache/block_table.h"

#include <algorithm>

#include "cache/cache_check.h"

namespace kvkeep {

BlockTable::BlockTable(int32_t block_size, HashScope scope)
    : block_size_(block_size), scope_(scope) {
  KVKEEP_CACHE_CHECK(block_size > 0, "block_size {}", block_size);
}

int32_t BlockTable::NumBlocksForTokens(int64_t num_tokens, int32_t block_size) {
  return static_cast<int32_t>((num_tokens + block_size - 1) / block_size);
}

int32_t BlockTable::Slot(int64_t position) const {
  return block_ids_[position / block_size_] * block_size_ +
         static_cast<int32_t>(position % block_size_);
}

int32_t BlockTable::NumNewBlocksFor(int64_t num_new_tokens) const {
  return std::max(0, NumBlocksForTokens(num_tokens_ + num_new_tokens, block_size_) - num_blocks());
}

void BlockTable::AdvanceTokens(int64_t num_new_tokens) {
  KVKEEP_CACHE_CHECK(num_new_tokens >= 0 && num_tokens_ + num_new_tokens <= capacity_tokens(),
                     "advance by {} past capacity {} (holding {})", num_new_tokens,
                     capacity_tokens(), num_tokens_);
  num_tokens_ += num_new_tokens;
}

std::vector<int32_t> BlockTable::Truncate(int64_t num_tokens) {
  KVKEEP_CACHE_CHECK(num_tokens >= 0 && num_tokens <= num_tokens_, "truncate to {} of {}",
                     num_tokens, num_tokens_);
  int32_t keep = NumBlocksForTokens(num_tokens, block_size_);
  std::vector<int32_t> dropped(block_ids_.rbegin(), block_ids_.rend() - keep);
  block_ids_.resize(keep);
  num_tokens_ = num_tokens;
  if (num_hashed_blocks() > num_full_blocks()) block_hashes_.resize(num_full_blocks());
  return dropped;
}

std::vector<int32_t> BlockTable::Clear() { return Truncate(0); }

BlockTable BlockTable::Clone() const {
  BlockTable copy(block_size_, scope_);
  copy.num_tokens_ = num_tokens_;
  copy.block_ids_ = block_ids_;
  copy.block_hashes_ = block_hashes_;
  return copy;
}

}  // namespace kvkeep
