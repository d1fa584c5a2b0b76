// CUDA paged attention over the bf16 KV pool (layout: kernels/paged_kv.h). Kernels take
// raw device pointers and plain parameter structs; they know nothing about sessions.
//
// Dispatch (one place, attention_dispatch.cuh): head_dim in {32, 64, 128}, GQA group size
// (num_q_heads / num_kv_heads) in {1, 2, 3, 4, 8}, bf16 KV and activations. Anything else is
// NotSupported. All launches are asynchronous on the given stream; no host sync.
//
// Thread-safety: stateless functions; callers own the stream and buffers.
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

#include "base/status.h"
#include "kernels/paged_kv.h"

namespace kvkeep::cuda {

using bf16_t = __nv_bfloat16;

// Query / output tensors of one layer on the device:
//   q[token][num_q_heads][head_dim] with a row stride of q_token_stride elements (so q can be
//   a slice of a fused QKV projection), out[token][num_q_heads][head_dim] contiguous.
struct AttentionIo {
  const bf16_t* q = nullptr;
  int64_t q_token_stride = 0;  // elements between consecutive tokens of q
  bf16_t* out = nullptr;
};

// ---- decode (one new token per sequence: batch.q_start[i] == i) ------------------------
// Flash-decoding: each CTA owns (sequence, KV head, split) and reads that KV head once for
// all the query heads that share it. With num_splits > 1 every split writes a partial
// output and its log-sum-exp to the workspace and a reduce kernel merges them.
struct DecodePlan {
  int32_t num_splits = 1;
};

// Chooses num_splits from the batch shape and the SM count: none when the (sequence, KV
// head) pairs give >= 1 CTA per SM, else about one CTA per SM (num_sms / pairs splits),
// never shorter than 256 tokens, at most 128. max_kv_len is the longest context in the
// batch (host-known).
DecodePlan PlanDecode(int32_t num_seqs, int32_t num_kv_heads, int32_t max_kv_len, int32_t num_sms);

// Bytes of workspace the split path needs (0 when num_splits == 1): the splits' fp32
// partial outputs and log-sum-exps.
size_t DecodeWorkspaceBytes(int32_t num_seqs, int32_t num_q_heads, int32_t head_dim,
                            const DecodePlan& plan);

// REQUIRES: batch pointers are device pointers; workspace holds DecodeWorkspaceBytes.
Status PagedDecodeAttention(const AttentionParams& params, const AttentionBatch& batch,
                            const PagedKv<bf16_t>& kv, const AttentionIo& io,
                            const DecodePlan& plan, float* workspace, cudaStream_t stream);
// Test/bench hook: forces the tensor-core kernel (mma.sync, the default for GQA groups of 4
// and 8) or the CUDA-core one (the default for groups 1-3).
Status TEST_PagedDecodeAttention(const AttentionParams& params, const AttentionBatch& batch,
                                 const PagedKv<bf16_t>& kv, const AttentionIo& io,
                                 const DecodePlan& plan, float* workspace, bool tensor_cores,
                                 cudaStream_t stream);

// ---- prefill (any varlen causal batch: prefill chunks over a cached prefix, decode
// tokens, or a mix), on tensor cores with fp32 accumulation: on an sm_90 GPU with
// head_dim 64/128 and max_q_len > 64 a wgmma kernel (prefill_attention_sm90.cu), else
// FlashAttention-2 style on mma.sync m16n8k16 (prefill_attention.cu). max_q_len is the largest
// q_start[i+1] - q_start[i] (host-known).
Status PagedPrefillAttention(const AttentionParams& params, const AttentionBatch& batch,
                             const PagedKv<bf16_t>& kv, const AttentionIo& io, int32_t max_q_len,
                             cudaStream_t stream);

// Test/bench hook: forces the query tile shape (rows_per_warp 16: 64-row query tiles;
// 32: 128-row tiles, each K/V fragment feeding two MMAs). The default picks 32 when
// max_q_len > 64.
Status TEST_PagedPrefillAttention(const AttentionParams& params, const AttentionBatch& batch,
                                  const PagedKv<bf16_t>& kv, const AttentionIo& io,
                                  int32_t max_q_len, int rows_per_warp, cudaStream_t stream);
// Same, also forcing the keys per K/V tile (block_n 32 or 64; the default is 32).
Status TEST_PagedPrefillAttentionTiles(const AttentionParams& params, const AttentionBatch& batch,
                                       const PagedKv<bf16_t>& kv, const AttentionIo& io,
                                       int32_t max_q_len, int rows_per_warp, int block_n,
                                       cudaStream_t stream);
// The wgmma kernel (sm_90a; head_dim 64/128) with a forced tile: block_n 64 or 128 keys
// per K/V tile. NotSupported where it can't run (PagedPrefillAttention then uses the
// mma.sync kernel).
Status TEST_PagedPrefillAttentionSm90(const AttentionParams& params, const AttentionBatch& batch,
                                      const PagedKv<bf16_t>& kv, const AttentionIo& io,
                                      int32_t max_q_len, int block_n, cudaStream_t stream);

// ---- attention scoring (the EpiCache compressor, engine/episode_cache.h) ---------------
// The output of kernels/cpu/attention_scores.h for one sequence: its n_new query tokens sit
// at the end of a context of kv_len entries (block_table, device) and attend causally;
// scores[h][j] (fp32, [num_kv_heads][num_scored]) is the largest softmax probability any
// query token of any query head of KV head h's GQA group pays entry j < num_scored.
// Two launches: a log-sum-exp per (query token, query head) into workspace, then one
// thread per (entry, KV head). head_dim <= 256; any GQA group. Not tuned: it runs once per
// compressed block, beside a prefill of B tokens.
size_t AttentionScoresWorkspaceBytes(int32_t n_new, int32_t num_q_heads);
Status AttentionScores(const AttentionParams& params, const PagedKv<bf16_t>& kv,
                       const int32_t* block_table, int32_t kv_len, int32_t n_new, const bf16_t* q,
                       int64_t q_token_stride, int32_t num_scored, float* scores, float* workspace,
                       cudaStream_t stream);

}  // namespace kvkeep::cuda
