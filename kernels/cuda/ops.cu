// CUDA model kernels; see ops.h.
#include <algorithm>
#include <cmath>
#include <cstdint>

#include "kernels/cuda/cuda_status.h"
#include "kernels/cuda/device_utils.cuh"
#include "kernels/cuda/ops.h"

namespace kvkeep::cuda {
namespace {

constexpr int kNormThreads = 256;
constexpr int kNormMaxThreads = 1024;

// Generic path (any dim, any alignment): strided scalar loop, two passes over the row.
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

// Fast path for dim % 8 == 0 and 16-byte aligned rows. One CTA per row; thread j owns the
// 8-element chunks j, j + blockDim.x, ... (at most kChunks) and holds them in registers, so
// every load of the row (hidden, delta, weight) is issued up front, the row is read once and
// the CTA reduces once. Decode (rows = 1) is pure latency: this makes it one memory round
// trip plus one block reduction instead of dim / blockDim dependent strided iterations.
template <int kChunks>
__global__ void __launch_bounds__(kNormMaxThreads)
    AddRmsNormVecKernel(float* hidden, const bf16_t* delta, const bf16_t* weight, int dim,
                        float eps, bf16_t* out) {
  const int64_t r = blockIdx.x;
  const int chunks = dim / 8;
  float4* h = reinterpret_cast<float4*>(hidden + r * dim);
  const uint4* d = delta ? reinterpret_cast<const uint4*>(delta + r * dim) : nullptr;
  const uint4* w = reinterpret_cast<const uint4*>(weight);
  uint4* o = reinterpret_cast<uint4*>(out + r * dim);
  float x[kChunks][8];
  uint4 wv[kChunks], dv[kChunks];
  // Every load before the first store (hidden may be written below).
#pragma unroll
  for (int k = 0; k < kChunks; ++k) {
    const int c = threadIdx.x + k * blockDim.x;
    if (c < chunks) {
      const float4 a = h[2 * c], b = h[2 * c + 1];
      x[k][0] = a.x;
      x[k][1] = a.y;
      x[k][2] = a.z;
      x[k][3] = a.w;
      x[k][4] = b.x;
      x[k][5] = b.y;
      x[k][6] = b.z;
      x[k][7] = b.w;
      wv[k] = w[c];
      if (d) dv[k] = d[c];
    }
  }
  float ss = 0.0f;
#pragma unroll
  for (int k = 0; k < kChunks; ++k) {
    const int c = threadIdx.x + k * blockDim.x;
    if (c < chunks) {
      if (d) {
        float df[8];
        Bf16x8ToFloat(dv[k], df);
#pragma unroll
        for (int j = 0; j < 8; ++j) x[k][j] += df[j];
        h[2 * c] = make_float4(x[k][0], x[k][1], x[k][2], x[k][3]);
        h[2 * c + 1] = make_float4(x[k][4], x[k][5], x[k][6], x[k][7]);
      }
#pragma unroll
      for (int j = 0; j < 8; ++j) ss += x[k][j] * x[k][j];
    }
  }
  ss = BlockSum(ss);
  const float inv = rsqrtf(ss / dim + eps);
#pragma unroll
  for (int k = 0; k < kChunks; ++k) {
    const int c = threadIdx.x + k * blockDim.x;
    if (c < chunks) {
      float wf[8], y[8];
      Bf16x8ToFloat(wv[k], wf);
#pragma unroll
      for (int j = 0; j < 8; ++j) y[j] = x[k][j] * inv * wf[j];
      o[c] = FloatToBf16x8(y);
    }
  }
}

// One thread per rotary pair (token, head, i): decode has a single token, so parallelism
// has to come from heads x pairs rather than from tokens.
__global__ void RopeKernel(bf16_t* x, int64_t stride, int num_heads, int head_dim, int half,
                           int64_t total, const int32_t* positions, const float* inv_freq) {
  const int64_t e = int64_t{blockIdx.x} * blockDim.x + threadIdx.x;
  if (e >= total) return;
  const int64_t th = e / half;  // token * num_heads + head
  const int i = static_cast<int>(e - th * half);
  const int64_t token = th / num_heads;
  const int h = static_cast<int>(th - token * num_heads);
  bf16_t* row = x + token * stride + int64_t{h} * head_dim;
  const float a = __bfloat162float(row[i]), b = __bfloat162float(row[i + half]);
  const float angle = static_cast<float>(positions[token]) * inv_freq[i];
  float s, c;
  sincosf(angle, &s, &c);
  // Explicitly rounded products (no FMA contraction) so RopeWriteKv (kv_ops.cu) computes
  // bit-identical values.
  row[i] = __float2bfloat16(__fsub_rn(__fmul_rn(a, c), __fmul_rn(b, s)));
  row[i + half] = __float2bfloat16(__fadd_rn(__fmul_rn(b, c), __fmul_rn(a, s)));
}

__device__ __forceinline__ float Silu(float g) { return g / (1.0f + expf(-g)); }

// Generic path: one element per thread, grid-stride over rows * dim.
__global__ void SiluMulKernel(const bf16_t* gate_up, int dim, int64_t total, bf16_t* out) {
  for (int64_t e = int64_t{blockIdx.x} * blockDim.x + threadIdx.x; e < total;
       e += int64_t{gridDim.x} * blockDim.x) {
    const int64_t r = e / dim, i = e - r * dim;
    const float g = __bfloat162float(gate_up[r * 2 * dim + i]);
    const float u = __bfloat162float(gate_up[r * 2 * dim + dim + i]);
    out[e] = __float2bfloat16(Silu(g) * u);
  }
}

// dim % 8 == 0 and 16-byte aligned: one 8-element chunk per thread, grid-stride over
// rows * chunks.
__global__ void SiluMulVecKernel(const uint4* gate_up, int chunks, int64_t total, uint4* out) {
  for (int64_t e = int64_t{blockIdx.x} * blockDim.x + threadIdx.x; e < total;
       e += int64_t{gridDim.x} * blockDim.x) {
    const int64_t r = e / chunks, c = e - r * chunks;
    float g[8], u[8], y[8];
    Bf16x8ToFloat(gate_up[r * 2 * chunks + c], g);
    Bf16x8ToFloat(gate_up[r * 2 * chunks + chunks + c], u);
#pragma unroll
    for (int j = 0; j < 8; ++j) y[j] = Silu(g[j]) * u[j];
    out[e] = FloatToBf16x8(y);
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

bool Aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

template <int kChunks>
void LaunchAddRmsNormVec(float* hidden, const bf16_t* delta, const bf16_t* weight, int32_t rows,
                         int32_t dim, int threads, float eps, bf16_t* out, cudaStream_t stream) {
  AddRmsNormVecKernel<kChunks><<<rows, threads, 0, stream>>>(hidden, delta, weight, dim, eps, out);
}

}  // namespace

Status AddRmsNorm(float* hidden, const bf16_t* delta, const bf16_t* weight, int32_t rows,
                  int32_t dim, float eps, bf16_t* out, cudaStream_t stream) {
  if (rows == 0) return Status::OK();
  if (dim <= 0) return Status::InvalidArgument("AddRmsNorm: dim must be positive");
  // The vector path holds the row in registers: at 64 registers a thread (1024 threads) that
  // is up to 2 chunks a thread, dim <= 16384; past that it would spill, so wider rows take
  // the generic path.
  const int chunks = dim / 8;
  const bool vec = dim % 8 == 0 && chunks <= 2 * kNormMaxThreads && Aligned16(hidden) &&
                   Aligned16(delta) && Aligned16(weight) && Aligned16(out);
  if (!vec) {
    AddRmsNormKernel<<<rows, kNormThreads, 0, stream>>>(hidden, delta, weight, dim, eps, out);
  } else if (chunks <= kNormMaxThreads) {  // one chunk a thread
    LaunchAddRmsNormVec<1>(hidden, delta, weight, rows, dim, (chunks + 31) / 32 * 32, eps, out,
                           stream);
  } else {
    LaunchAddRmsNormVec<2>(hidden, delta, weight, rows, dim, kNormMaxThreads, eps, out, stream);
  }
  KVKEEP_CUDA_LAUNCH_CHECK();
  return Status::OK();
}

Status ApplyRope(bf16_t* x, int64_t x_token_stride, int32_t num_tokens, int32_t num_heads,
                 int32_t head_dim, int32_t rotary_dim, const int32_t* positions,
                 const float* inv_freq, cudaStream_t stream) {
  if (num_tokens == 0 || num_heads == 0) return Status::OK();
  if (rotary_dim <= 0 || rotary_dim > head_dim || rotary_dim % 2 != 0) {
    return Status::InvalidArgument("ApplyRope: bad rotary_dim");
  }
  const int half = rotary_dim / 2;
  const int64_t total = int64_t{num_tokens} * num_heads * half;
  constexpr int kThreads = 128;
  const int64_t blocks = (total + kThreads - 1) / kThreads;
  if (blocks > INT32_MAX) return Status::InvalidArgument("ApplyRope: too many tokens");
  RopeKernel<<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>(
      x, x_token_stride, num_heads, head_dim, half, total, positions, inv_freq);
  KVKEEP_CUDA_LAUNCH_CHECK();
  return Status::OK();
}

Status SiluMul(const bf16_t* gate_up, int32_t rows, int32_t dim, bf16_t* out, cudaStream_t stream) {
  if (rows == 0 || dim == 0) return Status::OK();
  constexpr int kThreads = 128;
  constexpr int64_t kMaxBlocks = 16384;  // grid-stride beyond this
  if (dim % 8 == 0 && Aligned16(gate_up) && Aligned16(out)) {
    const int chunks = dim / 8;
    const int64_t total = int64_t{rows} * chunks;
    const int64_t blocks = std::min(kMaxBlocks, (total + kThreads - 1) / kThreads);
    SiluMulVecKernel<<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>(
        reinterpret_cast<const uint4*>(gate_up), chunks, total, reinterpret_cast<uint4*>(out));
  } else {
    const int64_t total = int64_t{rows} * dim;
    const int64_t blocks = std::min(kMaxBlocks, (total + kThreads - 1) / kThreads);
    SiluMulKernel<<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>(gate_up, dim, total, out);
  }
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
