// CUDA model kernels; see ops.h.
#include <cmath>

#include "kernels/cuda/cuda_status.h"
#include "kernels/cuda/device_utils.cuh"
#include "kernels/cuda/ops.h"

namespace kvkeep::cuda {
namespace {

constexpr int kNormThreads = 256;

__global__ void AddRmsNormKernel(float* hidden, const bf16_t* delta, const bf16_t* weight, int dim,
                                 float eps, bf16_t* out) {
  const int64_t r = blockIdx.x;
  float* h = hidden + r * dim;
  float ss = 0.0f;
  for (int i = threadIdx.x; i < dim; i += blockDim.x) {
    float x = h[i];
    if (delta) {
      x += __bfloat162float(delta[r * dim + i]);
      h[i] = x;
    }
    ss += x * x;
  }
  ss = BlockSum(ss);
  const float inv = rsqrtf(ss / dim + eps);
  for (int i = threadIdx.x; i < dim; i += blockDim.x) {
    out[r * dim + i] = __float2bfloat16(h[i] * inv * __bfloat162float(weight[i]));
  }
}

__global__ void RopeKernel(bf16_t* x, int64_t stride, int num_heads, int head_dim, int rotary_dim,
                           const int32_t* positions, const float* inv_freq) {
  const int token = blockIdx.x;
  const int half = rotary_dim / 2;
  const float pos = static_cast<float>(positions[token]);
  for (int e = threadIdx.x; e < num_heads * half; e += blockDim.x) {
    const int h = e / half, i = e % half;
    bf16_t* row = x + token * stride + int64_t{h} * head_dim;
    const float angle = pos * inv_freq[i];
    const float c = cosf(angle), s = sinf(angle);
    const float a = __bfloat162float(row[i]), b = __bfloat162float(row[i + half]);
    row[i] = __float2bfloat16(a * c - b * s);
    row[i + half] = __float2bfloat16(b * c + a * s);
  }
}

__global__ void SiluMulKernel(const bf16_t* gate_up, int dim, bf16_t* out) {
  const int64_t r = blockIdx.y;
  for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < dim; i += gridDim.x * blockDim.x) {
    const float g = __bfloat162float(gate_up[r * 2 * dim + i]);
    const float u = __bfloat162float(gate_up[r * 2 * dim + dim + i]);
    out[r * dim + i] = __float2bfloat16(g / (1.0f + expf(-g)) * u);
  }
}

__global__ void EmbeddingKernel(const bf16_t* table, const int32_t* ids, int dim, float* out) {
  const int64_t t = blockIdx.x;
  const bf16_t* row = table + int64_t{ids[t]} * dim;
  for (int i = threadIdx.x; i < dim; i += blockDim.x) out[t * dim + i] = __bfloat162float(row[i]);
}

__global__ void GatherRowsKernel(const bf16_t* src, const int32_t* rows, int dim, bf16_t* dst) {
  const int64_t i = blockIdx.x;
  const bf16_t* s = src + int64_t{rows[i]} * dim;
  for (int j = threadIdx.x; j < dim; j += blockDim.x) dst[i * dim + j] = s[j];
}

// "a comes before b": larger value, then lower index. NaN never comes first.
__device__ __forceinline__ bool Before(float av, int ai, float bv, int bi) {
  if (isnan(av)) return false;
  if (isnan(bv)) return true;
  return av > bv || (av == bv && ai < bi);
}

// Block-wide best (value, index) under Before. All threads get the result.
__device__ void BlockBest(float& v, int& idx) {
  __shared__ float sv[32];
  __shared__ int si[32];
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) {
    const float ov = __shfl_xor_sync(0xffffffffu, v, o);
    const int oi = __shfl_xor_sync(0xffffffffu, idx, o);
    if (Before(ov, oi, v, idx)) {
      v = ov;
      idx = oi;
    }
  }
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  __syncthreads();
  if (lane == 0) {
    sv[warp] = v;
    si[warp] = idx;
  }
  __syncthreads();
  const int num_warps = blockDim.x / 32;
  v = lane < num_warps ? sv[lane] : NAN;
  idx = lane < num_warps ? si[lane] : INT_MAX;
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) {
    const float ov = __shfl_xor_sync(0xffffffffu, v, o);
    const int oi = __shfl_xor_sync(0xffffffffu, idx, o);
    if (Before(ov, oi, v, idx)) {
      v = ov;
      idx = oi;
    }
  }
}

