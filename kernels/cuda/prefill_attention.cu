// Paged causal prefill attention, FlashAttention-2 style on tensor cores. See attention.h.
//
// CTA = (query tile of kBlockM tokens, query head, sequence), kWarps warps, each warp owning
// 16 query rows. K/V tiles of kBlockN keys are gathered from the paged pool with cp.async
// into double-buffered, XOR-swizzled shared memory (16-byte chunk c of row r lives at chunk
// c ^ (r % 8), so ldmatrix reads are bank-conflict free). S = Q K^T and O += P V use
// mma.sync m16n8k16 (bf16 in, fp32 accumulate); P is re-packed from the S accumulators
// straight into A fragments. The softmax runs in the log2 domain.
#include <cmath>

#include "kernels/cuda/attention.h"
#include "kernels/cuda/attention_dispatch.cuh"
#include "kernels/cuda/cuda_status.h"
#include "kernels/cuda/device_utils.cuh"
#include "kernels/cuda/prefill_attention.cuh"

namespace kvkeep::cuda {
namespace {

constexpr int kWarps = 4;
constexpr int kThreads = kWarps * 32;
// Keys per K/V tile unless a test/bench hook forces 64. Measured on an H100 (causal 8k, 32
// heads, d=128, bench/RESULTS.md run 6): 32 keys 193.7 TFLOP/s vs 64 keys 183.0 with
// 128-row tiles (the 64-key kernel spills 228 bytes at 255 registers; the 32-key one 24).
constexpr int kDefaultBlockN = 32;
// The wgmma kernel's default tile: 64 keys per K/V tile (prefill_attention_sm90.cu).
constexpr int kSm90BlockN = 64;

// Element offset of 16-byte chunk `c` of row `r` in a swizzled [rows][D] tile (for D = 32
// the row has only 4 chunks, so the XOR uses r % 4 and ldmatrix sees 2-way conflicts).
template <int D>
__device__ __forceinline__ int Swz(int r, int c) {
  constexpr int kMask = D / 8 < 8 ? D / 8 - 1 : 7;
  return r * D + ((c ^ (r & kMask)) << 3);
}

template <int D, int kBlockN>
__device__ __forceinline__ void LoadKvTile(const PrefillArgs& a, const int32_t* table, int kvh,
                                           int n0, int kv_len, bf16_t* sk, bf16_t* sv) {
  constexpr int kChunks = D / 8;
  const int bs = a.kv.block_size;
#pragma unroll
  for (int i = 0; i < kBlockN * kChunks / kThreads; ++i) {
    const int id = threadIdx.x + i * kThreads;
    const int r = id / kChunks, c = id % kChunks;
    const int n = n0 + r;
    const bool valid = n < kv_len;
    int64_t off = 0;
    if (valid) {
      off = int64_t{table[n / bs]} * a.kv.block_stride + (int64_t{kvh} * bs + n % bs) * D + c * 8;
    }
    CpAsync16(sk + Swz<D>(r, c), a.kv.k + off, valid);
    CpAsync16(sv + Swz<D>(r, c), a.kv.v + off, valid);
  }
}

// kMT: 16-row m-tiles per warp (query tile = 16 * kMT * kWarps rows). With kMT = 2 every K/V
// fragment read from shared memory feeds two MMAs; Q fragments are re-read from shared
// memory at each k-step instead of being held in registers.
template <int D, int kMT, int kBlockN>
__global__ void __launch_bounds__(kThreads) PrefillKernel(const PrefillArgs a) {
  constexpr int kBlockM = 16 * kMT * kWarps;
  constexpr int kChunks = D / 8;
  constexpr int kKSteps = D / 16;  // k-steps of Q K^T
  constexpr int kNTiles = kBlockN / 8;
  constexpr int kDTiles = D / 8;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  bf16_t* sq = reinterpret_cast<bf16_t*>(smem_raw);
  bf16_t* sk = sq + kBlockM * D;      // [2][kBlockN][D]
  bf16_t* sv = sk + 2 * kBlockN * D;  // [2][kBlockN][D]

  const int seq = blockIdx.z, head = blockIdx.y;
  const int q_begin = a.batch.q_start[seq];
  const int n_new = a.batch.q_start[seq + 1] - q_begin;
  // Heaviest (last) query tiles first, so the causal tail of the grid is short.
  const int num_m_tiles = (n_new + kBlockM - 1) / kBlockM;
  if (static_cast<int>(blockIdx.x) >= num_m_tiles) return;
  const int m0 = (num_m_tiles - 1 - blockIdx.x) * kBlockM;
  const int kv_len = a.batch.kv_len[seq];
  const int pos0 = kv_len - n_new + m0;  // position of the tile's first query row
  const int kvh = head / a.group;
  const int32_t* table = a.batch.block_tables + int64_t{seq} * a.batch.max_blocks_per_seq;
  const int n_end = min(kv_len, pos0 + kBlockM);
  const int num_tiles = (n_end + kBlockN - 1) / kBlockN;

  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
#pragma unroll
  for (int i = 0; i < kBlockM * kChunks / kThreads; ++i) {
    const int id = tid + i * kThreads;
    const int r = id / kChunks, c = id % kChunks;
    const bool valid = m0 + r < n_new;
    const bf16_t* src =
        a.io.q + (valid ? (int64_t{q_begin + m0 + r} * a.io.q_token_stride + head * D + c * 8) : 0);
    CpAsync16(sq + Swz<D>(r, c), src, valid);
  }
  CpAsyncCommit();
  if (num_tiles > 0) LoadKvTile<D, kBlockN>(a, table, kvh, 0, kv_len, sk, sv);
  CpAsyncCommit();

  float o[kMT][kDTiles][4];
#pragma unroll
  for (int mt = 0; mt < kMT; ++mt) {
#pragma unroll
    for (int i = 0; i < kDTiles; ++i) o[mt][i][0] = o[mt][i][1] = o[mt][i][2] = o[mt][i][3] = 0.0f;
  }
  float row_m[kMT][2], row_l[kMT][2];
#pragma unroll
  for (int mt = 0; mt < kMT; ++mt) {
    row_m[mt][0] = row_m[mt][1] = -INFINITY;
    row_l[mt][0] = row_l[mt][1] = 0.0f;
  }
  const int g = lane / 4, t = lane % 4;
  const int warp_row0 = warp * 16 * kMT;  // tile-local first row of this warp

  for (int it = 0; it < num_tiles; ++it) {
    CpAsyncWait<0>();
    __syncthreads();
    if (it + 1 < num_tiles) {
      const int nb = (it + 1) & 1;
      LoadKvTile<D, kBlockN>(a, table, kvh, (it + 1) * kBlockN, kv_len, sk + nb * kBlockN * D,
                             sv + nb * kBlockN * D);
    }
    CpAsyncCommit();
    const bf16_t* tk = sk + (it & 1) * kBlockN * D;
    const bf16_t* tv = sv + (it & 1) * kBlockN * D;
    const int n0 = it * kBlockN;

    // S = Q K^T.
    float s[kMT][kNTiles][4];
#pragma unroll
    for (int mt = 0; mt < kMT; ++mt) {
#pragma unroll
      for (int j = 0; j < kNTiles; ++j)
        s[mt][j][0] = s[mt][j][1] = s[mt][j][2] = s[mt][j][3] = 0.0f;
    }
#pragma unroll
    for (int ks = 0; ks < kKSteps; ++ks) {
      uint32_t qf[kMT][4];
#pragma unroll
      for (int mt = 0; mt < kMT; ++mt) {
        LdMatrixX4(qf[mt], sq + Swz<D>(warp_row0 + mt * 16 + lane % 16, ks * 2 + lane / 16));
      }
#pragma unroll
      for (int j = 0; j < kNTiles; j += 2) {
        uint32_t b[4];
        const int r = j * 8 + (lane / 16) * 8 + lane % 8;
        const int c = ks * 2 + (lane / 8) % 2;
        LdMatrixX4(b, tk + Swz<D>(r, c));
#pragma unroll
        for (int mt = 0; mt < kMT; ++mt) {
          MmaBf16(s[mt][j], qf[mt], b);
          MmaBf16(s[mt][j + 1], qf[mt], b + 2);
        }
      }
    }
    // Scale, mask, online softmax (rows warp_row0 + mt * 16 + g (+ 8)).
    const bool need_mask = n0 + kBlockN > pos0 + warp_row0 || n0 + kBlockN > kv_len;
#pragma unroll
    for (int mt = 0; mt < kMT; ++mt) {
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const int pos = pos0 + warp_row0 + mt * 16 + g + h * 8;
        float mx = -INFINITY;
#pragma unroll
        for (int j = 0; j < kNTiles; ++j) {
#pragma unroll
          for (int e = 0; e < 2; ++e) {
            float v = s[mt][j][h * 2 + e] * a.scale_log2;
            if (need_mask) {
              const int n = n0 + j * 8 + 2 * t + e;
              if (n > pos || n >= kv_len) v = -INFINITY;
            }
            s[mt][j][h * 2 + e] = v;
            mx = fmaxf(mx, v);
          }
        }
        mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
        mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
        const float m_new = fmaxf(row_m[mt][h], mx);
        const float m_use = m_new == -INFINITY ? 0.0f : m_new;
        const float alpha = exp2f(row_m[mt][h] - m_use);
        row_m[mt][h] = m_new;
        float sum = 0.0f;
#pragma unroll
        for (int j = 0; j < kNTiles; ++j) {
#pragma unroll
          for (int e = 0; e < 2; ++e) {
            const float p = exp2f(s[mt][j][h * 2 + e] - m_use);
            s[mt][j][h * 2 + e] = p;
            sum += p;
          }
        }
        row_l[mt][h] = row_l[mt][h] * alpha + sum;  // quad-partial; reduced at the end
#pragma unroll
        for (int i = 0; i < kDTiles; ++i) {
          o[mt][i][h * 2] *= alpha;
          o[mt][i][h * 2 + 1] *= alpha;
        }
      }
    }
    // O += P V.
#pragma unroll
    for (int kk = 0; kk < kBlockN / 16; ++kk) {
      uint32_t pa[kMT][4];
#pragma unroll
      for (int mt = 0; mt < kMT; ++mt) {
        pa[mt][0] = PackBf16x2(s[mt][2 * kk][0], s[mt][2 * kk][1]);
        pa[mt][1] = PackBf16x2(s[mt][2 * kk][2], s[mt][2 * kk][3]);
        pa[mt][2] = PackBf16x2(s[mt][2 * kk + 1][0], s[mt][2 * kk + 1][1]);
        pa[mt][3] = PackBf16x2(s[mt][2 * kk + 1][2], s[mt][2 * kk + 1][3]);
      }
#pragma unroll
      for (int i = 0; i < kDTiles; i += 2) {
        uint32_t b[4];
        const int r = kk * 16 + ((lane / 8) % 2) * 8 + lane % 8;
        const int c = i + lane / 16;
        LdMatrixX4Trans(b, tv + Swz<D>(r, c));
#pragma unroll
        for (int mt = 0; mt < kMT; ++mt) {
          MmaBf16(o[mt][i], pa[mt], b);
          MmaBf16(o[mt][i + 1], pa[mt], b + 2);
        }
      }
    }
  }
  CpAsyncWait<0>();

