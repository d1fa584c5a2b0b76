// CudaDevice: the Device seam (base/device.h) over one CUDA GPU. Allocations are plain
// cudaMalloc (never managed memory); copies are cudaMemcpyAsync on the device's compute
// stream followed by a stream sync, so they are ordered after queued kernels. Two more
// non-blocking streams carry swaps, one per direction, so that they overlap compute and
// each other (the host link is full duplex). Pinned host buffers come from
// AllocatePinned. This is the only place in kvkeep that calls cudaMalloc.
//
// Thread-safety: owned by one engine thread; not thread-safe.
#pragma once

#include <cuda_runtime.h>

#include <memory>
#include <string>

#include "base/device.h"

namespace kvkeep {

class CudaDevice final : public Device {
 public:
  // Selects GPU `ordinal` and creates its streams. Unavailable when there is no GPU.
  static Result<std::unique_ptr<CudaDevice>> Create(int ordinal);
  ~CudaDevice() override;
  CudaDevice(const CudaDevice&) = delete;
  CudaDevice& operator=(const CudaDevice&) = delete;

  DeviceKind kind() const override { return DeviceKind::kCuda; }
  std::string name() const override { return "cuda:" + std::to_string(ordinal_); }
  Status MemoryInfo(size_t* free_bytes, size_t* total_bytes) const override;
  Result<void*> Allocate(size_t bytes) override;
  void Free(void* ptr) override;
  Status CopyHostToDevice(void* dst, const void* src, size_t bytes) override;
  Status CopyDeviceToHost(void* dst, const void* src, size_t bytes) override;
  Status CopyDeviceToDevice(void* dst, const void* src, size_t bytes) override;
  Status Synchronize() override;

  // Page-locked host memory (for staging and the host KV tier); FreePinned releases it.
  Result<void*> AllocatePinned(size_t bytes);
  void FreePinned(void* ptr);

  cudaStream_t compute_stream() const { return compute_; }
  cudaStream_t swap_out_stream() const { return swap_out_; }  // device to host
  cudaStream_t swap_in_stream() const { return swap_in_; }    // host to device
  int num_sms() const { return num_sms_; }
  const std::string& device_name() const { return device_name_; }

 private:
  CudaDevice() = default;
  int ordinal_ = 0;
  int num_sms_ = 0;
  std::string device_name_;
  cudaStream_t compute_ = nullptr;
  cudaStream_t swap_out_ = nullptr;
  cudaStream_t swap_in_ = nullptr;
};

}  // namespace kvkeep