constexpr int kSampleThreads = 1024;

__global__ void ArgmaxKernel(const float* logits, int vocab, int32_t* out) {
  const float* row = logits + int64_t{blockIdx.x} * vocab;
  float v = NAN;
  int idx = INT_MAX;
  for (int i = threadIdx.x; i < vocab; i += blockDim.x) {
    if (Before(row[i], i, v, idx)) {
      v = row[i];
      idx = i;
    }
  }
  BlockBest(v, idx);
  if (threadIdx.x == 0) out[blockIdx.x] = idx == INT_MAX ? 0 : idx;
}

__global__ void SampleKernel(const float* logits, int vocab, const float* temperature,
                             const int32_t* top_k, const float* top_p, const float* uniform,
                             int32_t* out, int32_t* cand_ids, float* cand_probs) {
  __shared__ int ids[kMaxDeviceTopK];
  __shared__ float vals[kMaxDeviceTopK];
  const int r = blockIdx.x;
  const float* row = logits + int64_t{r} * vocab;
  const int k = min(max(top_k[r], 1), kMaxDeviceTopK);
  // k rounds of "best element strictly after the previous pick" in the candidate order.
  float prev_v = INFINITY;
  int prev_i = -1;
  int found = 0;
  for (int round = 0; round < k; ++round) {
    float v = NAN;
    int idx = INT_MAX;
    for (int i = threadIdx.x; i < vocab; i += blockDim.x) {
      const float x = row[i];
      if (isnan(x) || !Before(prev_v, prev_i, x, i)) continue;
      if (Before(x, i, v, idx)) {
        v = x;
        idx = i;
      }
    }
    BlockBest(v, idx);
    if (idx == INT_MAX) break;  // fewer non-NaN logits than k
    if (threadIdx.x == 0) {
      ids[round] = idx;
      vals[round] = v;
    }
    prev_v = v;
    prev_i = idx;
    found = round + 1;
  }
  __syncthreads();
  if (threadIdx.x != 0) return;
  if (found == 0) {
    out[r] = 0;
    return;
  }
  // Same arithmetic as the CPU sampler: scaled logits in float, softmax in double.
  const float inv_t = 1.0f / temperature[r];
  double p[kMaxDeviceTopK];
  double sum = 0.0;
  const float scaled0 = vals[0] * inv_t;
  for (int i = 0; i < found; ++i) {
    const float scaled = vals[i] * inv_t;
    p[i] = exp(double{scaled} - double{scaled0});
    sum += p[i];
  }
  for (int i = 0; i < found; ++i) p[i] /= sum;
  int keep = found;
  if (top_p[r] < 1.0f) {
    double mass = 0.0;
    int n = 0;
    while (n < found) {
      mass += p[n++];
      if (mass >= top_p[r]) break;
    }
    keep = max(n, 1);
    sum = 0.0;
    for (int i = 0; i < keep; ++i) sum += p[i];
    for (int i = 0; i < keep; ++i) p[i] /= sum;
  }
  const double u = uniform[r];
  double acc = 0.0;
  int pick = ids[keep - 1];
  for (int i = 0; i < keep; ++i) {
    acc += static_cast<float>(p[i]);
    if (u < acc) {
      pick = ids[i];
      break;
    }
  }
  out[r] = pick;
  if (cand_ids) {
    for (int i = 0; i < kMaxDeviceTopK; ++i) {
      cand_ids[int64_t{r} * kMaxDeviceTopK + i] = i < keep ? ids[i] : -1;
      cand_probs[int64_t{r} * kMaxDeviceTopK + i] = i < keep ? static_cast<float>(p[i]) : 0.0f;
    }
  }
}

}  // namespace

