// CPU paged attention: the exact reference for every attention kernel in kvkeep.
// fp32 compute over fp32 or bf16 KV; any head_dim up to 256; GQA; multithreaded (OpenMP)
// over (sequence, query head). Returns InvalidArgument on shapes it does not support.
//
// Work items are (sequence, KV head with its whole GQA group, a tile of new tokens); when
// there are fewer of them than OpenMP threads (decode with a small batch), long contexts
// are also split across threads and merged through kernels/softmax_state.h, so a batch of
// one still uses every thread. Validation is O(num_seqs + blocks) and covers every index
// the kernels follow, except block ids past the end of the pool (PagedKv has no size):
// those must be checked by whoever builds the block tables. Thread-safe: calls share no
// state; each call uses the calling thread's OpenMP team.
#pragma once

#include <cstdint>

#include "base/bf16.h"
#include "base/status.h"
#include "kernels/paged_kv.h"

namespace kvkeep::cpu {

constexpr int kMaxHeadDim = 256;

// Causal varlen paged attention (prefill chunks, decode tokens, or a mix).
// q, out: [num_tokens][num_q_heads][head_dim] with num_tokens = batch.q_start[num_seqs].
template <typename KvT>
Status PagedAttention(const AttentionParams& params, const AttentionBatch& batch,
                      const PagedKv<KvT>& kv, const float* q, float* out);

// Decode: one query token per sequence (q_start[i] == i). Same contract as above.
template <typename KvT>
Status PagedDecodeAttention(const AttentionParams& params, const AttentionBatch& batch,
                            const PagedKv<KvT>& kv, const float* q, float* out);

// Writes new K/V rows into their slots. k, v: [num_tokens][num_kv_heads][head_dim] fp32;
// slot_mapping[t] = block_id * block_size + offset. A negative slot skips the token.
// REQUIRES: non-negative slots are distinct and inside the pool. K/V are rounded to KvT.
template <typename KvT>
Status WriteKv(const PagedKv<KvT>& kv, const float* k, const float* v, const int32_t* slot_mapping,
               int32_t num_tokens);

}  // namespace kvkeep::cpu
