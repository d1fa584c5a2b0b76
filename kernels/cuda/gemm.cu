// cuBLAS bf16 GEMM wrapper; see gemm.h.
#include "kernels/cuda/cuda_status.h"
#include "kernels/cuda/gemm.h"

namespace kvkeep::cuda {

Result<std::unique_ptr<Gemm>> Gemm::Create(cudaStream_t stream) {
  std::unique_ptr<Gemm> g(new Gemm());
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

Status Gemm::Run(const __nv_bfloat16* x, const __nv_bfloat16* w, void* y, bool y_f32, int m, int n,
                 int k) {
  if (m == 0) return Status::OK();
  const float alpha = 1.0f, beta = 0.0f;
  // Column-major view: y^T[n][m] = w^T(op T of the k x n matrix w) * x^T (k x m).
  KVKEEP_CUBLAS_RETURN(cublasGemmEx(
      handle_, CUBLAS_OP_T, CUBLAS_OP_N, n, m, k, &alpha, w, CUDA_R_16BF, k, x, CUDA_R_16BF, k,
      &beta, y, y_f32 ? CUDA_R_32F : CUDA_R_16BF, n, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
  return Status::OK();
}

}  // namespace kvkeep::cuda
