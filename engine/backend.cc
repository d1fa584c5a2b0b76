// Backend's default host tier: an ordinary host arena and synchronous batched swaps
// through ReadBlock/WriteBlock (the CPU backend's real implementation; a device backend
// may override them with pinned memory and swap streams); and the per-layer layout of
// ForwardBatch::layer_kv_trim that every backend's attention uses.
#include "engine/backend.h"

#include <unistd.h>

#include <algorithm>
#include <new>
#include <string>

namespace kvkeep {
namespace {

Status CheckHostSlot(int32_t host_slot, int32_t num_host_blocks) {
  if (host_slot < 0 || host_slot >= num_host_blocks) {
    return Status::InvalidArgument("host slot " + std::to_string(host_slot) +
                                   " outside the host tier of " + std::to_string(num_host_blocks));
  }
  return Status::OK();
}

}  // namespace

std::vector<int32_t> BlocksTouched(const ForwardBatch& batch, int32_t block_size) {
  std::vector<int32_t> blocks;
  for (int32_t i = 0; i < batch.num_seqs(); ++i) {
    const int32_t used =
        std::min((batch.kv_len[i] + block_size - 1) / block_size, batch.max_blocks_per_seq);
    const auto row = batch.block_tables.begin() + size_t(i) * batch.max_blocks_per_seq;
    blocks.insert(blocks.end(), row, row + used);
  }
  return blocks;
}

void LayerKvLayout(const ForwardBatch& batch, int layer, int32_t block_size, int32_t* kv_len,
                   int32_t* slots) {
  const int32_t n = batch.num_seqs();
  const int32_t* trim = batch.layer_kv_trim.data() + int64_t{layer} * n;
  for (int32_t i = 0; i < n; ++i) {
    kv_len[i] = batch.kv_len[i] - trim[i];
    const int32_t* table = &batch.block_tables[int64_t{i} * batch.max_blocks_per_seq];
    const int32_t n_new = batch.q_start[i + 1] - batch.q_start[i];
    for (int32_t j = 0; j < n_new; ++j) {
      const int32_t e = kv_len[i] - n_new + j;  // new tokens follow the layer's own entries
      slots[batch.q_start[i] + j] = table[e / block_size] * block_size + e % block_size;
    }
  }
}

Status Backend::AllocateHostTier(int32_t num_blocks) {
  if (num_blocks < 0 || host_arena_ != nullptr) {
    return Status::InvalidArgument("host tier: allocated twice or negative size");
  }
  // A size the machine cannot give is an error for the caller, not a bad_alloc, and not
  // an overcommitted arena whose zero-fill gets the process killed part way.
  const size_t bytes = static_cast<size_t>(num_blocks) * block_bytes();
  const long pages = sysconf(_SC_PHYS_PAGES), page_bytes = sysconf(_SC_PAGE_SIZE);
  if (pages > 0 && page_bytes > 0 && bytes / static_cast<size_t>(page_bytes) >= size_t(pages)) {
    return Status::ResourceExhausted("host tier: " + std::to_string(num_blocks) + " blocks (" +
                                     std::to_string(bytes >> 20) + " MiB) exceed this machine's " +
                                     std::to_string((size_t(pages) * page_bytes) >> 20) +
                                     " MiB of memory");
  }
  try {
    default_host_arena_.assign(bytes, 0);
  } catch (const std::bad_alloc&) {
    return Status::ResourceExhausted("host tier: cannot allocate " + std::to_string(num_blocks) +
                                     " blocks (" + std::to_string(bytes >> 20) + " MiB)");
  }
  host_arena_ = default_host_arena_.data();
  num_host_blocks_ = num_blocks;
  return Status::OK();
}

Result<TransferFence> Backend::SwapOut(std::span<const std::pair<int32_t, int32_t>> device_host) {
  for (auto [device, host] : device_host) {
    RETURN_IF_ERROR(CheckHostSlot(host, num_host_blocks_));
    RETURN_IF_ERROR(ReadBlock(device, host_block(host)));
  }
  return TransferFence{};
}

Result<TransferFence> Backend::SwapIn(std::span<const std::pair<int32_t, int32_t>> host_device) {
  for (auto [host, device] : host_device) {
    RETURN_IF_ERROR(CheckHostSlot(host, num_host_blocks_));
    RETURN_IF_ERROR(WriteBlock(device, host_block(host)));
  }
  return TransferFence{};
}

Status Backend::WaitFence(TransferFence) { return Status::OK(); }

Status Backend::ForwardScored(const ForwardBatch&, int32_t, std::vector<float>*,
                              std::vector<float>*) {
  return Status::NotSupported(name() + " backend: no attention scoring");
}

Status Backend::CompactKv(std::span<const int32_t> block_table, int32_t num_entries,
                          std::span<const int32_t> keep, int32_t num_keep) {
  const std::vector<int32_t> entries(kv_shape().num_layers, num_entries);
  const std::vector<int32_t> kept(kv_shape().num_layers, num_keep);
  return CompactKvLayers(block_table, entries, keep, kept);
}

Status CheckCompactKvLayers(const KvPoolShape& shape, std::span<const int32_t> block_table,
                            std::span<const int32_t> num_entries, std::span<const int32_t> keep,
                            std::span<const int32_t> num_keep) {
  const int32_t layers = shape.num_layers, heads = shape.num_kv_heads;
  if (static_cast<int32_t>(num_entries.size()) != layers ||
      static_cast<int32_t>(num_keep.size()) != layers) {
    return Status::InvalidArgument("compact kv: one entry and keep count per layer");
  }
  int64_t total_keep = 0, max_entries = 0;
  for (int32_t l = 0; l < layers; ++l) {
    if (num_keep[l] < 0 || num_entries[l] < 0) {
      return Status::InvalidArgument("compact kv: negative count");
    }
    total_keep += int64_t{heads} * num_keep[l];
    max_entries = std::max<int64_t>(max_entries, num_entries[l]);
  }
  if (static_cast<int64_t>(keep.size()) != total_keep) {
    return Status::InvalidArgument("compact kv: keep must be num_kv_heads x num_keep per layer");
  }
  const int64_t needed = (max_entries + shape.block_size - 1) / shape.block_size;
  if (static_cast<int64_t>(block_table.size()) < needed) {
    return Status::InvalidArgument("compact kv: block table shorter than its entries");
  }
  for (int64_t b = 0; b < needed; ++b) RETURN_IF_ERROR(CheckBlockId(shape, block_table[b]));
  const int32_t* k = keep.data();
  for (int32_t l = 0; l < layers; ++l) {
    for (int32_t h = 0; h < heads; ++h, k += num_keep[l]) {
      for (int32_t i = 0; i < num_keep[l]; ++i) {
        if (k[i] >= num_entries[l] || (i > 0 ? k[i] <= k[i - 1] : k[i] < 0)) {
          return Status::InvalidArgument("compact kv: keep lists must increase below the entries");
        }
      }
    }
  }
  return Status::OK();
}

Status Backend::CompactKvLayers(std::span<const int32_t>, std::span<const int32_t>,
                                std::span<const int32_t>, std::span<const int32_t>) {
  return Status::NotSupported(name() + " backend: no per-head KV compaction");
}

}  // namespace kvkeep
