// CUDA error handling for kvkeep's CUDA kernels and backend: every CUDA and cuBLAS call is
// checked and turned into a Status (Internal, naming the call, file and line). Host-only.
#pragma once

#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <string>

#include "base/status.h"

namespace kvkeep::cuda {

inline Status CudaStatus(cudaError_t err, const char* what, const char* file, int line) {
  if (err == cudaSuccess) return Status::OK();
  return Status::Internal(std::string(what) + ": " + cudaGetErrorString(err) + " at " + file + ":" +
                          std::to_string(line));
}

inline Status CublasStatus(cublasStatus_t err, const char* what, const char* file, int line) {
  if (err == CUBLAS_STATUS_SUCCESS) return Status::OK();
  return Status::Internal(std::string(what) + ": cublas status " +
                          std::to_string(static_cast<int>(err)) + " at " + file + ":" +
                          std::to_string(line));
}

}  // namespace kvkeep::cuda

// Returns a Status from the enclosing function when a CUDA call fails.
#define KVKEEP_CUDA_RETURN(expr) \
  RETURN_IF_ERROR(::kvkeep::cuda::CudaStatus((expr), #expr, __FILE__, __LINE__))
#define KVKEEP_CUBLAS_RETURN(expr) \
  RETURN_IF_ERROR(::kvkeep::cuda::CublasStatus((expr), #expr, __FILE__, __LINE__))
// After a kernel launch: returns the launch error, if any (does not synchronize).
#define KVKEEP_CUDA_LAUNCH_CHECK() KVKEEP_CUDA_RETURN(cudaGetLastError())
