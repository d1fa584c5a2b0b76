#include "cache/block_hash_map.h"

#include <bit>

namespace kvkeep {

BlockHashMap::BlockHashMap(int32_t capacity) {
  // Load factor <= 1/2 keeps linear probes short.
  size_t slots = std::bit_ceil(static_cast<size_t>(capacity) * 2 + 2);
  keys_.assign(slots, 0);
  blocks_.assign(slots, -1);
  mask_ = slots - 1;
}

int32_t BlockHashMap::Find(BlockHash hash) const {
  for (size_t i = SlotOf(hash.value);; i = (i + 1) & mask_) {
    if (blocks_[i] < 0) return -1;
    if (keys_[i] == hash.value) return blocks_[i];
  }
}

void BlockHashMap::Insert(BlockHash hash, int32_t block) {
  size_t i = SlotOf(hash.value);
  while (blocks_[i] >= 0) i = (i + 1) & mask_;
  keys_[i] = hash.value;
  blocks_[i] = block;
  ++size_;
}

bool BlockHashMap::Erase(BlockHash hash) {
  size_t i = SlotOf(hash.value);
  for (;; i = (i + 1) & mask_) {
    if (blocks_[i] < 0) return false;
    if (keys_[i] == hash.value) break;
  }
  // Backward-shift deletion: pull later entries of the probe run into the hole when their
  // home slot does not lie cyclically in (hole, j].
  size_t hole = i;
  for (size_t j = (hole + 1) & mask_; blocks_[j] >= 0; j = (j + 1) & mask_) {
    size_t home = SlotOf(keys_[j]);
    bool home_in_range = hole <= j ? (hole < home && home <= j) : (hole < home || home <= j);
    if (home_in_range) continue;
    keys_[hole] = keys_[j];
    blocks_[hole] = blocks_[j];
    hole = j;
  }
  blocks_[hole] = -1;
  --size_;
  return true;
}

}  // namespace kvkeep
