// CUDA kernels that move KV bytes in the bf16 pool (layout: kernels/paged_kv.h): writing new
// K/V into slots, copy-on-write block copies, slot compaction, and batched swaps between
// the device pool and a pinned host pool on a caller-chosen (usually dedicated) stream.
// All calls are asynchronous on `stream`; device pointers unless stated otherwise.
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <utility>
#include <vector>

#include "base/status.h"
#include "kernels/paged_kv.h"

namespace kvkeep::cuda {

using bf16_t = __nv_bfloat16;

// k/v: [num_tokens][num_kv_heads][head_dim] with row strides k_token_stride/v_token_stride
// (elements; a slice of a fused QKV projection works). slot_mapping[t] < 0 skips token t.
// REQUIRES: head_dim % 8 == 0, rows 16-byte aligned.
Status WriteKv(const PagedKv<bf16_t>& kv, const bf16_t* k, int64_t k_token_stride, const bf16_t* v,
               int64_t v_token_stride, const int32_t* slot_mapping, int32_t num_tokens,
               cudaStream_t stream);

// Fused RoPE + WriteKv over a fused QKV projection, one launch per layer:
// qkv[token] = [num_q_heads + 2 num_kv_heads heads (q, then k, then v)][kv.head_dim], token
// stride qkv_token_stride. Rotates the q and k heads in place at positions[token] exactly as
// ApplyRope (kernels/cuda/ops.h) over num_q_heads + num_kv_heads heads does (bit-identical),
// then writes the rotated k and the v of token t into slot_mapping[t] as WriteKv does
// (slot < 0 skips the cache write; q and k are still rotated). inv_freq[rotary_dim / 2].
// REQUIRES: even head_dim, 0 < rotary_dim <= head_dim, rotary_dim even.
Status RopeWriteKv(const PagedKv<bf16_t>& kv, bf16_t* qkv, int64_t qkv_token_stride,
                   int32_t num_tokens, int32_t num_q_heads, int32_t rotary_dim,
                   const int32_t* positions, const float* inv_freq, const int32_t* slot_mapping,
                   cudaStream_t stream);

// For each pair i: block src_dst[2i] -> block src_dst[2i+1] (all layers, K and V).
// REQUIRES: no block is both a source and a destination.
Status CopyBlocks(bf16_t* pool, const KvPoolShape& shape, const int32_t* src_dst, int32_t num_pairs,
                  cudaStream_t stream);

// Compaction: token slot src_slots[i] -> dst_slots[i] in every layer, K and V, all heads.
// REQUIRES: the destination slots are disjoint from the source slots.
Status GatherSlots(bf16_t* pool, const KvPoolShape& shape, const int32_t* src_slots,
                   const int32_t* dst_slots, int32_t num_slots, cudaStream_t stream);

// Row moves for per-head compaction (Backend::CompactKvLayers): row r of row_elems bf16
// elements moves from src + src_offsets[r] to dst + dst_offsets[r] (element offsets; a null
// offset array means r * row_elems, a packed scratch buffer). Rows run in parallel, so the
// caller stages through scratch when a source row may be another row's destination.
// REQUIRES: row_elems % 8 == 0, every row 16-byte aligned.
Status CopyRows(const bf16_t* src, const int64_t* src_offsets, bf16_t* dst,
                const int64_t* dst_offsets, int32_t num_rows, int32_t row_elems,
                cudaStream_t stream);

enum class SwapDirection { kDeviceToHost, kHostToDevice };

// Copies whole blocks between the device pool and a pinned host pool of the same block size:
// pairs (src block, dst block) index the source and destination pools. Consecutive runs are
// merged into one cudaMemcpyAsync each. Host pointers must be pinned (cudaHostAlloc) for the
// copies to overlap compute on other streams.
Status SwapBlocks(void* device_pool, void* host_pool, size_t block_bytes,
                  const std::vector<std::pair<int32_t, int32_t>>& src_dst, SwapDirection dir,
                  cudaStream_t stream);

}  // namespace kvkeep::cuda
