// KV compaction on the CPU: packs chosen entries of one sequence's paged KV to its front,
// independently per KV head, in place. The compressor (engine/episode_cache.h) uses it to
// drop the tokens it does not keep; the CUDA backend's equivalent is GatherSlots
// (kernels/cuda/kv_ops.h), which moves whole token slots for every head at once.
//
// Thread-safety: calls share no state.
#pragma once

#include <cstdint>

#include "base/bf16.h"
#include "base/status.h"
#include "kernels/paged_kv.h"

namespace kvkeep::cpu {

// One layer: for each KV head h and i < num_keep, entry keep[h * num_keep + i] of the
// sequence (block_table maps entry j to block block_table[j / block_size]) moves to
// entry i, K and V. InvalidArgument unless each head's list is strictly increasing and
// below num_entries (entries then only move towards the front, so in place is safe).
template <typename KvT>
Status CompactKv(const PagedKv<KvT>& kv, const int32_t* block_table, int32_t num_entries,
                 const int32_t* keep, int32_t num_keep);

}  // namespace kvkeep::cpu
