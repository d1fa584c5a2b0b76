// Paged causal prefill attention on Hopper tensor cores (wgmma, sm_90a). Same contract as
// the mma.sync kernel in prefill_attention.cu (attention.h); PagedPrefillAttention picks
// this one on an sm_90 GPU for head_dim 64 and 128.
//
// CTA = (128-row query tile, query head, sequence), three warpgroups, warp-specialised as
// in FlashAttention-3:
//   warpgroup 0, producer: gathers Q and kStages K/V tiles (kBlockN keys each) from the
//     paged pool with cp.async into 128-byte-swizzled shared memory (layout in wgmma.cuh)
//     and publishes each tile on a "full" mbarrier; consumers return stages on "empty".
//   warpgroups 1 and 2, consumers, 64 query rows each, per tile:
//     S[64 x kBlockN] = Q K^T  wgmma, A = Q and B = K from shared memory (both K-major);
//     online softmax on the S accumulators in registers (log2 domain);
//     O[64 x D] += P V         wgmma, A = P from registers, B = V from shared memory
//                              (MN-major: V is stored [key][dim], dims contiguous).
// The S accumulator layout of a warp equals the mma.sync m16n8k16 one, so P is packed
// straight into A fragments. The S GEMM of tile t + 1 is issued together with the PV GEMM
// of tile t, and its softmax runs while that PV GEMM is still on the tensor cores. No
// CTA-wide barrier inside the loop: the two consumers drift, so one's softmax also runs
// under the other's GEMMs. setmaxnreg moves registers from the producer to the consumers.
#include <cmath>

#include "kernels/cuda/attention.h"
#include "kernels/cuda/cuda_status.h"
#include "kernels/cuda/device_utils.cuh"
#include "kernels/cuda/prefill_attention.cuh"
#include "kernels/cuda/wgmma.cuh"

