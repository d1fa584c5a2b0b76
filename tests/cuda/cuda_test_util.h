// Helpers for the GPU tests: device buffers through CudaDevice (never cudaMalloc directly),
// bf16 conversions, seeded random data and relative-error metrics.
#pragma once

#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <memory>
#include <random>
#include <vector>

#include "base/bf16.h"
#include "engine/cuda/cuda_device.h"

namespace kvkeep::testing {

// Owns a CudaDevice and every buffer allocated through it.
class GpuArena {
 public:
  GpuArena() {
    auto d = CudaDevice::Create(0);
    if (d.ok()) device_ = std::move(d).value();
  }
  ~GpuArena() {
    if (!device_) return;
    device_->Synchronize().ok();
    for (void* p : ptrs_) device_->Free(p);
  }
  bool ok() const { return device_ != nullptr; }
  CudaDevice* device() { return device_.get(); }
  cudaStream_t stream() { return device_->compute_stream(); }

  template <typename T>
  T* Alloc(size_t n) {
    auto p = device_->Allocate(std::max<size_t>(n, 1) * sizeof(T));
    EXPECT_TRUE(p.ok()) << p.status().ToString();
    ptrs_.push_back(*p);
    return static_cast<T*>(*p);
  }
  template <typename T>
  T* Upload(const std::vector<T>& v) {
    T* p = Alloc<T>(v.size());
    EXPECT_TRUE(device_->CopyHostToDevice(p, v.data(), v.size() * sizeof(T)).ok());
    return p;
  }
  template <typename T>
  std::vector<T> Download(const T* p, size_t n) {
    std::vector<T> v(n);
    EXPECT_TRUE(device_->CopyDeviceToHost(v.data(), p, n * sizeof(T)).ok());
    return v;
  }
  // Fills n elements of T with the byte pattern 0xff (NaN for bf16 and fp32).
  template <typename T>
  void Poison(T* p, size_t n) {
    std::vector<uint8_t> bytes(n * sizeof(T), 0xff);
    EXPECT_TRUE(device_->CopyHostToDevice(p, bytes.data(), bytes.size()).ok());
  }

 private:
  std::unique_ptr<CudaDevice> device_;
  std::vector<void*> ptrs_;
};

#define KVKEEP_REQUIRE_GPU(arena)                                        \
  do {                                                                   \
    if (!(arena).ok()) GTEST_SKIP() << "no CUDA device on this machine"; \
  } while (0)

inline std::vector<bf16> RandomBf16(std::mt19937_64& rng, size_t n, float scale = 1.0f) {
  std::normal_distribution<float> dist(0.0f, scale);
  std::vector<bf16> v(n);
  for (auto& x : v) x = FloatToBf16(dist(rng));
  return v;
}

inline std::vector<float> ToFloat(const std::vector<bf16>& v) {
  std::vector<float> f(v.size());
  for (size_t i = 0; i < v.size(); ++i) f[i] = Bf16ToFloat(v[i]);
  return f;
}

// ||a - b|| / ||b||; infinity if any element of a is not finite.
inline double RelL2(const std::vector<float>& a, const std::vector<float>& b) {
  double num = 0, den = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    if (!std::isfinite(a[i])) return INFINITY;
    num += (double{a[i]} - b[i]) * (double{a[i]} - b[i]);
    den += double{b[i]} * b[i];
  }
  return std::sqrt(num / std::max(den, 1e-30));
}

inline double MaxAbsDiff(const std::vector<float>& a, const std::vector<float>& b) {
  double m = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    if (!std::isfinite(a[i])) return INFINITY;
    m = std::max(m, std::fabs(double{a[i]} - b[i]));
  }
  return m;
}

}  // namespace kvkeep::testing
