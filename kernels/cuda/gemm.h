// bf16 GEMMs (fp32 accumulate): y[m][n] = x[m][k] * w[n][k]^T, the nn.Linear convention, with
// w as stored in the checkpoint. Decode-sized calls (m <= kGemvMaxRows) run a bandwidth-bound
// GEMV kernel that streams w once; everything else goes through cuBLAS. One object per stream
// owner; all work is asynchronous on the stream given to Create and graph-capturable.
//
// Thread-safety: not thread-safe; owned by the engine thread.
#pragma once

#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <memory>

#include "base/status.h"

namespace kvkeep::cuda {

class Gemm {
 public:
  // Largest m that takes the GEMV path.
  static constexpr int kGemvMaxRows = 8;

  static Result<std::unique_ptr<Gemm>> Create(cudaStream_t stream);
  ~Gemm();
  Gemm(const Gemm&) = delete;
  Gemm& operator=(const Gemm&) = delete;

  // Gives cuBLAS a fixed workspace (device memory owned by the caller), so that GEMMs can
  // be captured in CUDA graphs without cuBLAS allocating.
  Status SetWorkspace(void* workspace, size_t bytes);

  // y is bf16 (y_f32 == false) or fp32 (y_f32 == true); row-major, contiguous.
  Status Run(const __nv_bfloat16* x, const __nv_bfloat16* w, void* y, bool y_f32, int m, int n,
             int k);

  // Run through cuBLAS whatever the shape (for comparisons; Run picks the path itself).
  Status RunCublas(const __nv_bfloat16* x, const __nv_bfloat16* w, void* y, bool y_f32, int m,
                   int n, int k);

  // Whether Run takes the GEMV path for these arguments: 1 <= m <= kGemvMaxRows, k % 8 == 0
  // and x, w 16-byte aligned (rows are read as 8-element vectors).
  static bool UsesGemv(const void* x, const void* w, int m, int k);

 private:
  Gemm() = default;
  cublasHandle_t handle_ = nullptr;
  cudaStream_t stream_ = nullptr;
};

}  // namespace kvkeep::cuda
