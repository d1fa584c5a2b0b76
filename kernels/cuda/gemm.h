// bf16 GEMMs through cuBLAS (fp32 accumulate): y[m][n] = x[m][k] * w[n][k]^T, the
// nn.Linear convention, with w as stored in the checkpoint. One handle per stream owner.
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

 private:
  Gemm() = default;
  cublasHandle_t handle_ = nullptr;
};

}  // namespace kvkeep::cuda