namespace kvkeep::cuda {
namespace {

constexpr int kBlockM = 128;  // 64 query rows per consumer warpgroup

template <int N>
__device__ __forceinline__ void WgmmaSS(float* d, uint64_t a, uint64_t b, int acc) {
  if constexpr (N == 64) {
    WgmmaSS_n64(d, a, b, acc);
  } else {
    WgmmaSS_n128(d, a, b, acc);
  }
}
template <int N, int kTransB>
__device__ __forceinline__ void WgmmaRS(float* d, const uint32_t* a, uint64_t b, int acc) {
  if constexpr (N == 64) {
    WgmmaRS_n64<kTransB>(d, a, b, acc);
  } else {
    WgmmaRS_n128<kTransB>(d, a, b, acc);
  }
}

constexpr int kThreads = 384;  // producer + two consumer warpgroups

template <int D, int kBlockN, int kStages>
struct Sm90Cfg {
  // The producer publishes tile t when it has issued tile t + 1, which needs the stage of
  // tile t + 1 - kStages back; consumers release tile t only after waiting for tile t + 1.
  static_assert(kStages >= 3, "wgmma prefill: fewer than 3 stages deadlocks");
  static constexpr int kQElems = kBlockM * D;
  static constexpr int kKvElems = kBlockN * D;
  static constexpr size_t kBarrierBytes = 2 * kStages * sizeof(uint64_t);
  static constexpr size_t kSmemBytes =
      size_t(kQElems + 2 * kStages * kKvElems) * sizeof(bf16_t) + kBarrierBytes + 1024;
};

template <int D, int kBlockN, int kStages>
__global__ void __launch_bounds__(kThreads, 1) PrefillSm90Kernel(const PrefillArgs a) {
#ifdef KVKEEP_WGMMA_ENABLED
  using C = Sm90Cfg<D, kBlockN, kStages>;
  constexpr int kChunks = D / 8;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  const uint32_t pad = (1024u - (SmemAddr(smem_raw) & 1023u)) & 1023u;
  bf16_t* sq = reinterpret_cast<bf16_t*>(smem_raw + pad);  // [D/64][kBlockM][64]
  bf16_t* sk = sq + C::kQElems;                            // [kStages][D/64][kBlockN][64]
  bf16_t* sv = sk + kStages * C::kKvElems;                 // [kStages][D/64][kBlockN][64]
  uint64_t* full = reinterpret_cast<uint64_t*>(sv + kStages * C::kKvElems);
  uint64_t* empty = full + kStages;

  const int seq = blockIdx.z, head = blockIdx.y;
  const int q_begin = a.batch.q_start[seq];
  const int n_new = a.batch.q_start[seq + 1] - q_begin;
  const int num_m_tiles = (n_new + kBlockM - 1) / kBlockM;
  if (static_cast<int>(blockIdx.x) >= num_m_tiles) return;
  const int m0 = (num_m_tiles - 1 - blockIdx.x) * kBlockM;
  const int kv_len = a.batch.kv_len[seq];
  const int pos0 = kv_len - n_new + m0;
  const int n_end = min(kv_len, pos0 + kBlockM);
  const int num_tiles = (n_end + kBlockN - 1) / kBlockN;
  const int tid = threadIdx.x;
  if (tid == 0) {
    for (int i = 0; i < kStages; ++i) {
      MbarInit(&full[i], 128);   // every producer thread arrives
      MbarInit(&empty[i], 256);  // every consumer thread arrives
    }
  }
  __syncthreads();

  if (tid < 128) {
    // ---- producer: 2 threads per row (a 32-byte sector per pair), kBlockN / 64 passes.
    SetMaxRegsDec<56>();
    const int kvh = head / a.group;
    const int32_t* table = a.batch.block_tables + int64_t{seq} * a.batch.max_blocks_per_seq;
    const int bs = a.kv.block_size;
    const int row = tid / 2, half = tid % 2;
#pragma unroll
    for (int pass = 0; pass < 2; ++pass) {  // Q: 128 rows
      const int r = row + 64 * pass;
      const bool valid = m0 + r < n_new;
      const bf16_t* src =
          a.io.q + (valid ? int64_t{q_begin + m0 + r} * a.io.q_token_stride + head * D : 0);
#pragma unroll
      for (int i = 0; i < kChunks / 2; ++i) {
        const int c = 2 * i + half;
        CpAsync16(sq + Sw128Offset<kBlockM>(r, c), src + (valid ? c * 8 : 0), valid);
      }
    }
    for (int tile = 0; tile < num_tiles; ++tile) {
      const int stage = tile % kStages;
      if (tile >= kStages) MbarWait(&empty[stage], ((tile / kStages) - 1) & 1);
      bf16_t* dk = sk + stage * C::kKvElems;
      bf16_t* dv = sv + stage * C::kKvElems;
#pragma unroll
      for (int pass = 0; pass < kBlockN / 64; ++pass) {
        const int r = row + 64 * pass;
        const int n = tile * kBlockN + r;
        const bool valid = n < kv_len;
        const int64_t off =
            valid ? int64_t{table[n / bs]} * a.kv.block_stride + (int64_t{kvh} * bs + n % bs) * D
                  : 0;
#pragma unroll
        for (int i = 0; i < kChunks / 2; ++i) {
          const int c = 2 * i + half;
          const int64_t src = off + (valid ? c * 8 : 0);
          CpAsync16(dk + Sw128Offset<kBlockN>(r, c), a.kv.k + src, valid);
          CpAsync16(dv + Sw128Offset<kBlockN>(r, c), a.kv.v + src, valid);
        }
      }
      CpAsyncCommit();
      if (tile > 0) {  // the previous tile has landed: publish it
        CpAsyncWait<1>();
        FenceProxyAsync();
        MbarArrive(&full[(tile - 1) % kStages]);
      }
    }
    CpAsyncWait<0>();
    FenceProxyAsync();
    MbarArrive(&full[(num_tiles - 1) % kStages]);
    return;
  }

  // ---- consumers: warpgroup 1 rows 0..63, warpgroup 2 rows 64..127.
  SetMaxRegsInc<224>();
  const int wg = tid / 128 - 1, warp = (tid % 128) / 32, lane = tid % 32;
  const int g = lane / 4, t = lane % 4;
  float o[D / 2];
#pragma unroll
  for (int i = 0; i < D / 2; ++i) o[i] = 0.0f;
  float s[kBlockN / 2];
  uint32_t p[kBlockN / 16][4];
  float row_m[2] = {-INFINITY, -INFINITY}, row_l[2] = {0.0f, 0.0f}, alpha[2];
  const int warp_pos0 = pos0 + wg * 64 + warp * 16;
  const bf16_t* sq_wg = sq + wg * 64 * 64;

  auto wait_full = [&](int tile) {
    MbarWait(&full[tile % kStages], (tile / kStages) & 1);
    FenceProxyAsync();
  };
  // Descriptors are built once; a k-step, key block or stage moves only the start address
  // field (16-byte units; shared addresses stay below 2^18, so no carry out of the field).
  constexpr uint32_t kStageStep = C::kKvElems * sizeof(bf16_t) / 16;
  const uint64_t q_desc = SmemDescSw128(sq_wg, 16, 1024);
  const uint64_t k_desc = SmemDescSw128(sk, 16, 1024);
  const uint64_t v_desc = SmemDescSw128(sv, kBlockN * 128, 1024);
  auto issue_s = [&](int tile) {
    const uint64_t kd = k_desc + (tile % kStages) * kStageStep;
#pragma unroll
    for (int ks = 0; ks < D / 16; ++ks) {
      // k-step ks: 32 bytes into 64-column part ks / 4.
      const uint64_t da = q_desc + ((ks / 4) * kBlockM * 128 + (ks % 4) * 32) / 16;
      const uint64_t db = kd + ((ks / 4) * kBlockN * 128 + (ks % 4) * 32) / 16;
      WgmmaSS<kBlockN>(s, da, db, ks > 0);
    }
    WgmmaCommit();
  };
  // PV: V is [key][dim] (MN-major); LBO: the next 64 dims, SBO: the next 8 keys.
  auto issue_pv = [&](int tile) {
    const uint64_t vd = v_desc + (tile % kStages) * kStageStep;
#pragma unroll
    for (int kk = 0; kk < kBlockN / 16; ++kk) {
      WgmmaRS<D, 1>(o, p[kk], vd + kk * 16 * 128 / 16, 1);  // 16 keys = 2048 bytes
    }
    WgmmaCommit();
  };
  auto softmax = [&](int tile) {
    const int n0 = tile * kBlockN;
    if (n0 + kBlockN > warp_pos0 + 1 || n0 + kBlockN > kv_len) {
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const int lim = min(warp_pos0 + g + 8 * h, kv_len - 1) - n0 - 2 * t;
#pragma unroll
        for (int j = 0; j < kBlockN / 8; ++j) {
          if (8 * j > lim) s[4 * j + 2 * h] = -INFINITY;
          if (8 * j + 1 > lim) s[4 * j + 2 * h + 1] = -INFINITY;
        }
      }
    }
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      float mx[4] = {-INFINITY, -INFINITY, -INFINITY, -INFINITY};
#pragma unroll
      for (int j = 0; j < kBlockN / 8; ++j) {
        mx[j % 4] = fmaxf(mx[j % 4], fmaxf(s[4 * j + 2 * h], s[4 * j + 2 * h + 1]));
      }
      float m = fmaxf(fmaxf(mx[0], mx[1]), fmaxf(mx[2], mx[3]));
      m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, 1));
      m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, 2));
      const float m_new = fmaxf(row_m[h], m * a.scale_log2);
      const float m_use = m_new == -INFINITY ? 0.0f : m_new;
      alpha[h] = FastExp2(row_m[h] - m_use);
      row_m[h] = m_new;
      float sum[4] = {0.0f, 0.0f, 0.0f, 0.0f};
