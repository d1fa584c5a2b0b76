#include "base/device.h"

#include <unistd.h>

#include <cstring>
#include <new>

namespace kvkeep {

namespace {
constexpr std::align_val_t kAlign{64};
}

Status HostDevice::MemoryInfo(size_t* free_bytes, size_t* total_bytes) const {
  long pages = sysconf(_SC_PHYS_PAGES);
  long avail = sysconf(_SC_AVPHYS_PAGES);
  long page = sysconf(_SC_PAGESIZE);
  if (pages <= 0 || page <= 0) return Status::Unavailable("sysconf failed");
  *total_bytes = static_cast<size_t>(pages) * static_cast<size_t>(page);
  *free_bytes = static_cast<size_t>(avail > 0 ? avail : 0) * static_cast<size_t>(page);
  return Status::OK();
}

Result<void*> HostDevice::Allocate(size_t bytes) {
  void* p = ::operator new(bytes == 0 ? 1 : bytes, kAlign, std::nothrow);
  if (p == nullptr) {
    return Status::ResourceExhausted("host allocation of " + std::to_string(bytes) +
                                     " bytes failed");
  }
  return p;
}

void HostDevice::Free(void* ptr) {
  if (ptr != nullptr) ::operator delete(ptr, kAlign);
}

Status HostDevice::CopyHostToDevice(void* dst, const void* src, size_t bytes) {
  std::memcpy(dst, src, bytes);
  return Status::OK();
}
Status HostDevice::CopyDeviceToHost(void* dst, const void* src, size_t bytes) {
  std::memcpy(dst, src, bytes);
  return Status::OK();
}
Status HostDevice::CopyDeviceToDevice(void* dst, const void* src, size_t bytes) {
  std::memmove(dst, src, bytes);
  return Status::OK();
}

}  // namespace kvkeep
