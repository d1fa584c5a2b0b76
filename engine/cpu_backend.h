// CpuBackend: the reference transformer forward over the paged KV pool, on the host.
//
// Memory: every weight is converted to fp32 once at creation and held for the backend's
// lifetime, i.e. 4 bytes x NumParameters() (a bf16 8B checkpoint becomes ~32 GB; the
// `small` synthetic preset a few MB), except that with BackendOptions::cpu_quantized_weights
// a GGUF file's Q8_0 and Q4_1 matrices are kept as packed blocks (1.25 / 0.75 bytes per
// weight) and run through kernels/cpu/quant_matmul.h (activations quantised to Q8).
// The KV pool is one allocation made at creation: num_blocks x block_stride elements of
// fp32 or bf16 (BackendOptions::kv_dtype), laid out as kernels/paged_kv.h describes.
// Activation buffers are sized by the largest step seen so far (bounded by the scheduler's
// max_batch_tokens) and reused; a step allocates only when it is larger than every step
// before it.
//
// Threads: kernels use OpenMP and OpenBLAS; BackendOptions::num_threads > 0 sets the
// OpenMP thread count of the thread calling Forward (OpenMP keeps it per thread).
//
// Thread-safety: owned and called by one thread (the engine thread).
#pragma once

#include <memory>

#include "engine/backend.h"

namespace kvkeep {

// Validates a batch against a pool of `shape` and a vocabulary of `vocab_size` tokens:
// array sizes, q_start monotone from 0 to num_tokens, 1 <= new tokens <= kv_len <=
// max_blocks_per_seq * block_size, every referenced block id inside the pool, each new
// token's slot equal to the block-table slot of its KV index (kv_len - n_new + j), token
// ids in the vocabulary, positions >= 0 and logit rows inside the batch.
Status ValidateForwardBatch(const ForwardBatch& batch, const KvPoolShape& shape,
                            int32_t vocab_size);

}  // namespace kvkeep