#pragma unroll
      for (int j = 0; j < kBlockN / 8; ++j) {
#pragma unroll
        for (int e = 0; e < 2; ++e) {
          const float pr = FastExp2(fmaf(s[4 * j + 2 * h + e], a.scale_log2, -m_use));
          s[4 * j + 2 * h + e] = pr;
          sum[j % 4] += pr;
        }
      }
      row_l[h] = row_l[h] * alpha[h] + ((sum[0] + sum[1]) + (sum[2] + sum[3]));
    }
  };
  auto pack_p = [&] {
#pragma unroll
    for (int kk = 0; kk < kBlockN / 16; ++kk) {
      p[kk][0] = PackBf16x2(s[8 * kk + 0], s[8 * kk + 1]);
      p[kk][1] = PackBf16x2(s[8 * kk + 2], s[8 * kk + 3]);
      p[kk][2] = PackBf16x2(s[8 * kk + 4], s[8 * kk + 5]);
      p[kk][3] = PackBf16x2(s[8 * kk + 6], s[8 * kk + 7]);
    }
  };

  wait_full(0);
  WgmmaFence();
  issue_s(0);
  WgmmaWait<0>();
  FenceOperands<kBlockN / 2>(s);
  softmax(0);
  pack_p();
  for (int it = 0; it + 1 < num_tiles; ++it) {
    wait_full(it + 1);
    WgmmaFence();
    issue_s(it + 1);
    issue_pv(it);
    WgmmaWait<1>();
    FenceOperands<kBlockN / 2>(s);
    softmax(it + 1);
    WgmmaWait<0>();
    FenceOperands<D / 2>(o);
    MbarArrive(&empty[it % kStages]);  // K and V of tile it are no longer read
    // Rescale O only when some row's running max moved (alpha is exactly 1 otherwise).
    if (!__all_sync(0xffffffffu, alpha[0] == 1.0f && alpha[1] == 1.0f)) {
#pragma unroll
      for (int j = 0; j < D / 8; ++j) {
        o[4 * j] *= alpha[0];
        o[4 * j + 1] *= alpha[0];
        o[4 * j + 2] *= alpha[1];
        o[4 * j + 3] *= alpha[1];
      }
    }
    pack_p();
  }
  WgmmaFence();
  issue_pv(num_tiles - 1);
  WgmmaWait<0>();
  FenceOperands<D / 2>(o);

