// Test helper: a stand-in for the Backend's KV bytes, so cache tests can check that what a
// BlockTable points at is really the KV of its own tokens. Each slot stores a 64-bit
// value that depends on the scope and on every token up to and including its position,
// as real KV depends on the whole prefix; a block reused under the wrong prefix or scope
// reads back a different value.
#pragma once

#include <algorithm>
#include <cstdint>
#include <span>
#include <unordered_map>
#include <utility>
#include <vector>

#include <gtest/gtest.h>

#include "cache/block_pool.h"

namespace kvkeep::testing {

// The value a slot at position p holds: a rolling polynomial over (scope, tokens[0..p]).
inline std::vector<uint64_t> PrefixValues(HashScope scope, std::span<const int32_t> tokens) {
  std::vector<uint64_t> values(tokens.size());
  uint64_t v = scope.model_id_hash * 0x9E3779B97F4A7C15ULL ^ scope.tenant_salt;
  for (size_t p = 0; p < tokens.size(); ++p) {
    v = v * 1000003ULL + static_cast<uint32_t>(tokens[p]) + 1;
    values[p] = v;
  }
  return values;
}

class SimKv {
 public:
  SimKv(int32_t num_blocks, int32_t block_size, int32_t num_host_blocks = 0)
      : block_size_(block_size),
        slots_(static_cast<size_t>(num_blocks) * block_size, 0),
        host_(static_cast<size_t>(num_host_blocks) * block_size, 0) {}

  // Runs pool.transfers() the way the engine does (disk-write snapshots, swap-outs,
  // swap-ins, then the disk worker's reads and drops), then FinishTransfers and
  // FinishDiskRead. A read of a block missing on disk, or one fail_read picks, fails.
  template <typename FailRead>
  void RunTransfers(BlockPool& pool, FailRead&& fail_read) {
    const TransferPlan plan = pool.transfers();
    std::vector<std::pair<BlockHash, bool>> reads;
    for (const BlockTransfer& op : plan.ops) {
      const size_t dev = size_t(op.device_block) * block_size_;
      switch (op.kind) {
        case BlockTransfer::Kind::kDiskWrite:
          disk_[op.hash.value].assign(host_.begin() + HostAt(op.host_slot),
                                      host_.begin() + HostAt(op.host_slot) + block_size_);
          break;
        case BlockTransfer::Kind::kSwapOut:
          std::copy_n(slots_.begin() + dev, block_size_, host_.begin() + HostAt(op.host_slot));
          break;
        case BlockTransfer::Kind::kSwapIn:
          std::copy_n(host_.begin() + HostAt(op.host_slot), block_size_, slots_.begin() + dev);
          break;
        case BlockTransfer::Kind::kDiskRead: {
          auto it = disk_.find(op.hash.value);
          const bool ok = it != disk_.end() && !fail_read(op.hash);
          if (ok) std::ranges::copy(it->second, host_.begin() + HostAt(op.host_slot));
          reads.emplace_back(op.hash, ok);
          break;
        }
        case BlockTransfer::Kind::kDiskDrop:
          disk_.erase(op.hash.value);
          break;
      }
    }
    pool.FinishTransfers();
    for (auto [hash, ok] : reads) pool.FinishDiskRead(hash, ok);
  }
  void RunTransfers(BlockPool& pool) {
    RunTransfers(pool, [](BlockHash) { return false; });
  }
  size_t num_disk_blocks() const { return disk_.size(); }

  // Backend::CopyBlocks. Like the CUDA kernel, pairs run as if in parallel, so no block
  // may be both a source and a destination (checked).
  void Copy(const std::vector<BlockCopy>& copies) {
    for (auto [src, dst] : copies) {
      for (auto [src2, dst2] : copies) EXPECT_NE(src, dst2) << "block is source and destination";
    }
    for (auto [src, dst] : copies) {
      for (int32_t i = 0; i < block_size_; ++i) {
        slots_[size_t(dst) * block_size_ + i] = slots_[size_t(src) * block_size_ + i];
      }
    }
  }
  // The forward step writing positions [from, tokens.size()) of a sequence.
  void Write(const BlockTable& table, std::span<const int32_t> tokens, int64_t from) {
    const std::vector<uint64_t> values = PrefixValues(table.scope(), tokens);
    for (size_t p = from; p < tokens.size(); ++p) slots_[table.Slot(p)] = values[p];
  }
  // True iff every stored position of the table holds its own prefix's value.
  bool Holds(const BlockTable& table, std::span<const int32_t> tokens) const {
    const std::vector<uint64_t> values = PrefixValues(table.scope(), tokens);
    for (int64_t p = 0; p < table.num_tokens(); ++p) {
      if (slots_[table.Slot(p)] != values[p]) return false;
    }
    return true;
  }

 private:
  size_t HostAt(int32_t host_slot) const { return size_t(host_slot) * block_size_; }

  int32_t block_size_;
  std::vector<uint64_t> slots_;
  std::vector<uint64_t> host_;
  std::unordered_map<uint64_t, std::vector<uint64_t>> disk_;  // by block hash
};

// Appends new_tokens to a sequence the way the engine does: reserve (copy-on-write),
// copy, release the copy sources, write, advance, commit. On error nothing changes.
inline Status Extend(BlockPool& pool, SimKv& kv, BlockTable& table, std::vector<int32_t>& tokens,
                     std::span<const int32_t> new_tokens) {
  std::vector<BlockCopy> copies;
  RETURN_IF_ERROR(pool.PrepareAppend(&table, static_cast<int64_t>(new_tokens.size()), &copies));
  kv.RunTransfers(pool);  // demotions of the blocks PrepareAppend reused
  kv.Copy(copies);
  pool.ReleaseCopySources(copies);
  const int64_t from = table.num_tokens();
  tokens.resize(from);
  tokens.insert(tokens.end(), new_tokens.begin(), new_tokens.end());
  kv.Write(table, tokens, from);
  table.AdvanceTokens(static_cast<int64_t>(new_tokens.size()));
  pool.CommitFullBlocks(&table, tokens);
  return Status::OK();
}

}  // namespace kvkeep::testing
