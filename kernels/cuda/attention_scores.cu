// Attention scoring for the EpiCache compressor. See attention.h for the contract; the CPU
// reference is kernels/cpu/attention_scores.cc.
//
// LseKernel: CTA = (query token, query head); its threads stride over the visible keys with
// an online max/sum each, then merge through shared memory into lse = m + log(sum).
// ScoreKernel: thread = (entry j, KV head); it walks the group's query rows (staged in
// shared memory as fp32, kRowsPerStage at a time) and keeps the largest exp(s - lse) over
// the queries that see j. No atomics: each output has one owner.
#include <algorithm>
#include <cmath>

#include "kernels/cuda/attention.h"
#include "kernels/cuda/cuda_status.h"

namespace kvkeep::cuda {
namespace {

constexpr int kMaxDim = 256;
constexpr int kLseThreads = 128;
constexpr int kScoreThreads = 128;
constexpr int kRowsPerStage = 8;

__device__ inline const bf16_t* KeyRow(const PagedKv<bf16_t>& kv, const int32_t* table, int j,
                                       int h) {
  return kv.k + int64_t{table[j / kv.block_size]} * kv.block_stride +
         (int64_t{h} * kv.block_size + j % kv.block_size) * kv.head_dim;
}

__global__ void LseKernel(AttentionParams params, PagedKv<bf16_t> kv, const int32_t* table,
                          int kv_len, int n_new, const bf16_t* q, int64_t q_stride, float* lse) {
  const int t = blockIdx.x, qh = blockIdx.y;
  const int group = params.num_q_heads / kv.num_kv_heads;
  const int h = qh / group, d = kv.head_dim;
  __shared__ float qs[kMaxDim];
  __shared__ float red_m[kLseThreads], red_s[kLseThreads];
  const bf16_t* qrow = q + int64_t{t} * q_stride + int64_t{qh} * d;
  for (int x = threadIdx.x; x < d; x += blockDim.x) qs[x] = __bfloat162float(qrow[x]);
  __syncthreads();
  const int visible = kv_len - n_new + t + 1;
  float m = -INFINITY, sum = 0.0f;
  for (int j = threadIdx.x; j < visible; j += blockDim.x) {
    const bf16_t* k = KeyRow(kv, table, j, h);
    float dot = 0.0f;
    for (int x = 0; x < d; ++x) dot += qs[x] * __bfloat162float(k[x]);
    const float s = dot * params.scale;
    if (s > m) {
      sum = sum * __expf(m - s) + 1.0f;
      m = s;
    } else {
      sum += __expf(s - m);
    }
  }
  red_m[threadIdx.x] = m;
  red_s[threadIdx.x] = sum;
  __syncthreads();
  for (int stride = blockDim.x / 2; stride > 0; stride /= 2) {
    if (threadIdx.x < stride) {
      const float m1 = red_m[threadIdx.x], m2 = red_m[threadIdx.x + stride];
      const float mm = fmaxf(m1, m2);
      float s = 0.0f;
      if (m1 != -INFINITY) s += red_s[threadIdx.x] * __expf(m1 - mm);
      if (m2 != -INFINITY) s += red_s[threadIdx.x + stride] * __expf(m2 - mm);
      red_m[threadIdx.x] = mm;
      red_s[threadIdx.x] = s;
    }
    __syncthreads();
  }
  if (threadIdx.x == 0) lse[t * params.num_q_heads + qh] = red_m[0] + logf(red_s[0]);
}

__global__ void ScoreKernel(AttentionParams params, PagedKv<bf16_t> kv, const int32_t* table,
                            int kv_len, int n_new, const bf16_t* q, int64_t q_stride,
                            const float* lse, int num_scored, float* scores) {
  const int h = blockIdx.y, d = kv.head_dim;
  const int j = blockIdx.x * blockDim.x + threadIdx.x;
  const int group = params.num_q_heads / kv.num_kv_heads;
  const int rows = n_new * group;
  const int first_pos = kv_len - n_new;
  __shared__ float qs[kRowsPerStage][kMaxDim];
  __shared__ float ls[kRowsPerStage];
  const bf16_t* k = j < num_scored ? KeyRow(kv, table, j, h) : nullptr;
  float best = 0.0f;
  for (int r0 = 0; r0 < rows; r0 += kRowsPerStage) {
    const int nr = min(kRowsPerStage, rows - r0);
    __syncthreads();
    for (int i = threadIdx.x; i < nr * d; i += blockDim.x) {
      const int r = r0 + i / d, x = i % d;
      const int t = r / group, qh = h * group + r % group;
      qs[i / d][x] = __bfloat162float(q[int64_t{t} * q_stride + int64_t{qh} * d + x]);
    }
    if (threadIdx.x < nr) {
      const int r = r0 + threadIdx.x;
      ls[threadIdx.x] = lse[(r / group) * params.num_q_heads + h * group + r % group];
    }
    __syncthreads();
    if (k == nullptr) continue;
    for (int i = 0; i < nr; ++i) {
      const int t = (r0 + i) / group;
      if (j > first_pos + t) continue;  // causal: query t does not see entry j
      float dot = 0.0f;
      for (int x = 0; x < d; ++x) dot += qs[i][x] * __bfloat162float(k[x]);
      best = fmaxf(best, __expf(dot * params.scale - ls[i]));
    }
  }
  if (k != nullptr) scores[int64_t{h} * num_scored + j] = best;
}

}  // namespace

size_t AttentionScoresWorkspaceBytes(int32_t n_new, int32_t num_q_heads) {
  return static_cast<size_t>(n_new) * num_q_heads * sizeof(float);
}

Status AttentionScores(const AttentionParams& params, const PagedKv<bf16_t>& kv,
                       const int32_t* block_table, int32_t kv_len, int32_t n_new, const bf16_t* q,
                       int64_t q_token_stride, int32_t num_scored, float* scores, float* workspace,
                       cudaStream_t stream) {
  if (kv.head_dim < 1 || kv.head_dim > kMaxDim) {
    return Status::NotSupported("attention scores: head_dim above 256");
  }
  if (kv.num_kv_heads < 1 || params.num_q_heads % kv.num_kv_heads != 0) {
    return Status::InvalidArgument("attention scores: bad head counts");
  }
  if (n_new < 1 || kv_len < n_new || num_scored < 0 || num_scored > kv_len) {
    return Status::InvalidArgument("attention scores: bad n_new, kv_len or num_scored");
  }
  if (num_scored == 0) return Status::OK();
  LseKernel<<<dim3(n_new, params.num_q_heads), kLseThreads, 0, stream>>>(
      params, kv, block_table, kv_len, n_new, q, q_token_stride, workspace);
  KVKEEP_CUDA_LAUNCH_CHECK();
  const dim3 grid((num_scored + kScoreThreads - 1) / kScoreThreads, kv.num_kv_heads);
  ScoreKernel<<<grid, kScoreThreads, 0, stream>>>(params, kv, block_table, kv_len, n_new, q,
                                                  q_token_stride, workspace, num_scored, scores);
  KVKEEP_CUDA_LAUNCH_CHECK();
  return Status::OK();
}

}  // namespace kvkeep::cuda