  // Normalise and write rows that exist.
#pragma unroll
  for (int mt = 0; mt < kMT; ++mt) {
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      float l = row_l[mt][h];
      l += __shfl_xor_sync(0xffffffffu, l, 1);
      l += __shfl_xor_sync(0xffffffffu, l, 2);
      const float inv = l > 0.0f ? 1.0f / l : 0.0f;
      const int r = m0 + warp_row0 + mt * 16 + g + h * 8;
      if (r >= n_new) continue;
      bf16_t* dst = a.io.out + (int64_t{q_begin + r} * a.num_q_heads + head) * D;
#pragma unroll
      for (int i = 0; i < kDTiles; ++i) {
        *reinterpret_cast<__nv_bfloat162*>(dst + i * 8 + 2 * t) =
            __floats2bfloat162_rn(o[mt][i][h * 2] * inv, o[mt][i][h * 2 + 1] * inv);
      }
    }
  }
}

template <int D, int kMT, int kBlockN>
Status LaunchPrefill(const PrefillArgs& args, int32_t max_q_len, cudaStream_t stream) {
  constexpr int kBlockM = 16 * kMT * kWarps;
  const size_t smem = size_t(kBlockM + 4 * kBlockN) * D * sizeof(bf16_t);
  KVKEEP_CUDA_RETURN(cudaFuncSetAttribute(PrefillKernel<D, kMT, kBlockN>,
                                          cudaFuncAttributeMaxDynamicSharedMemorySize,
                                          static_cast<int>(smem)));
  const dim3 grid((max_q_len + kBlockM - 1) / kBlockM, args.num_q_heads, args.batch.num_seqs);
  PrefillKernel<D, kMT, kBlockN><<<grid, kThreads, smem, stream>>>(args);
  KVKEEP_CUDA_LAUNCH_CHECK();
  return Status::OK();
}

