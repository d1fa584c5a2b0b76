// Host-tier swap bandwidth on CUDA: cuda::SwapBlocks (the path CudaBackend::SwapOut/SwapIn
// take, on the copy stream) moving 1, 16 and 256 Llama-3-8B-shape blocks (32 layers x K,V x
// 8 heads x 16 tokens x 128 dims, bf16 = 2 MiB each) between scattered device slots and
// scattered pinned host slots, against the anchor measured in the same run: one
// cudaMemcpyAsync of the same number of bytes between contiguous pinned host memory and
// device memory. Target (issue 10): >= 0.8x the anchor at 256 blocks. Median of 20 timed
// calls with events; prints one line per case and writes $OUT/kvkeep_tiers_swap.json.
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "kernels/cuda/kv_ops.h"

namespace kvkeep {
namespace {

constexpr size_t kBlockBytes = size_t{32} * 2 * 8 * 16 * 128 * 2;
constexpr int32_t kPoolBlocks = 1024, kHostBlocks = 1024;

#define CHECK_CUDA(x)                                                                 \
  do {                                                                                \
    cudaError_t e = (x);                                                              \
    if (e != cudaSuccess) {                                                           \
      std::fprintf(stderr, "%s:%d: %s\n", __FILE__, __LINE__, cudaGetErrorString(e)); \
      std::exit(1);                                                                   \
    }                                                                                 \
  } while (0)

template <typename Fn>
double MedianMs(cudaStream_t stream, Fn&& fn) {
  cudaEvent_t a, b;
  CHECK_CUDA(cudaEventCreate(&a));
  CHECK_CUDA(cudaEventCreate(&b));
  for (int i = 0; i < 3; ++i) fn();
  std::vector<float> ms;
  for (int i = 0; i < 20; ++i) {
    CHECK_CUDA(cudaEventRecord(a, stream));
    fn();
    CHECK_CUDA(cudaEventRecord(b, stream));
    CHECK_CUDA(cudaEventSynchronize(b));
    float t = 0;
    CHECK_CUDA(cudaEventElapsedTime(&t, a, b));
    ms.push_back(t);
  }
  std::sort(ms.begin(), ms.end());
  CHECK_CUDA(cudaEventDestroy(a));
  CHECK_CUDA(cudaEventDestroy(b));
  return ms[ms.size() / 2];
}

int Main() {
  void* device = nullptr;
  void* host = nullptr;
  CHECK_CUDA(cudaMalloc(&device, kBlockBytes * kPoolBlocks));
  CHECK_CUDA(cudaHostAlloc(&host, kBlockBytes * kHostBlocks, cudaHostAllocDefault));
  cudaStream_t stream;
  CHECK_CUDA(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
  std::mt19937 rng(1);
  std::vector<int32_t> dev_ids(kPoolBlocks), host_ids(kHostBlocks);
  std::iota(dev_ids.begin(), dev_ids.end(), 0);
  std::iota(host_ids.begin(), host_ids.end(), 0);
  std::shuffle(dev_ids.begin(), dev_ids.end(), rng);  // scattered: no run merging
  std::shuffle(host_ids.begin(), host_ids.end(), rng);
  std::string json = "{\"block_bytes\": " + std::to_string(kBlockBytes) + ", \"cases\": [";
  for (int n : {1, 16, 256}) {
    std::vector<std::pair<int32_t, int32_t>> out, in;
    for (int i = 0; i < n; ++i) {
      out.emplace_back(dev_ids[i], host_ids[i]);
      in.emplace_back(host_ids[i], dev_ids[i]);
    }
    const double bytes = double(kBlockBytes) * n;
    const double out_ms = MedianMs(stream, [&] {
      if (!cuda::SwapBlocks(device, host, kBlockBytes, out, cuda::SwapDirection::kDeviceToHost,
                            stream)
               .ok()) {
        std::exit(1);
      }
    });
    const double in_ms = MedianMs(stream, [&] {
      if (!cuda::SwapBlocks(device, host, kBlockBytes, in, cuda::SwapDirection::kHostToDevice,
                            stream)
               .ok()) {
        std::exit(1);
      }
    });
    const double d2h_ms = MedianMs(stream, [&] {
      CHECK_CUDA(cudaMemcpyAsync(host, device, bytes, cudaMemcpyDeviceToHost, stream));
    });
    const double h2d_ms = MedianMs(stream, [&] {
      CHECK_CUDA(cudaMemcpyAsync(device, host, bytes, cudaMemcpyHostToDevice, stream));
    });
    auto gbps = [&](double ms) { return bytes / (ms * 1e-3) / 1e9; };
    std::printf(
        "blocks %4d  swap-out %6.2f GB/s (memcpy d2h %6.2f, x%.2f)  swap-in %6.2f GB/s (memcpy "
        "h2d %6.2f, x%.2f)\n",
        n, gbps(out_ms), gbps(d2h_ms), d2h_ms / out_ms, gbps(in_ms), gbps(h2d_ms), h2d_ms / in_ms);
    char line[256];
    std::snprintf(line, sizeof(line),
                  "%s{\"blocks\": %d, \"swap_out_GBps\": %.3f, \"d2h_GBps\": %.3f, "
                  "\"swap_in_GBps\": %.3f, \"h2d_GBps\": %.3f}",
                  n == 1 ? "" : ", ", n, gbps(out_ms), gbps(d2h_ms), gbps(in_ms), gbps(h2d_ms));
    json += line;
  }
  json += "]}\n";
  const char* out_dir = std::getenv("OUT");
  const std::string path = std::string(out_dir ? out_dir : ".") + "/kvkeep_tiers_swap.json";
  if (FILE* f = std::fopen(path.c_str(), "w")) {
    std::fputs(json.c_str(), f);
    std::fclose(f);
  }
  CHECK_CUDA(cudaFreeHost(host));
  CHECK_CUDA(cudaFree(device));
  return 0;
}

}  // namespace
}  // namespace kvkeep

int main() { return kvkeep::Main(); }
