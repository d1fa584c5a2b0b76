// GPU attention benchmarks on the Llama-3-8B attention shape (32 q heads, 8 KV heads,
// head_dim 128, bf16, 16-token blocks, scrambled block tables), plus the device copy
// bandwidth measured in the same process. Prints one line per case and writes JSON to
// $OUT/kvkeep_attention.json (or ./kvkeep_attention.json).
//
// Timing (MedianMs; the same method as bench/gpu/anchors.py's bench(), after triton's
// do_bench): after warm-up calls and one synchronize, each timed call is enqueued as
// [a kernel that reads a 256 MB buffer (flushes the 50 MB L2 and leaves it clean), start
// event, the call, end event], with no host synchronize between calls, so the host runs
// ahead of the GPU and its launch latency is not inside the events' interval (a call
// measures its kernels plus the GPU-side gaps between them). One synchronize at the end;
// the figure is the median of the per-call event intervals. Every case (device copy,
// decode, prefill) is timed this way. The flush reads rather than writes: a memset leaves
// ~50 MB of dirty lines whose write-back lands inside the next timed call (~10 us of a
// 60 us B=1 L=32768 decode).
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "bench/gpu/check_ok.h"
#include "engine/cuda/cuda_device.h"
#include "kernels/cuda/attention.h"
#include "kernels/cuda/prefill_attention.cuh"

