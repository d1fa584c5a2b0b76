// BlockHashMap: BlockHash -> block id, open addressing with linear probing and
// backward-shift deletion, sized once for at most `capacity` entries (load <= 1/2), so
// inserts never allocate. Keys are already well mixed (XXH64), so the slot is the low
// bits of the key. Used by BlockPool for the prefix cache.
//
// Thread-safety: none (owned by BlockPool).
#pragma once

#include <cstdint>
#include <vector>

#include "cache/prefix_hash.h"

namespace kvkeep {

class BlockHashMap {
 public:
  // Room for `capacity` entries. REQUIRES: capacity >= 0.
  explicit BlockHashMap(int32_t capacity);

  // The block stored under hash, or -1.
  int32_t Find(BlockHash hash) const;
  // REQUIRES: hash absent, size() < capacity, block >= 0.
  void Insert(BlockHash hash, int32_t block);
  // Removes hash if present; returns whether it was.
  bool Erase(BlockHash hash);
  int32_t size() const { return size_; }

  // Calls fn(hash, block) for every entry (tests and invariant checks).
  template <typename Fn>
  void ForEach(Fn&& fn) const {
    for (size_t i = 0; i < blocks_.size(); ++i) {
      if (blocks_[i] >= 0) fn(BlockHash{keys_[i]}, blocks_[i]);
    }
  }

 private:
  size_t SlotOf(uint64_t key) const { return static_cast<size_t>(key) & mask_; }

  std::vector<uint64_t> keys_;
  std::vector<int32_t> blocks_;  // -1: empty slot
  size_t mask_;
  int32_t size_ = 0;
};

}  // namespace kvkeep
