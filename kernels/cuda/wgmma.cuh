// Hopper warpgroup MMA (wgmma, sm_90a) helpers: shared-memory matrix descriptors for the
// 128-byte swizzle, fences, and one wrapper per instruction shape kvkeep uses. The wrappers
// compile to nothing outside sm_90a (KVKEEP_WGMMA_ENABLED); callers guard their launches
// at run time (PrefillSm90Available).
//
// Shared-memory layout the descriptors assume (bf16): a tile of R rows x 64*h columns is
// stored as [h][R][64], rows of 128 bytes, 16-byte chunk c of row r at chunk c ^ (r % 8),
// each [R][64] part starting on a 1024-byte boundary. As a K-major operand (rows = M or N,
// columns = K) consecutive 8-row groups are 1024 bytes apart (SBO) and a k-step of 16
// columns is a 32-byte advance of the start address; as an MN-major operand (rows = K,
// columns = N) the same 1024 bytes separate 8-row groups along K (SBO) and the [R][64]
// parts separate 64-column groups along N (LBO).
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "kernels/cuda/device_utils.cuh"

#if defined(__CUDA_ARCH__) && defined(__CUDA_ARCH_FEAT_SM90_ALL)
#define KVKEEP_WGMMA_ENABLED 1
#endif

namespace kvkeep::cuda {

// Descriptor of a 128-byte-swizzled operand starting at `p` (shared memory).
__device__ __forceinline__ uint64_t SmemDescSw128(const void* p, uint32_t lbo_bytes,
                                                  uint32_t sbo_bytes) {
  const uint64_t addr = SmemAddr(p);
  return ((addr & 0x3FFFF) >> 4) | (uint64_t{(lbo_bytes & 0x3FFFF) >> 4} << 16) |
         (uint64_t{(sbo_bytes & 0x3FFFF) >> 4} << 32) | (uint64_t{1} << 62);
}

// Element offset of 16-byte chunk c (columns 8c..8c+7) of row r in a [h][kRows][64] tile.
template <int kRows>
__device__ __forceinline__ int Sw128Offset(int r, int c) {
  return (c >> 3) * kRows * 64 + r * 64 + (((c & 7) ^ (r & 7)) << 3);
}

__device__ __forceinline__ void WgmmaFence() {
#ifdef KVKEEP_WGMMA_ENABLED
  asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory");
#endif
}
__device__ __forceinline__ void WgmmaCommit() {
#ifdef KVKEEP_WGMMA_ENABLED
  asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
#endif
}
template <int N>
__device__ __forceinline__ void WgmmaWait() {
#ifdef KVKEEP_WGMMA_ENABLED
  asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(N) : "memory");
#endif
}
// Makes this thread's generic-proxy shared-memory writes (cp.async included) visible to
// the async proxy that wgmma reads through; each writer runs it before the barrier.
__device__ __forceinline__ void FenceProxyAsync() {
#ifdef KVKEEP_WGMMA_ENABLED
  asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
#endif
}
// Keeps the compiler from moving accesses of accumulator registers across a wait.
template <int N>
__device__ __forceinline__ void FenceOperands(float* d) {
#pragma unroll
  for (int i = 0; i < N; ++i) asm volatile("" : "+f"(d[i])::"memory");
}

// mbarrier (shared memory, CTA scope): producer/consumer hand-off between warpgroups.
__device__ __forceinline__ void MbarInit(uint64_t* bar, int count) {
#ifdef KVKEEP_WGMMA_ENABLED
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(SmemAddr(bar)), "r"(count)
               : "memory");
#endif
}
// Arrives with release semantics: this thread's earlier writes are visible to a waiter.
__device__ __forceinline__ void MbarArrive(uint64_t* bar) {
#ifdef KVKEEP_WGMMA_ENABLED
  asm volatile("mbarrier.arrive.release.cta.shared::cta.b64 _, [%0];\n" ::"r"(SmemAddr(bar))
               : "memory");
#endif
}
// Waits (acquire) until the phase with the given parity has completed.
__device__ __forceinline__ void MbarWait(uint64_t* bar, uint32_t parity) {
#ifdef KVKEEP_WGMMA_ENABLED
  asm volatile(
      "{\n.reg .pred done;\nwait_%=:\n"
      "mbarrier.try_wait.parity.acquire.cta.shared::cta.b64 done, [%0], %1;\n"
      "@!done bra wait_%=;\n}\n" ::"r"(SmemAddr(bar)),
      "r"(parity)
      : "memory");
#endif
}
// Warpgroup register budget (sm_90a): all threads of the warpgroup run it.
template <int N>
__device__ __forceinline__ void SetMaxRegsInc() {
#ifdef KVKEEP_WGMMA_ENABLED
  asm volatile("setmaxnreg.inc.sync.aligned.u32 %0;\n" ::"n"(N));
#endif
}
template <int N>
__device__ __forceinline__ void SetMaxRegsDec() {
#ifdef KVKEEP_WGMMA_ENABLED
  asm volatile("setmaxnreg.dec.sync.aligned.u32 %0;\n" ::"n"(N));
#endif
}

// Generated wrappers (one per shape): accumulate != 0 adds to d, else d = A * B.
// clang-format off
// d[32] (+)= A (smem desc, K-major) * B (smem desc, K-major), m64n64k16 bf16 -> f32.
__device__ __forceinline__ void WgmmaSS_n64(float* d, uint64_t desc_a, uint64_t desc_b,
                                            int accumulate) {
#ifdef KVKEEP_WGMMA_ENABLED
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %34, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 "
      "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31}, %32, %33, p, 1, 1, 0, 0;\n}\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31])
      : "l"(desc_a), "l"(desc_b), "r"(accumulate));
#endif
}
// d[64] (+)= A (smem desc, K-major) * B (smem desc, K-major), m64n128k16 bf16 -> f32.
__device__ __forceinline__ void WgmmaSS_n128(float* d, uint64_t desc_a, uint64_t desc_b,
                                            int accumulate) {
#ifdef KVKEEP_WGMMA_ENABLED
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %66, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 "
      "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63}, %64, %65, p, 1, 1, 0, 0;\n}\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]), "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]), "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]), "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63])
      : "l"(desc_a), "l"(desc_b), "r"(accumulate));
#endif
}
// d[32] (+)= A (registers, 4 x bf16x2) * B (smem desc; kTransB 0: K-major, 1: MN-major),
// m64n64k16 bf16 -> f32.
template <int kTransB>
__device__ __forceinline__ void WgmmaRS_n64(float* d, const uint32_t* a, uint64_t desc_b,
                                            int accumulate) {
#ifdef KVKEEP_WGMMA_ENABLED
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %37, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 "
      "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31}, {%32, %33, %34, %35}, %36, p, 1, 1, %38;\n}\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc_b), "r"(accumulate), "n"(kTransB));
#endif
}
// d[64] (+)= A (registers, 4 x bf16x2) * B (smem desc; kTransB 0: K-major, 1: MN-major),
// m64n128k16 bf16 -> f32.
template <int kTransB>
__device__ __forceinline__ void WgmmaRS_n128(float* d, const uint32_t* a, uint64_t desc_b,
                                            int accumulate) {
#ifdef KVKEEP_WGMMA_ENABLED
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %69, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 "
      "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63}, {%64, %65, %66, %67}, %68, p, 1, 1, %70;\n}\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]), "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]), "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]), "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc_b), "r"(accumulate), "n"(kTransB));
#endif
}
// clang-format on

}  // namespace kvkeep::cuda