namespace kvkeep {
namespace {

using cuda::bf16_t;

#define CHECK_CUDA(expr)                                                      \
  do {                                                                        \
    cudaError_t _e = (expr);                                                  \
    if (_e != cudaSuccess) {                                                  \
      std::fprintf(stderr, "%s failed: %s\n", #expr, cudaGetErrorString(_e)); \
      std::exit(1);                                                           \
    }                                                                         \
  } while (0)

__global__ void FillRandom(bf16_t* p, size_t n, uint32_t seed) {
  for (size_t i = blockIdx.x * size_t{blockDim.x} + threadIdx.x; i < n;
       i += size_t{gridDim.x} * blockDim.x) {
    uint32_t x = static_cast<uint32_t>(i) * 2654435761u ^ seed;
    x ^= x >> 13;
    x *= 0x5bd1e995u;
    x ^= x >> 15;
    p[i] = __float2bfloat16((static_cast<float>(x & 0xffff) / 65536.0f - 0.5f) * 2.0f);
  }
}

constexpr int kHq = 32, kHkv = 8, kD = 128, kBs = 16;
constexpr size_t kFlushBytes = size_t{256} << 20;  // > L2 (50 MB on an H100)

struct Bench {
  CudaDevice* dev;
  void* flush = nullptr;  // kFlushBytes (zero), read before every timed call
  int* sink = nullptr;    // ReadFlush's never-taken store
  std::string json;
  void Add(const std::string& name, const std::string& fields) {
    json += (json.empty() ? "" : ",\n") + std::string("  \"") + name + "\": {" + fields + "}";
  }
};

void* Alloc(CudaDevice* dev, size_t bytes) {
  auto p = dev->Allocate(bytes);
  CHECK_OK(p.status());
  return *p;
}

// Reads n 16-byte words (an L2 flush that leaves no dirty lines); the store keeps the loads.
__global__ void ReadFlush(const uint4* p, size_t n, int* sink) {
  uint32_t x = 0;
  for (size_t i = blockIdx.x * size_t{blockDim.x} + threadIdx.x; i < n;
       i += size_t{gridDim.x} * blockDim.x) {
    const uint4 v = p[i];
    x ^= v.x ^ v.y ^ v.z ^ v.w;
  }
  if (x == 0x9e3779b9u) *sink = static_cast<int>(x);  // the buffer is zero: never taken
}

// Median ms of f() on stream s; the method is in the header comment.
template <typename F>
float MedianMs(Bench& b, cudaStream_t s, int iters, F&& f) {
  for (int i = 0; i < 3; ++i) f();
  CHECK_CUDA(cudaStreamSynchronize(s));
  std::vector<cudaEvent_t> start(iters), stop(iters);
  for (int i = 0; i < iters; ++i) {
    CHECK_CUDA(cudaEventCreate(&start[i]));
    CHECK_CUDA(cudaEventCreate(&stop[i]));
  }
  for (int i = 0; i < iters; ++i) {
    ReadFlush<<<1056, 512, 0, s>>>(static_cast<const uint4*>(b.flush), kFlushBytes / 16, b.sink);
    CHECK_CUDA(cudaGetLastError());
    CHECK_CUDA(cudaEventRecord(start[i], s));
    f();
    CHECK_CUDA(cudaEventRecord(stop[i], s));
  }
  CHECK_CUDA(cudaStreamSynchronize(s));
  std::vector<float> ts(iters);
  for (int i = 0; i < iters; ++i) {
    CHECK_CUDA(cudaEventElapsedTime(&ts[i], start[i], stop[i]));
    CHECK_CUDA(cudaEventDestroy(start[i]));
    CHECK_CUDA(cudaEventDestroy(stop[i]));
  }
  std::sort(ts.begin(), ts.end());
  return ts[ts.size() / 2];
}

void CopyBandwidth(Bench& b) {
  const size_t bytes = size_t{2} << 30;
  void* x = Alloc(b.dev, bytes);
  void* y = Alloc(b.dev, bytes);
  cudaStream_t s = b.dev->compute_stream();
  const float ms = MedianMs(
      b, s, 20, [&] { CHECK_CUDA(cudaMemcpyAsync(y, x, bytes, cudaMemcpyDeviceToDevice, s)); });
  const double gbps = 2.0 * bytes / ms / 1e6;
  std::printf("copy            %8.3f ms  %8.1f GB/s (read+write)\n", ms, gbps);
  b.Add("copy", "\"ms\": " + std::to_string(ms) + ", \"GBps\": " + std::to_string(gbps));
  b.dev->Free(x);
  b.dev->Free(y);
}

struct PagedSetup {
  KvPoolShape shape;
  bf16_t* pool = nullptr;
  int32_t *q_start = nullptr, *kv_len = nullptr, *tables = nullptr;
  int max_blocks = 0;
};

PagedSetup MakePaged(CudaDevice* dev, int batch, int len, int q_per_seq, std::mt19937& rng) {
  PagedSetup p;
  p.max_blocks = (len + kBs - 1) / kBs;
  p.shape.num_blocks = batch * p.max_blocks;
  p.shape.num_layers = 1;
  p.shape.num_kv_heads = kHkv;
  p.shape.block_size = kBs;
  p.shape.head_dim = kD;
  const size_t elems = p.shape.total_elements();
  p.pool = static_cast<bf16_t*>(Alloc(dev, elems * sizeof(bf16_t)));
  FillRandom<<<1024, 256, 0, dev->compute_stream()>>>(p.pool, elems, 12345u);
  std::vector<int32_t> ids(p.shape.num_blocks);
  std::iota(ids.begin(), ids.end(), 0);
  std::shuffle(ids.begin(), ids.end(), rng);
  std::vector<int32_t> qs(batch + 1), kl(batch, len);
  for (int i = 0; i <= batch; ++i) qs[i] = i * q_per_seq;
  auto up = [&](const std::vector<int32_t>& v) {
    auto* d = static_cast<int32_t*>(Alloc(dev, v.size() * sizeof(int32_t)));
    CHECK_OK(dev->CopyHostToDevice(d, v.data(), v.size() * sizeof(int32_t)));
    return d;
  };
  p.q_start = up(qs);
  p.kv_len = up(kl);
  p.tables = up(ids);
  return p;
}

void FreePaged(CudaDevice* dev, PagedSetup& p) {
  for (void* x : {static_cast<void*>(p.pool), static_cast<void*>(p.q_start),
                  static_cast<void*>(p.kv_len), static_cast<void*>(p.tables)}) {
    dev->Free(x);
  }
}

// extra_splits: split counts timed after the plan (and after no split, when the plan
// splits), named _split<N>; then the plan again (_again) when there are any.
void Decode(Bench& b, int batch, int len, const std::vector<int>& extra_splits, std::mt19937& rng) {
  CudaDevice* dev = b.dev;
  PagedSetup p = MakePaged(dev, batch, len, 1, rng);
  auto* q = static_cast<bf16_t*>(Alloc(dev, size_t(batch) * kHq * kD * 2));
  auto* out = static_cast<bf16_t*>(Alloc(dev, size_t(batch) * kHq * kD * 2));
  FillRandom<<<64, 256, 0, dev->compute_stream()>>>(q, size_t(batch) * kHq * kD, 7u);
  AttentionParams ap;
  ap.num_q_heads = kHq;
  ap.scale = 0.08838834764f;
  AttentionBatch ab;
  ab.num_seqs = batch;
  ab.q_start = p.q_start;
  ab.kv_len = p.kv_len;
  ab.block_tables = p.tables;
  ab.max_blocks_per_seq = p.max_blocks;
  cuda::AttentionIo io;
  io.q = q;
  io.q_token_stride = kHq * kD;
  io.out = out;
  const PagedKv<bf16_t> kv = LayerView(p.pool, p.shape, 0);
  const double kv_bytes = 2.0 * batch * len * kHkv * kD * 2;
  const cuda::DecodePlan auto_plan = cuda::PlanDecode(batch, kHkv, len, dev->num_sms());
  struct Config {
    int splits;
    std::string suffix;
    int kernel = 0;  // 0: PagedDecodeAttention's pick; 1: the CUDA-core kernel forced
  };
  std::vector<Config> configs = {{auto_plan.num_splits, ""},
                                 {auto_plan.num_splits, "_cudacore", 1}};
  if (auto_plan.num_splits > 1) configs.push_back({1, "_nosplit"});
  // Alternatives to the heuristic's choice, measured in the same run.
  for (int sp : extra_splits) {
    if (sp != auto_plan.num_splits) configs.push_back({sp, "_split" + std::to_string(sp)});
  }
  // The plan again, last: shows whether being timed first moves a figure.
  if (!extra_splits.empty()) configs.push_back({auto_plan.num_splits, "_again"});
  for (const Config& v : configs) {
    cuda::DecodePlan plan;
    plan.num_splits = v.splits;
    const size_t ws_bytes = cuda::DecodeWorkspaceBytes(batch, kHq, kD, plan);
    float* ws = ws_bytes ? static_cast<float*>(Alloc(dev, ws_bytes)) : nullptr;
    cudaStream_t s = dev->compute_stream();
    const float ms = MedianMs(b, s, 100, [&] {
      CHECK_OK(v.kernel == 0 ? cuda::PagedDecodeAttention(ap, ab, kv, io, plan, ws, s)
                             : cuda::TEST_PagedDecodeAttention(ap, ab, kv, io, plan, ws, false, s));
    });
    const double gbps = kv_bytes / ms / 1e6;
    const std::string name =
        "decode_B" + std::to_string(batch) + "_L" + std::to_string(len) + v.suffix;
    std::printf("%-40s splits %3d %8.4f ms %8.1f GB/s\n", name.c_str(), v.splits, ms, gbps);
    b.Add(name, "\"ms\": " + std::to_string(ms) + ", \"GBps\": " + std::to_string(gbps) +
                    ", \"splits\": " + std::to_string(v.splits));
    if (ws) dev->Free(ws);
  }
  dev->Free(q);
  dev->Free(out);
  FreePaged(dev, p);
}

void Prefill(Bench& b, int len, std::mt19937& rng) {
  CudaDevice* dev = b.dev;
  PagedSetup p = MakePaged(dev, 1, len, len, rng);
  const size_t qn = size_t(len) * kHq * kD;
  auto* q = static_cast<bf16_t*>(Alloc(dev, qn * 2));
  auto* out = static_cast<bf16_t*>(Alloc(dev, qn * 2));
  FillRandom<<<1024, 256, 0, dev->compute_stream()>>>(q, qn, 99u);
  AttentionParams ap;
  ap.num_q_heads = kHq;
  ap.scale = 0.08838834764f;
  AttentionBatch ab;
  ab.num_seqs = 1;
  ab.q_start = p.q_start;
  ab.kv_len = p.kv_len;
  ab.block_tables = p.tables;
  ab.max_blocks_per_seq = p.max_blocks;
  cuda::AttentionIo io;
  io.q = q;
  io.q_token_stride = kHq * kD;
  io.out = out;
  const PagedKv<bf16_t> kv = LayerView(p.pool, p.shape, 0);
  cudaStream_t s = dev->compute_stream();
  // "" is PagedPrefillAttention as the engine calls it (the wgmma kernel on an H100);
  // _wgmma_bn64 forces its 64-key tiles; _mma* force the mma.sync (FlashAttention-2) kernel
  // with 128- or 64-row query tiles and 32 or 64 keys per tile.
  struct Variant {
    int rows, block_n;  // rows 0: the wgmma kernel (block_n 0: the default dispatch)
    const char* suffix;
  };
  for (const Variant& v :
       {Variant{0, 0, ""}, Variant{0, 64, "_wgmma_bn64"}, Variant{0, 128, "_wgmma_bn128"},
        Variant{32, 32, "_mma"}, Variant{16, 32, "_mma_rows16"}, Variant{32, 64, "_mma_bn64"}}) {
    const float ms = MedianMs(b, s, 10, [&] {
      if (v.rows == 0 && v.block_n == 0) {
        CHECK_OK(cuda::PagedPrefillAttention(ap, ab, kv, io, len, s));
      } else if (v.rows == 0) {
        CHECK_OK(cuda::TEST_PagedPrefillAttentionSm90(ap, ab, kv, io, len, v.block_n, s));
      } else {
        CHECK_OK(cuda::TEST_PagedPrefillAttentionTiles(ap, ab, kv, io, len, v.rows, v.block_n, s));
      }
    });
    const double flops = 4.0 * kHq * double(len) * len * kD / 2;  // causal
    const double tflops = flops / ms / 1e9;
    const std::string name = "prefill_B1_L" + std::to_string(len) + v.suffix;
    std::printf("%-26s            %8.3f ms %8.1f TFLOP/s\n", name.c_str(), ms, tflops);
    b.Add(name, "\"ms\": " + std::to_string(ms) + ", \"TFLOPs\": " + std::to_string(tflops));
  }
  dev->Free(q);
  dev->Free(out);
  FreePaged(dev, p);
}

int Main() {
  auto d = CudaDevice::Create(0);
  CHECK_OK(d.status());
  Bench b;
  b.dev = d->get();
  std::printf("device %s, %d SMs\n", b.dev->device_name().c_str(), b.dev->num_sms());
  std::mt19937 rng(1);
  b.flush = Alloc(b.dev, kFlushBytes);
  b.sink = static_cast<int*>(Alloc(b.dev, sizeof(int)));
  CHECK_CUDA(cudaMemsetAsync(b.flush, 0, kFlushBytes, b.dev->compute_stream()));
  CopyBandwidth(b);
  Decode(b, 64, 4096, {2}, rng);  // unsplit plan (512 CTAs) vs 2 splits
  // B=1 32k: split counts around the plan's 16 (32/33: two CTAs per SM, 256/264 CTAs).
  Decode(b, 1, 32768, {20, 24, 32, 33, 128}, rng);
  Decode(b, 128, 2048, {}, rng);
  Decode(b, 16, 8192, {2}, rng);  // unsplit plan (128 CTAs, one per SM) vs 2 splits
  // Fixed cost of one decode launch (one 16-token page per KV head): the floor under
  // the short-kernel cases (B=1 L=32768 reads 134 MB, ~54 us at 2.5 TB/s).
  Decode(b, 1, 16, {}, rng);
  Prefill(b, 8192, rng);
  CHECK_CUDA(cudaGetLastError());
  b.dev->Free(b.flush);
  b.dev->Free(b.sink);
  const char* out_dir = std::getenv("OUT");
  const std::string path =
      std::string(out_dir && *out_dir ? out_dir : ".") + "/kvkeep_attention.json";
  if (FILE* f = std::fopen(path.c_str(), "w")) {
    std::fprintf(f, "{\n  \"device\": \"%s\",\n%s\n}\n", b.dev->device_name().c_str(),
                 b.json.c_str());
    std::fclose(f);
  }
  return 0;
}

}  // namespace
}  // namespace kvkeep

int main() { return kvkeep::Main(); }
