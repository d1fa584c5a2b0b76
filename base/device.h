// Device: the seam between kvkeep and the memory of whatever runs the model. The CPU
// backend uses HostDevice; the CUDA backend implements the same interface over
// cudaMalloc/cudaMemcpyAsync on its own streams. No module calls cudaMalloc directly.
//
// Thread-safety: a Device is owned by one engine thread; not thread-safe.
#pragma once

#include <cstddef>
#include <string>

#include "base/status.h"

namespace kvkeep {

enum class DeviceKind { kHost, kCuda };

class Device {
 public:
  virtual ~Device() = default;
  virtual DeviceKind kind() const = 0;
  virtual std::string name() const = 0;
  // Total and currently free bytes of device memory (host: physical memory).
  virtual Status MemoryInfo(size_t* free_bytes, size_t* total_bytes) const = 0;
  virtual Result<void*> Allocate(size_t bytes) = 0;
  virtual void Free(void* ptr) = 0;
  virtual Status CopyHostToDevice(void* dst, const void* src, size_t bytes) = 0;
  virtual Status CopyDeviceToHost(void* dst, const void* src, size_t bytes) = 0;
  virtual Status CopyDeviceToDevice(void* dst, const void* src, size_t bytes) = 0;
  // Waits for all queued work on the device.
  virtual Status Synchronize() = 0;
};

// Host memory through aligned operator new; copies are memcpy.
class HostDevice final : public Device {
 public:
  DeviceKind kind() const override { return DeviceKind::kHost; }
  std::string name() const override { return "cpu"; }
  Status MemoryInfo(size_t* free_bytes, size_t* total_bytes) const override;
  Result<void*> Allocate(size_t bytes) override;
  void Free(void* ptr) override;
  Status CopyHostToDevice(void* dst, const void* src, size_t bytes) override;
  Status CopyDeviceToHost(void* dst, const void* src, size_t bytes) override;
  Status CopyDeviceToDevice(void* dst, const void* src, size_t bytes) override;
  Status Synchronize() override { return Status::OK(); }
};

}  // namespace kvkeep
