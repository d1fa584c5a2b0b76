// CUDA model kernels: fused residual-add + RMSNorm, RoPE (incl. Llama-3 scaling; the
// inverse frequencies come from cpu::RopeInvFreq so CPU and GPU share them), SiLU*mul,
// embedding lookup, row gather, and sampling (argmax; top-k/top-p on device).
// The residual stream is fp32; activations fed to GEMMs are bf16. Row-major throughout.
// All calls are asynchronous on `stream`; pointers are device pointers.
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "base/status.h"

namespace kvkeep::cuda {

using bf16_t = __nv_bfloat16;

// If delta != nullptr: hidden[r] += delta[r] (in place, fp32). Then
// out[r] = hidden[r] / rms(hidden[r]) * weight, in bf16. rows of `dim` (> 0). dim % 8 == 0,
// dim <= 16384 and 16-byte aligned pointers take the fast one-pass path (one CTA per row,
// the row kept in registers); other shapes take a slower generic path.
Status AddRmsNorm(float* hidden, const bf16_t* delta, const bf16_t* weight, int32_t rows,
                  int32_t dim, float eps, bf16_t* out, cudaStream_t stream);

// Rotates x[token][num_heads][head_dim] (token stride x_token_stride elements) in place at
// positions[token], HF rotate_half convention over the first rotary_dim dims of each head;
// inv_freq[rotary_dim / 2] on the device. Heads are head_dim apart, so q and k heads that
// are adjacent in a fused QKV row can be rotated by one call. One thread per rotary pair.
Status ApplyRope(bf16_t* x, int64_t x_token_stride, int32_t num_tokens, int32_t num_heads,
                 int32_t head_dim, int32_t rotary_dim, const int32_t* positions,
                 const float* inv_freq, cudaStream_t stream);

// out[r][i] = silu(gate_up[r][i]) * gate_up[r][dim + i]  (gate and up fused, [rows][2*dim]).
Status SiluMul(const bf16_t* gate_up, int32_t rows, int32_t dim, bf16_t* out, cudaStream_t stream);

// hidden[t] = float(table[ids[t]]), rows of `dim`. REQUIRES: ids validated by the caller.
Status EmbeddingLookup(const bf16_t* table, const int32_t* ids, int32_t num_tokens, int32_t dim,
                       float* hidden, cudaStream_t stream);

// dst[i] = src[rows[i]], rows of `dim` bf16.
Status GatherRows(const bf16_t* src, const int32_t* rows, int32_t num_rows, int32_t dim,
                  bf16_t* dst, cudaStream_t stream);

// out[r] = argmax of logits[r][0..vocab), lowest index on ties, NaNs never win.
Status Argmax(const float* logits, int32_t rows, int32_t vocab, int32_t* out, cudaStream_t stream);

constexpr int32_t kMaxDeviceTopK = 256;

// Per row r: scale by 1/temperature[r], keep the top_k[r] most likely (ties: lower id),
// softmax over them, keep the smallest prefix whose mass reaches top_p[r], renormalise and
// pick the first candidate whose cumulative mass exceeds uniform[r] in [0, 1) — the same
// rule as engine/sampler.h. REQUIRES: 1 <= top_k[r] <= kMaxDeviceTopK, temperature > 0.
// If cand_ids/cand_probs are non-null they receive the kept candidates
// ([rows][kMaxDeviceTopK], -1 / 0 past the kept set) for tests.
Status SampleTopKTopP(const float* logits, int32_t rows, int32_t vocab, const float* temperature,
                      const int32_t* top_k, const float* top_p, const float* uniform, int32_t* out,
                      int32_t* cand_ids, float* cand_probs, cudaStream_t stream);

}  // namespace kvkeep::cuda
