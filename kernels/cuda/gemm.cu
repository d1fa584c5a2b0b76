// bf16 GEMMs: a bandwidth-bound GEMV kernel for decode-sized m, cuBLAS otherwise; see gemm.h.
#include <cstdint>

#include "kernels/cuda/cuda_status.h"
#include "kernels/cuda/device_utils.cuh"
#include "kernels/cuda/gemm.h"

namespace kvkeep::cuda {
namespace {

constexpr int kGemvWarps = 4;  // warps per CTA; small CTAs keep the tail of the grid short

// 16-byte weight load that skips L1: each weight byte is read once, and L1 is left to x,
// which every warp on the SM reads.
__device__ __forceinline__ uint4 LoadStreaming(const uint4* p) {
  uint4 v;
  asm volatile("ld.global.nc.L1::no_allocate.v4.u32 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
               : "l"(p));
  return v;
}

__device__ __forceinline__ void Store(float* p, float v) { *p = v; }
__device__ __forceinline__ void Store(__nv_bfloat16* p, float v) { *p = __float2bfloat16_rn(v); }

// acc[r][c] += x[r][8 * i, 8 * i + 8) . w_c[8 * i, 8 * i + 8) for the kCols weight chunks wv.
template <int kM, int kCols>
__device__ __forceinline__ void GemvChunk(const uint4* __restrict__ x, int kc, int i,
                                          const uint4 (&wv)[kCols], float (&acc)[kM][kCols]) {
  float wf[kCols][8];
#pragma unroll
  for (int c = 0; c < kCols; ++c) Bf16x8ToFloat(wv[c], wf[c]);
#pragma unroll
  for (int r = 0; r < kM; ++r) {
    float xf[8];
    Bf16x8ToFloat(__ldg(x + size_t(r) * kc + i), xf);
#pragma unroll
    for (int c = 0; c < kCols; ++c) {
#pragma unroll
      for (int j = 0; j < 8; ++j) acc[r][c] = fmaf(xf[j], wf[c][j], acc[r][c]);
    }
  }
}

// y[kM][n] = x[kM][k] * w[n][k]^T with kc = k / 8 16-byte chunks per row. Each warp owns kCols
// consecutive rows of w (output columns); lane l reads chunks l, l + 32, ... of each, kUnroll
// chunks per row in flight, and the matching chunks of the kM rows of x, so one x load serves
// kCols weight loads. fp32 accumulation, warp-shuffle reduction, no split-K. Launch bounds:
// m = 1 is held to 64 registers (8 CTAs, 32 warps per SM); larger m get no minimum, since
// ptxas's default register target spills there.
template <int kM, int kCols, int kUnroll, typename OutT>
__global__ void __launch_bounds__(kGemvWarps * 32, kM == 1 ? 8 : 1)
    GemvKernel(const uint4* __restrict__ x, const uint4* __restrict__ w, OutT* __restrict__ y,
               int n, int kc) {
  const int lane = threadIdx.x % 32;
  const int n0 = (blockIdx.x * kGemvWarps + threadIdx.x / 32) * kCols;
  if (n0 >= n) return;  // whole warps only, before any shuffle
  const uint4* wr[kCols];
#pragma unroll
  for (int c = 0; c < kCols; ++c) {
    // The last warp may own rows past n: it re-reads row n - 1 for them and stores nothing.
    wr[c] = w + size_t(min(n0 + c, n - 1)) * kc;
  }
  float acc[kM][kCols];
#pragma unroll
  for (int r = 0; r < kM; ++r) {
#pragma unroll
    for (int c = 0; c < kCols; ++c) acc[r][c] = 0.0f;
  }
  int i = lane;
  constexpr int kStep = 32 * kUnroll;
  // Full groups of kUnroll chunks per row, double-buffered: the loads of the next group are
  // issued before the current one is consumed, so that kUnroll * kCols (up to twice that)
  // 16-byte loads per lane are in flight.
  if (i + 32 * (kUnroll - 1) < kc) {
    uint4 cur[kUnroll][kCols];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
#pragma unroll
      for (int c = 0; c < kCols; ++c) cur[u][c] = LoadStreaming(wr[c] + i + 32 * u);
    }
    for (; i + kStep + 32 * (kUnroll - 1) < kc; i += kStep) {
      uint4 next[kUnroll][kCols];
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) {
#pragma unroll
        for (int c = 0; c < kCols; ++c) next[u][c] = LoadStreaming(wr[c] + i + kStep + 32 * u);
      }
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) GemvChunk<kM, kCols>(x, kc, i + 32 * u, cur[u], acc);
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) {
#pragma unroll
        for (int c = 0; c < kCols; ++c) cur[u][c] = next[u][c];
      }
    }
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) GemvChunk<kM, kCols>(x, kc, i + 32 * u, cur[u], acc);
    i += kStep;
  }
  for (; i < kc; i += 32) {  // tail: fewer than kUnroll chunks left for this lane
    uint4 wv[kCols];
#pragma unroll
    for (int c = 0; c < kCols; ++c) wv[c] = LoadStreaming(wr[c] + i);
    GemvChunk<kM, kCols>(x, kc, i, wv, acc);
  }