Result<PrefillArgs> MakeArgs(const AttentionParams& params, const AttentionBatch& batch,
                             const PagedKv<bf16_t>& kv, const AttentionIo& io) {
  if (kv.num_kv_heads <= 0 || params.num_q_heads % kv.num_kv_heads != 0) {
    return Status::InvalidArgument("prefill attention: num_q_heads % num_kv_heads != 0");
  }
  PrefillArgs args;
  args.batch = batch;
  args.kv = kv;
  args.io = io;
  args.num_q_heads = params.num_q_heads;
  args.group = params.num_q_heads / kv.num_kv_heads;
  args.scale_log2 = params.scale * kLog2e;
  return args;
}

Status Prefill(const AttentionParams& params, const AttentionBatch& batch,
               const PagedKv<bf16_t>& kv, const AttentionIo& io, int32_t max_q_len,
               int rows_per_warp, int block_n, cudaStream_t stream) {
  if (batch.num_seqs == 0 || max_q_len <= 0) return Status::OK();
  ASSIGN_OR_RETURN(const PrefillArgs args, MakeArgs(params, batch, kv, io));
  // Default path on Hopper: the wgmma kernel (prefill_attention_sm90.cu) for tiles that
  // fill its 128-row query tile at least half-way.
  if (rows_per_warp == 0 && block_n == kDefaultBlockN && max_q_len > 64 &&
      PrefillSm90Available(kv.head_dim)) {
    return LaunchPrefillSm90(args, kv.head_dim, max_q_len, kSm90BlockN, stream);
  }
  return DispatchHeadDim(kv.head_dim, [&](auto d_tag) -> Status {
    constexpr int D = decltype(d_tag)::value;
    // Short chunks (decode tokens, small prefills) waste less of a 64-row tile.
    const bool wide = rows_per_warp == 32 || (rows_per_warp == 0 && max_q_len > 64);
    if (block_n == 64) {
      return wide ? LaunchPrefill<D, 2, 64>(args, max_q_len, stream)
                  : LaunchPrefill<D, 1, 64>(args, max_q_len, stream);
    }
    return wide ? LaunchPrefill<D, 2, 32>(args, max_q_len, stream)
                : LaunchPrefill<D, 1, 32>(args, max_q_len, stream);
  });
}

}  // namespace