Status AddRmsNorm(float* hidden, const bf16_t* delta, const bf16_t* weight, int32_t rows,
                  int32_t dim, float eps, bf16_t* out, cudaStream_t stream) {
  if (rows == 0) return Status::OK();
  AddRmsNormKernel<<<rows, kNormThreads, 0, stream>>>(hidden, delta, weight, dim, eps, out);
  KVKEEP_CUDA_LAUNCH_CHECK();
  return Status::OK();
}

Status ApplyRope(bf16_t* x, int64_t x_token_stride, int32_t num_tokens, int32_t num_heads,
                 int32_t head_dim, int32_t rotary_dim, const int32_t* positions,
                 const float* inv_freq, cudaStream_t stream) {
  if (num_tokens == 0) return Status::OK();
  if (rotary_dim <= 0 || rotary_dim > head_dim || rotary_dim % 2 != 0) {
    return Status::InvalidArgument("ApplyRope: bad rotary_dim");
  }
  RopeKernel<<<num_tokens, 256, 0, stream>>>(x, x_token_stride, num_heads, head_dim, rotary_dim,
                                             positions, inv_freq);
  KVKEEP_CUDA_LAUNCH_CHECK();
  return Status::OK();
}

Status SiluMul(const bf16_t* gate_up, int32_t rows, int32_t dim, bf16_t* out, cudaStream_t stream) {
  if (rows == 0) return Status::OK();
  const int x = (dim + 255) / 256 < 8 ? (dim + 255) / 256 : 8;
  SiluMulKernel<<<dim3(x, rows), 256, 0, stream>>>(gate_up, dim, out);
  KVKEEP_CUDA_LAUNCH_CHECK();
  return Status::OK();
}

Status EmbeddingLookup(const bf16_t* table, const int32_t* ids, int32_t num_tokens, int32_t dim,
                       float* hidden, cudaStream_t stream) {
  if (num_tokens == 0) return Status::OK();
  EmbeddingKernel<<<num_tokens, 256, 0, stream>>>(table, ids, dim, hidden);
  KVKEEP_CUDA_LAUNCH_CHECK();
  return Status::OK();
}

Status GatherRows(const bf16_t* src, const int32_t* rows, int32_t num_rows, int32_t dim,
                  bf16_t* dst, cudaStream_t stream) {
  if (num_rows == 0) return Status::OK();
  GatherRowsKernel<<<num_rows, 256, 0, stream>>>(src, rows, dim, dst);
  KVKEEP_CUDA_LAUNCH_CHECK();
  return Status::OK();
}

Status Argmax(const float* logits, int32_t rows, int32_t vocab, int32_t* out, cudaStream_t stream) {
  if (rows == 0) return Status::OK();
  ArgmaxKernel<<<rows, kSampleThreads, 0, stream>>>(logits, vocab, out);
  KVKEEP_CUDA_LAUNCH_CHECK();
  return Status::OK();
}

Status SampleTopKTopP(const float* logits, int32_t rows, int32_t vocab, const float* temperature,
                      const int32_t* top_k, const float* top_p, const float* uniform, int32_t* out,
                      int32_t* cand_ids, float* cand_probs, cudaStream_t stream) {
  if (rows == 0) return Status::OK();
  SampleKernel<<<rows, kSampleThreads, 0, stream>>>(logits, vocab, temperature, top_k, top_p,
                                                    uniform, out, cand_ids, cand_probs);
  KVKEEP_CUDA_LAUNCH_CHECK();
  return Status::OK();
}

}  // namespace kvkeep::cuda
