#include "engine/cuda/cuda_device.h"

#include "kernels/cuda/cuda_status.h"

namespace kvkeep {

Result<std::unique_ptr<CudaDevice>> CudaDevice::Create(int ordinal) {
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess || count == 0) {
    cudaGetLastError();  // clear the sticky "no device" error
    return Status::Unavailable("no CUDA device");
  }
  if (ordinal < 0 || ordinal >= count) {
    return Status::InvalidArgument("CUDA device " + std::to_string(ordinal) + " of " +
                                   std::to_string(count));
  }
  std::unique_ptr<CudaDevice> d(new CudaDevice());
  d->ordinal_ = ordinal;
  KVKEEP_CUDA_RETURN(cudaSetDevice(ordinal));
  cudaDeviceProp prop;
  KVKEEP_CUDA_RETURN(cudaGetDeviceProperties(&prop, ordinal));
  d->num_sms_ = prop.multiProcessorCount;
  d->device_name_ = prop.name;
  KVKEEP_CUDA_RETURN(cudaStreamCreateWithFlags(&d->compute_, cudaStreamNonBlocking));
  KVKEEP_CUDA_RETURN(cudaStreamCreateWithFlags(&d->swap_out_, cudaStreamNonBlocking));
  KVKEEP_CUDA_RETURN(cudaStreamCreateWithFlags(&d->swap_in_, cudaStreamNonBlocking));
  return std::move(d);
}

CudaDevice::~CudaDevice() {
  if (compute_) cudaStreamDestroy(compute_);
  if (swap_out_) cudaStreamDestroy(swap_out_);
  if (swap_in_) cudaStreamDestroy(swap_in_);
}

Status CudaDevice::MemoryInfo(size_t* free_bytes, size_t* total_bytes) const {
  KVKEEP_CUDA_RETURN(cudaMemGetInfo(free_bytes, total_bytes));
  return Status::OK();
}

Result<void*> CudaDevice::Allocate(size_t bytes) {
  void* p = nullptr;
  const cudaError_t err = cudaMalloc(&p, bytes);
  if (err != cudaSuccess) {
    cudaGetLastError();
    return Status::ResourceExhausted("cudaMalloc(" + std::to_string(bytes) +
                                     "): " + cudaGetErrorString(err));
  }
  return p;
}

void CudaDevice::Free(void* ptr) {
  if (ptr) cudaFree(ptr);
}

Result<void*> CudaDevice::AllocatePinned(size_t bytes) {
  void* p = nullptr;
  const cudaError_t err = cudaHostAlloc(&p, bytes, cudaHostAllocDefault);
  if (err != cudaSuccess) {
    cudaGetLastError();
    return Status::ResourceExhausted("cudaHostAlloc(" + std::to_string(bytes) +
                                     "): " + cudaGetErrorString(err));
  }
  return p;
}

void CudaDevice::FreePinned(void* ptr) {
  if (ptr) cudaFreeHost(ptr);
}

Status CudaDevice::CopyHostToDevice(void* dst, const void* src, size_t bytes) {
  KVKEEP_CUDA_RETURN(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, compute_));
  KVKEEP_CUDA_RETURN(cudaStreamSynchronize(compute_));
  return Status::OK();
}

Status CudaDevice::CopyDeviceToHost(void* dst, const void* src, size_t bytes) {
  KVKEEP_CUDA_RETURN(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToHost, compute_));
  KVKEEP_CUDA_RETURN(cudaStreamSynchronize(compute_));
  return Status::OK();
}

Status CudaDevice::CopyDeviceToDevice(void* dst, const void* src, size_t bytes) {
  KVKEEP_CUDA_RETURN(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, compute_));
  return Status::OK();
}

Status CudaDevice::Synchronize() {
  KVKEEP_CUDA_RETURN(cudaStreamSynchronize(compute_));
  KVKEEP_CUDA_RETURN(cudaStreamSynchronize(swap_out_));
  KVKEEP_CUDA_RETURN(cudaStreamSynchronize(swap_in_));
  return Status::OK();
}

}  // namespace kvkeep
