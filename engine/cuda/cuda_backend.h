// The CUDA backend: the same Backend interface as the CPU reference (engine/backend.h),
// on one GPU. Compiled only when KVKEEP_HAVE_CUDA.
//
// Memory: weights are uploaded once as bf16 (q/k/v fused into one [qd + 2 kvd][hidden]
// matrix, gate/up into one [2 inter][hidden] matrix). The KV pool is one cudaMalloc made at
// creation, always bf16 (whatever BackendOptions::kv_dtype says), laid out as kernels/paged_kv.h
// describes, with num_kv_blocks blocks, or kv_memory_bytes, or else gpu_memory_fraction x (free
// memory at start) minus the weights and an activation reserve. Activation buffers grow with the
// largest step seen.
//
// A step: one H2D copy of the batch metadata (from a pinned staging buffer), then
// embedding -> per layer [fused add+RMSNorm, QKV GEMM, RoPE, KV write, paged attention
// (decode kernel when every sequence has one new token, else the prefill kernel), O GEMM,
// fused add+RMSNorm, gate/up GEMM, SiLU*mul, down GEMM] -> final norm -> lm_head on the
// logit rows only -> one D2H copy of the fp32 logits, the step's only host sync.
// Decode steps (one new token per sequence) are replayed from CUDA graphs keyed by the
// batch size rounded up to a power of two (padded with dummy sequences that write nothing),
// the block-table width rounded likewise, and the split count; if capture fails the backend
// logs a warning and runs decode steps eagerly.
// Supported: Llama/Mistral-shaped models, head_dim 32/64/128, GQA groups 1/2/3/4/8; models with
// attention_bias or qk_norm are NotSupported here (the CPU backend runs them).
//
// Thread-safety: owned and called by the engine thread only.
#pragma once

#include <memory>

#include "engine/backend.h"

namespace kvkeep {

Result<std::unique_ptr<Backend>> CreateCudaBackend(const ModelWeights& weights,
                                                   const BackendOptions& options);

}  // namespace kvkeep