#pragma unroll
  for (int r = 0; r < kM; ++r) {
#pragma unroll
    for (int c = 0; c < kCols; ++c) {
      const float v = WarpSum(acc[r][c]);
      if (lane == (r * kCols + c) % 32 && n0 + c < n) Store(y + size_t(r) * n + n0 + c, v);
    }
  }
}

template <int kM, typename OutT>
Status LaunchGemv(const __nv_bfloat16* x, const __nv_bfloat16* w, void* y, int n, int k,
                  cudaStream_t stream) {
  // Four weight chunks per group (kUnroll * kCols), double-buffered: 4 to 8 16-byte loads in
  // flight per lane at 62 registers (m = 1) to 132 (m = 8), no spills (sm_90a). m = 1: two columns
  // per warp, so that one x load serves two weight loads while n = 4096 still gives 2048 warps. m >
  // 1: four columns per warp, so that the m x loads per chunk stay near the weight loads.
  constexpr int kCols = kM == 1 ? 2 : 4;
  constexpr int kUnroll = kM == 1 ? 2 : 1;
  const int warps = (n + kCols - 1) / kCols;
  const int blocks = (warps + kGemvWarps - 1) / kGemvWarps;
  GemvKernel<kM, kCols, kUnroll, OutT><<<blocks, kGemvWarps * 32, 0, stream>>>(
      reinterpret_cast<const uint4*>(x), reinterpret_cast<const uint4*>(w), static_cast<OutT*>(y),
      n, k / 8);
  KVKEEP_CUDA_LAUNCH_CHECK();
  return Status::OK();
}

template <typename OutT>
Status DispatchGemv(const __nv_bfloat16* x, const __nv_bfloat16* w, void* y, int m, int n, int k,
                    cudaStream_t stream) {
  switch (m) {
    case 1:
      return LaunchGemv<1, OutT>(x, w, y, n, k, stream);
    case 2:
      return LaunchGemv<2, OutT>(x, w, y, n, k, stream);
    case 3:
      return LaunchGemv<3, OutT>(x, w, y, n, k, stream);
    case 4:
      return LaunchGemv<4, OutT>(x, w, y, n, k, stream);
    case 5:
      return LaunchGemv<5, OutT>(x, w, y, n, k, stream);
    case 6:
      return LaunchGemv<6, OutT>(x, w, y, n, k, stream);
    case 7:
      return LaunchGemv<7, OutT>(x, w, y, n, k, stream);
    case 8:
      return LaunchGemv<8, OutT>(x, w, y, n, k, stream);
  }
  return Status::Internal("gemv: unsupported m " + std::to_string(m));
}

}  // namespace

Result<std::unique_ptr<Gemm>> Gemm::Create(cudaStream_t stream) {
  std::unique_ptr<Gemm> g(new Gemm());
  g->stream_ = stream;
  KVKEEP_CUBLAS_RETURN(cublasCreate(&g->handle_));
  KVKEEP_CUBLAS_RETURN(cublasSetStream(g->handle_, stream));
  return std::move(g);
}

Gemm::~Gemm() {
  if (handle_) cublasDestroy(handle_);
}

Status Gemm::SetWorkspace(void* workspace, size_t bytes) {
  KVKEEP_CUBLAS_RETURN(cublasSetWorkspace(handle_, workspace, bytes));
  return Status::OK();
}

bool Gemm::UsesGemv(const void* x, const void* w, int m, int k) {
  const auto aligned = [](const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; };
  return m >= 1 && m <= kGemvMaxRows && k > 0 && k % 8 == 0 && aligned(x) && aligned(w);
}

Status Gemm::Run(const __nv_bfloat16* x, const __nv_bfloat16* w, void* y, bool y_f32, int m, int n,
                 int k) {
  if (m == 0) return Status::OK();
  if (UsesGemv(x, w, m, k)) {
    if (n == 0) return Status::OK();
    return y_f32 ? DispatchGemv<float>(x, w, y, m, n, k, stream_)
                 : DispatchGemv<__nv_bfloat16>(x, w, y, m, n, k, stream_);
  }
  return RunCublas(x, w, y, y_f32, m, n, k);
}

Status Gemm::RunCublas(const __nv_bfloat16* x, const __nv_bfloat16* w, void* y, bool y_f32, int m,
                       int n, int k) {
  if (m == 0) return Status::OK();
  const float alpha = 1.0f, beta = 0.0f;
  // Column-major view: y^T[n][m] = w^T(op T of the k x n matrix w) * x^T (k x m).
  KVKEEP_CUBLAS_RETURN(cublasGemmEx(
      handle_, CUBLAS_OP_T, CUBLAS_OP_N, n, m, k, &alpha, w, CUDA_R_16BF, k, x, CUDA_R_16BF, k,
      &beta, y, y_f32 ? CUDA_R_32F : CUDA_R_16BF, n, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
  return Status::OK();
}

}  // namespace kvkeep::cuda