#pragma unroll
  for (int h = 0; h < 2; ++h) {
    float l = row_l[h];
    l += __shfl_xor_sync(0xffffffffu, l, 1);
    l += __shfl_xor_sync(0xffffffffu, l, 2);
    const float inv = l > 0.0f ? 1.0f / l : 0.0f;
    const int r = m0 + wg * 64 + warp * 16 + g + 8 * h;
    if (r >= n_new) continue;
    bf16_t* dst = a.io.out + (int64_t{q_begin + r} * a.num_q_heads + head) * D;
#pragma unroll
    for (int j = 0; j < D / 8; ++j) {
      *reinterpret_cast<__nv_bfloat162*>(dst + 8 * j + 2 * t) =
          __floats2bfloat162_rn(o[4 * j + 2 * h] * inv, o[4 * j + 2 * h + 1] * inv);
    }
  }
#else
  __trap();
#endif
}

template <int D, int kBlockN, int kStages>
Status Launch(const PrefillArgs& args, int32_t max_q_len, cudaStream_t stream) {
  constexpr size_t kSmem = Sm90Cfg<D, kBlockN, kStages>::kSmemBytes;
  static const cudaError_t attr_err =
      cudaFuncSetAttribute(PrefillSm90Kernel<D, kBlockN, kStages>,
                           cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(kSmem));
  KVKEEP_CUDA_RETURN(attr_err);
  const dim3 grid((max_q_len + kBlockM - 1) / kBlockM, args.num_q_heads, args.batch.num_seqs);
  PrefillSm90Kernel<D, kBlockN, kStages><<<grid, kThreads, kSmem, stream>>>(args);
  KVKEEP_CUDA_LAUNCH_CHECK();
  return Status::OK();
}

// 64 keys per tile with 4 stages is the default (bench/RESULTS.md run 10: causal 8k 450
// TFLOP/s vs 351 with 128 keys x 3 stages, the most that fits in shared memory; 64 keys
// with 3 / 5 / 6 stages: 327 / 452 / 450).
template <int D>
Status LaunchD(const PrefillArgs& args, int32_t max_q_len, int block_n, cudaStream_t stream) {
  if (block_n == 64) return Launch<D, 64, 4>(args, max_q_len, stream);
  if (block_n == 128) return Launch<D, 128, 3>(args, max_q_len, stream);
  return Status::InvalidArgument("wgmma prefill: block_n 64 or 128");
}

}  // namespace

bool PrefillSm90Available(int head_dim) {
  if (head_dim != 64 && head_dim != 128) return false;
  static const bool available = [] {
    int dev = 0, major = 0;
    if (cudaGetDevice(&dev) != cudaSuccess ||
        cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev) != cudaSuccess) {
      cudaGetLastError();
      return false;
    }
    // The binary must carry sm_90a code for the kernel (an sm_80-only build runs sm_80
    // code on an H100, where the kernel body is empty).
    cudaFuncAttributes attr;
    if (major != 9 || cudaFuncGetAttributes(&attr, PrefillSm90Kernel<128, 64, 4>) != cudaSuccess) {
      cudaGetLastError();
      return false;
    }
    return attr.binaryVersion == 90;
  }();
  return available;
}

Status LaunchPrefillSm90(const PrefillArgs& args, int head_dim, int32_t max_q_len, int block_n,
                         cudaStream_t stream) {
  if (!PrefillSm90Available(head_dim)) {
    return Status::NotSupported(
        "wgmma prefill needs an sm_90 GPU, sm_90a code and head_dim 64/128");
  }
  return head_dim == 64 ? LaunchD<64>(args, max_q_len, block_n, stream)
                        : LaunchD<128>(args, max_q_len, block_n, stream);
}

}  // namespace kvkeep::cuda