Status PagedPrefillAttention(const AttentionParams& params, const AttentionBatch& batch,
                             const PagedKv<bf16_t>& kv, const AttentionIo& io, int32_t max_q_len,
                             cudaStream_t stream) {
  return Prefill(params, batch, kv, io, max_q_len, 0, kDefaultBlockN, stream);
}

Status TEST_PagedPrefillAttention(const AttentionParams& params, const AttentionBatch& batch,
                                  const PagedKv<bf16_t>& kv, const AttentionIo& io,
                                  int32_t max_q_len, int rows_per_warp, cudaStream_t stream) {
  if (rows_per_warp != 16 && rows_per_warp != 32) {
    return Status::InvalidArgument("rows_per_warp must be 16 or 32");
  }
  return Prefill(params, batch, kv, io, max_q_len, rows_per_warp, kDefaultBlockN, stream);
}

Status TEST_PagedPrefillAttentionTiles(const AttentionParams& params, const AttentionBatch& batch,
                                       const PagedKv<bf16_t>& kv, const AttentionIo& io,
                                       int32_t max_q_len, int rows_per_warp, int block_n,
                                       cudaStream_t stream) {
  if (rows_per_warp != 16 && rows_per_warp != 32) {
    return Status::InvalidArgument("rows_per_warp must be 16 or 32");
  }
  if (block_n != 32 && block_n != 64) return Status::InvalidArgument("block_n must be 32 or 64");
  return Prefill(params, batch, kv, io, max_q_len, rows_per_warp, block_n, stream);
}

Status TEST_PagedPrefillAttentionSm90(const AttentionParams& params, const AttentionBatch& batch,
                                      const PagedKv<bf16_t>& kv, const AttentionIo& io,
                                      int32_t max_q_len, int block_n, cudaStream_t stream) {
  if (batch.num_seqs == 0 || max_q_len <= 0) return Status::OK();
  ASSIGN_OR_RETURN(const PrefillArgs args, MakeArgs(params, batch, kv, io));
  return LaunchPrefillSm90(args, kv.head_dim, max_q_len, block_n, stream);
}

}  // namespace kvkeep::cuda
