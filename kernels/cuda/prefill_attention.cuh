// Shared by the two paged prefill kernels (prefill_attention.cu: FlashAttention-2 on
// mma.sync, any sm_80+ GPU; prefill_attention_sm90.cu: wgmma on sm_90a). Internal to
// kernels/cuda; the public entry points are in attention.h.
#pragma once

#include <cuda_runtime.h>

#include "base/status.h"
#include "kernels/cuda/attention.h"

namespace kvkeep::cuda {

struct PrefillArgs {
  AttentionBatch batch;
  PagedKv<bf16_t> kv;
  AttentionIo io;
  int32_t num_q_heads;
  int32_t group;  // query heads per KV head
  float scale_log2;
};

// True when the wgmma kernel can run on the current device for this head_dim: an sm_90
// GPU, a binary that carries sm_90a code, head_dim 64 or 128.
bool PrefillSm90Available(int head_dim);

// The wgmma kernel: 128-row query tiles (two warpgroups of 64 rows), block_n keys per K/V
// tile (64 or 128). REQUIRES PrefillSm90Available(head_dim).
Status LaunchPrefillSm90(const PrefillArgs& args, int head_dim, int32_t max_q_len, int block_n,
                         cudaStream_t stream);

}  // namespace kvkeep::cuda
