// Paged decode attention (flash-decoding). See attention.h for the contract.
//
// CTA = (split, KV head, sequence), kDecodeWarps warps. The CTA's token range is cut into
// 16-token tiles (one page when block_size is a multiple of 16: K and V of a page are each
// one contiguous 16 x head_dim run of the pool), dealt round-robin to the warps. Each warp
// runs its own kStages-deep cp.async pipeline into shared memory (16-byte .cg copies, no
// registers held by loads in flight), synchronised by cp.async.wait_group + __syncwarp
// only, so several pages per warp stay in flight while it computes the current one; the
// block ids of a warp's next 32 tiles are loaded once, one per lane, and shuffled out.
// Every K/V byte is read from memory once for the G query heads that share it.
//
// Two ways to compute a tile, same pipeline and merge:
//   DecodeKernel (CUDA cores, GQA groups 1-3): a key row is read from shared memory by kTpr
//     lanes, each owning kVec dims of it; every lane keeps the queries of the G heads.
//   DecodeTcKernel (tensor cores, groups 4 and 8): mma.sync with the G heads as the rows of
//     a 16-row A operand, so a page costs a few dozen instructions per warp instead of
//     hundreds (bench/RESULTS.md: B=64 L=4096 2977 vs 2863 GB/s, B=1 L=32768 2434 vs 2384).
// Each warp keeps its own online-softmax state; the states are merged through shared memory
// across warps, and across splits by the reduce kernel (launched with programmatic
// dependent launch so its launch overlaps the main kernel; it loads the splits'
// log-sum-exps one per thread and merges the partial outputs with independent loads).
#include <algorithm>
#include <cmath>

#include "kernels/cuda/attention.h"
#include "kernels/cuda/attention_dispatch.cuh"
#include "kernels/cuda/cuda_status.h"
#include "kernels/cuda/device_utils.cuh"

namespace kvkeep::cuda {
namespace {

constexpr int kDecodeWarps = 4;
constexpr int kDecodeThreads = kDecodeWarps * 32;
constexpr int kTile = 16;  // tokens per pipeline stage
// Pipeline depth per warp (tiles in flight while one is computed: kStages - 1); 96 KB of
// shared memory per CTA at head_dim 128, two CTAs per SM. Measured on an H100 against 6
// stages (192 KB, one CTA per SM): B=64 L=4096 2824 vs 2668 GB/s, B=128 L=2048 2848 vs
// 2620 (bench/RESULTS.md run 5).
constexpr int kStages = 3;
constexpr int kMaxSplits = 128;

struct DecodeArgs {
  AttentionBatch batch;
  PagedKv<bf16_t> kv;
  AttentionIo io;
  int32_t num_q_heads;
  float scale_log2;  // scale * log2(e)
  float* ws_o;       // [num_seqs][num_q_heads][num_splits][head_dim]
  float* ws_lse;     // [num_seqs][num_q_heads][num_splits], log2 domain
};

template <int D, int G>
struct DecodeCfg {
  // Dims per lane: 16 (two 16-byte chunks, half the shuffles) while the G query vectors
  // and accumulators fit in registers, else 8.
  static constexpr int kCpl = G <= 4 ? 2 : 1;  // 16-byte chunks per lane per row
  static constexpr int kVec = 8 * kCpl;
  static constexpr int kTpr = D / kVec;  // lanes per key row
  static constexpr int kRowsPerPass = 32 / kTpr;
  static constexpr int kPasses = kTile / kRowsPerPass;
  static constexpr int kChunksPerLane = kTile * D / 8 / 32;  // per K (and per V) tile
  static constexpr int kStageElems = 2 * kTile * D;          // K tile then V tile
  // The warps' pipelines, reused by the cross-warp merge ([warps][G][D] outputs, then
  // [warps][G] maxima and sums).
  static constexpr size_t kPipeBytes =
      size_t{kDecodeWarps} * kStages * kStageElems * sizeof(bf16_t);
  static constexpr size_t kMergeBytes = size_t{kDecodeWarps} * G * (D + 2) * sizeof(float);
  static constexpr size_t kSmemBytes = kPipeBytes > kMergeBytes ? kPipeBytes : kMergeBytes;
  static_assert(kTpr >= 2 && kTpr <= 32 && kPasses >= 1, "decode lane layout");
};

// Split `split` of sequence `seq` covers tokens [begin, end) (a multiple of kTile tokens
// long, possibly empty); warp w computes its tiles w, w + kDecodeWarps, ... (my_tiles).
struct SplitRange {
  int begin, end, my_tiles;
};
__device__ __forceinline__ SplitRange SplitTokens(const DecodeArgs& args, int seq, int split,
                                                  int num_splits, int warp) {
  const int kv_len = args.batch.kv_len[seq];
  int chunk = (kv_len + num_splits - 1) / num_splits;
  chunk = (chunk + kTile - 1) / kTile * kTile;
  SplitRange r;
  r.begin = split * chunk;
  r.end = min(kv_len, r.begin + chunk);
  const int num_tiles = r.end > r.begin ? (r.end - r.begin + kTile - 1) / kTile : 0;
  r.my_tiles = num_tiles > warp ? (num_tiles - warp + kDecodeWarps - 1) / kDecodeWarps : 0;
  return r;
}

// Element offset of 16-byte chunk c of row r in a [rows][D] stage whose chunks are XOR-swizzled
// by row, so ldmatrix reads of 8 rows hit distinct banks.
template <int D>
__device__ __forceinline__ int TcSwz(int r, int c) {
  constexpr int kMask = D / 8 < 8 ? D / 8 - 1 : 7;
  return r * D + ((c ^ (r & kMask)) << 3);
}

// One warp's K/V tile loads, shared by both decode kernels: warp-local tile k covers tokens
// warp_t0 + k * kDecodeWarps * kTile onwards, and Issue(k) copies its K and V rows into
// stage k % kStages with 16-byte cp.async (zero-filled past `end`). With block_size a
// multiple of kTile a tile lies in one block, whose id comes from a per-lane cache of the
// next 32 tiles' ids (one coalesced load per 32 tiles, then shuffles); otherwise every
// chunk looks its block up. kSwizzle XORs each row's 16-byte chunks (for ldmatrix).
template <int D, int G, bool kSwizzle>
struct WarpTileLoader {
  using C = DecodeCfg<D, G>;
  const DecodeArgs& args;
  const int32_t* table;
  const bf16_t* kbase;
  const bf16_t* vbase;
  bf16_t* stage0;
  int warp_t0, end, my_tiles, lane;
  int ids = 0;

  __device__ __forceinline__ WarpTileLoader(const DecodeArgs& a, int seq, int kvh, int begin,
                                            int end_, int my_tiles_, unsigned char* smem)
      : args(a),
        table(a.batch.block_tables + int64_t{seq} * a.batch.max_blocks_per_seq),
        kbase(a.kv.k + int64_t{kvh} * a.kv.block_size * D),
        vbase(a.kv.v + int64_t{kvh} * a.kv.block_size * D),
        stage0(reinterpret_cast<bf16_t*>(smem) + (threadIdx.x / 32) * kStages * C::kStageElems),
        warp_t0(begin + (threadIdx.x / 32) * kTile),
        end(end_),
        my_tiles(my_tiles_),
        lane(threadIdx.x % 32) {}

  __device__ __forceinline__ int TileStart(int k) const {
    return warp_t0 + k * kDecodeWarps * kTile;
  }
  __device__ __forceinline__ const bf16_t* Stage(int k) const {
    return stage0 + (k % kStages) * C::kStageElems;  // K rows, then V rows (+ kTile * D)
  }

  __device__ __forceinline__ void Issue(int k) {  // warp-uniform, k < my_tiles
    bf16_t* sk = stage0 + (k % kStages) * C::kStageElems;
    bf16_t* sv = sk + kTile * D;
    const int bs = args.kv.block_size;
    const bool page_aligned = bs % kTile == 0;
    const int t0 = TileStart(k);
    // Destination of 16-byte chunk c (row c / (D / 8)) in the stage.
    auto dst = [](int c) { return kSwizzle ? TcSwz<D>(c / (D / 8), c % (D / 8)) : c * 8; };
    if (page_aligned) {
      if (k % 32 == 0) {
        const int kk = k + lane;
        ids = kk < my_tiles ? table[TileStart(kk) / bs] : 0;
      }
      const int64_t blk = __shfl_sync(0xffffffffu, ids, k % 32);
      const int64_t off = blk * args.kv.block_stride + int64_t{t0 % bs} * D;
#pragma unroll
      for (int i = 0; i < C::kChunksPerLane; ++i) {  // the tile's rows are contiguous
        const int c = lane + i * 32;
        const bool valid = t0 + c / (D / 8) < end;
        CpAsync16(sk + dst(c), valid ? kbase + off + c * 8 : kbase, valid);
        CpAsync16(sv + dst(c), valid ? vbase + off + c * 8 : vbase, valid);
      }
    } else {
#pragma unroll
      for (int i = 0; i < C::kChunksPerLane; ++i) {
        const int c = lane + i * 32;
        const int t = t0 + c / (D / 8);
        const bool valid = t < end;
        int64_t off = 0;
        if (valid) {
          off = int64_t{table[t / bs]} * args.kv.block_stride + int64_t{t % bs} * D +
                (c % (D / 8)) * 8;
        }
        CpAsync16(sk + dst(c), kbase + off, valid);
        CpAsync16(sv + dst(c), vbase + off, valid);
      }
    }
  }
};

// The CTA's last step, shared by both decode kernels: merges the per-warp online-softmax
// states that each warp left in shared memory as [warps][G][D] outputs, then [warps][G] maxima
// and [warps][G] sums, and writes the output (one split) or the split's partial and its
// log-sum-exp to the workspace.
template <int D, int G>
__device__ __forceinline__ void MergeWarpsAndStore(const DecodeArgs& args,
                                                   const unsigned char* smem, int kvh, int seq,
                                                   int split, int q_token) {
  const float* sm_o = reinterpret_cast<const float*>(smem);
  const float* sm_m = sm_o + kDecodeWarps * G * D;
  const float* sm_d = sm_m + kDecodeWarps * G;
  const int num_splits = gridDim.x;
  for (int e = threadIdx.x; e < G * D; e += kDecodeThreads) {
    const int g = e / D, dim = e % D;
    float mx = -INFINITY;
#pragma unroll
    for (int w = 0; w < kDecodeWarps; ++w) mx = fmaxf(mx, sm_m[w * G + g]);
    float sum = 0.0f, acc = 0.0f;
    if (mx != -INFINITY) {
#pragma unroll
      for (int w = 0; w < kDecodeWarps; ++w) {
        const float wt = exp2f(sm_m[w * G + g] - mx);  // 0 for a warp that saw nothing
        sum += wt * sm_d[w * G + g];
        acc += wt * sm_o[(w * G + g) * D + dim];
      }
    }
    const int head = kvh * G + g;
    const float val = sum > 0.0f ? acc / sum : 0.0f;
    if (num_splits == 1) {
      args.io.out[(int64_t{q_token} * args.num_q_heads + head) * D + dim] = __float2bfloat16(val);
    } else {
      const int64_t idx = (int64_t{seq} * args.num_q_heads + head) * num_splits + split;
      args.ws_o[idx * D + dim] = val;
      if (dim == 0) args.ws_lse[idx] = sum > 0.0f ? mx + log2f(sum) : -INFINITY;
    }
  }
}

template <int D, int G>
__global__ void __launch_bounds__(kDecodeThreads) DecodeKernel(const DecodeArgs args) {
  using C = DecodeCfg<D, G>;
  extern __shared__ __align__(16) unsigned char smem_raw[];
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  // Programmatic dependent launch: the reduce kernel may launch now; it waits for this
  // whole grid (and its memory) in griddepcontrol.wait.
  asm volatile("griddepcontrol.launch_dependents;\n" ::);
#endif
  const int split = blockIdx.x, kvh = blockIdx.y, seq = blockIdx.z;
  const int num_splits = gridDim.x;
  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
  const int lane_in_row = lane % C::kTpr;
  const int row_in_pass = lane / C::kTpr;

  const SplitRange range = SplitTokens(args, seq, split, num_splits, warp);
  const int begin = range.begin, end = range.end, my_tiles = range.my_tiles;
  const int q_token = args.batch.q_start[seq];

  float q[G][C::kVec];
#pragma unroll
  for (int g = 0; g < G; ++g) {
    const bf16_t* qp = args.io.q + int64_t{q_token} * args.io.q_token_stride + (kvh * G + g) * D;
#pragma unroll
    for (int cc = 0; cc < C::kCpl; ++cc) {
      const int c = lane_in_row + cc * C::kTpr;
      Bf16x8ToFloat(*reinterpret_cast<const uint4*>(qp + c * 8), &q[g][cc * 8]);
    }
#pragma unroll
    for (int i = 0; i < C::kVec; ++i) q[g][i] *= args.scale_log2;
  }
  float o[G][C::kVec];
  float m[G], d[G];
#pragma unroll
  for (int g = 0; g < G; ++g) {
    m[g] = -INFINITY;
    d[g] = 0.0f;
#pragma unroll
    for (int i = 0; i < C::kVec; ++i) o[g][i] = 0.0f;
  }

  WarpTileLoader<D, G, false> loader(args, seq, kvh, begin, end, my_tiles, smem_raw);
#pragma unroll
  for (int s = 0; s < kStages - 1; ++s) {
    if (s < my_tiles) loader.Issue(s);
    CpAsyncCommit();
  }
  for (int k = 0; k < my_tiles; ++k) {
    if (k + kStages - 1 < my_tiles) loader.Issue(k + kStages - 1);
    CpAsyncCommit();
    CpAsyncWait<kStages - 1>();  // tile k has landed (this lane's copies)
    __syncwarp();                // ... and every lane's
    const bf16_t* sk = loader.Stage(k);
    const bf16_t* sv = sk + kTile * D;
    const int t0 = loader.TileStart(k);

    float s[C::kPasses][G];
#pragma unroll
    for (int p = 0; p < C::kPasses; ++p) {
      const int r = p * C::kRowsPerPass + row_in_pass;
      float kf[C::kVec];
#pragma unroll
      for (int cc = 0; cc < C::kCpl; ++cc) {
        const int c = lane_in_row + cc * C::kTpr;
        Bf16x8ToFloat(*reinterpret_cast<const uint4*>(sk + r * D + c * 8), &kf[cc * 8]);
      }
#pragma unroll
      for (int g = 0; g < G; ++g) {
        float acc = 0.0f;
#pragma unroll
        for (int i = 0; i < C::kVec; ++i) acc = fmaf(q[g][i], kf[i], acc);
        s[p][g] = acc;
      }
    }
#pragma unroll
    for (int p = 0; p < C::kPasses; ++p) {
      const bool valid = t0 + p * C::kRowsPerPass + row_in_pass < end;
#pragma unroll
      for (int g = 0; g < G; ++g) {
#pragma unroll
        for (int off = C::kTpr / 2; off > 0; off >>= 1) {
          s[p][g] += __shfl_xor_sync(0xffffffffu, s[p][g], off);
        }
        if (!valid) s[p][g] = -INFINITY;
      }
    }
#pragma unroll
    for (int g = 0; g < G; ++g) {
      float mx = s[0][g];
#pragma unroll
      for (int p = 1; p < C::kPasses; ++p) mx = fmaxf(mx, s[p][g]);
      const float m_new = fmaxf(m[g], mx);
      if (m_new == -INFINITY) continue;  // nothing valid seen yet
      const float alpha = exp2f(m[g] - m_new);
      m[g] = m_new;
      d[g] *= alpha;
#pragma unroll
      for (int i = 0; i < C::kVec; ++i) o[g][i] *= alpha;
    }
#pragma unroll
    for (int p = 0; p < C::kPasses; ++p) {
      const int r = p * C::kRowsPerPass + row_in_pass;
      float vf[C::kVec];
#pragma unroll
      for (int cc = 0; cc < C::kCpl; ++cc) {
        const int c = lane_in_row + cc * C::kTpr;
        Bf16x8ToFloat(*reinterpret_cast<const uint4*>(sv + r * D + c * 8), &vf[cc * 8]);
      }
#pragma unroll
      for (int g = 0; g < G; ++g) {
        // exp2(-inf - m) == 0 for masked rows; m is finite once any row was valid.
        const float pr = s[p][g] == -INFINITY ? 0.0f : exp2f(s[p][g] - m[g]);
        d[g] += pr;
#pragma unroll
        for (int i = 0; i < C::kVec; ++i) o[g][i] = fmaf(pr, vf[i], o[g][i]);
      }
    }
    __syncwarp();  // every lane is done with this stage before it is refilled
  }
  CpAsyncWait<0>();

  // Merge the lane groups of each warp (lanes with equal lane_in_row) with shuffles.
#pragma unroll
  for (int g = 0; g < G; ++g) {
    float mw = m[g];
#pragma unroll
    for (int off = C::kTpr; off < 32; off <<= 1) {
      mw = fmaxf(mw, __shfl_xor_sync(0xffffffffu, mw, off));
    }
    const float sc = m[g] == -INFINITY ? 0.0f : exp2f(m[g] - mw);
    d[g] *= sc;
#pragma unroll
    for (int i = 0; i < C::kVec; ++i) o[g][i] *= sc;
#pragma unroll
    for (int off = C::kTpr; off < 32; off <<= 1) {
      d[g] += __shfl_xor_sync(0xffffffffu, d[g], off);
#pragma unroll
      for (int i = 0; i < C::kVec; ++i) o[g][i] += __shfl_xor_sync(0xffffffffu, o[g][i], off);
    }
    m[g] = mw;
  }
  __syncthreads();  // the pipeline stages are reused for the merge below
  float* sm_o = reinterpret_cast<float*>(smem_raw);  // [warps][G][D]
  float* sm_m = sm_o + kDecodeWarps * G * D;         // [warps][G]
  float* sm_d = sm_m + kDecodeWarps * G;             // [warps][G]
  if (row_in_pass == 0) {
#pragma unroll
    for (int g = 0; g < G; ++g) {
      if (lane == 0) {
        sm_m[warp * G + g] = m[g];
        sm_d[warp * G + g] = d[g];
      }
#pragma unroll
      for (int cc = 0; cc < C::kCpl; ++cc) {
        const int c = lane_in_row + cc * C::kTpr;
#pragma unroll
        for (int i = 0; i < 8; ++i) sm_o[(warp * G + g) * D + c * 8 + i] = o[g][cc * 8 + i];
      }
    }
  }
  __syncthreads();
  MergeWarpsAndStore<D, G>(args, smem_raw, kvh, seq, split, q_token);
}

// One CTA per (query head, sequence), one thread per dim. The splits' log-sum-exps are
// loaded in parallel (thread t holds splits t, t + D, ...) and reduced across the block;
// the weights go through shared memory, and each thread then sums its dim of the partial
// outputs with kUnroll independent loads in flight.
// Tensor-core variant: each warp computes a 16-token tile with mma.sync m16n8k16:
// S[16 x 16] = Q K^T with the G query heads as the first G rows of A (the rest zero), then
// O[16 x D] += P V. Stages are XOR-swizzled by 16-byte chunk so ldmatrix is conflict-free.

template <int D, int G>
__global__ void __launch_bounds__(kDecodeThreads) DecodeTcKernel(const DecodeArgs args) {
  using C = DecodeCfg<D, G>;
  static_assert(G <= 8, "tensor-core decode: at most 8 query heads per KV head");
  extern __shared__ __align__(16) unsigned char smem_raw[];
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.launch_dependents;\n" ::);
#endif
  const int split = blockIdx.x, kvh = blockIdx.y, seq = blockIdx.z;
  const int num_splits = gridDim.x;
  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
  const int g = lane / 4, t = lane % 4;

  const SplitRange range = SplitTokens(args, seq, split, num_splits, warp);
  const int begin = range.begin, end = range.end, my_tiles = range.my_tiles;
  const int q_token = args.batch.q_start[seq];

  // Q as A fragments (rows g < G real, the rest zero), one per 16-dim k-step.
  uint32_t qa[D / 16][4];
  {
    const bf16_t* qp =
        args.io.q + int64_t{q_token} * args.io.q_token_stride + (kvh * G + (g < G ? g : 0)) * D;
#pragma unroll
    for (int ks = 0; ks < D / 16; ++ks) {
      qa[ks][0] = g < G ? *reinterpret_cast<const uint32_t*>(qp + 16 * ks + 2 * t) : 0u;
      qa[ks][1] = 0u;
      qa[ks][2] = g < G ? *reinterpret_cast<const uint32_t*>(qp + 16 * ks + 8 + 2 * t) : 0u;
      qa[ks][3] = 0u;
    }
  }
  float o[D / 8][4];
#pragma unroll
  for (int j = 0; j < D / 8; ++j) o[j][0] = o[j][1] = o[j][2] = o[j][3] = 0.0f;
  float m = -INFINITY, l = 0.0f;  // row g's running max (log2 domain) and quad-partial sum

  WarpTileLoader<D, G, true> loader(args, seq, kvh, begin, end, my_tiles, smem_raw);
#pragma unroll
  for (int st = 0; st < kStages - 1; ++st) {
    if (st < my_tiles) loader.Issue(st);
    CpAsyncCommit();
  }
  for (int k = 0; k < my_tiles; ++k) {
    if (k + kStages - 1 < my_tiles) loader.Issue(k + kStages - 1);
    CpAsyncCommit();
    CpAsyncWait<kStages - 1>();
    __syncwarp();
    const bf16_t* sk = loader.Stage(k);
    const bf16_t* sv = sk + kTile * D;
    const int t0 = loader.TileStart(k);

    float s[2][4];  // tokens 8j + 2t (+1) of rows g (and g + 8, unused)
#pragma unroll
    for (int j = 0; j < 2; ++j) s[j][0] = s[j][1] = s[j][2] = s[j][3] = 0.0f;
#pragma unroll
    for (int ks = 0; ks < D / 16; ++ks) {
      uint32_t b[4];
      LdMatrixX4(b, sk + TcSwz<D>((lane / 16) * 8 + lane % 8, ks * 2 + (lane / 8) % 2));
      MmaBf16(s[0], qa[ks], b);
      MmaBf16(s[1], qa[ks], b + 2);
    }
    float mx = -INFINITY;
#pragma unroll
    for (int j = 0; j < 2; ++j) {
#pragma unroll
      for (int e = 0; e < 2; ++e) {
        const bool valid = t0 + 8 * j + 2 * t + e < end;
        s[j][e] = valid ? s[j][e] * args.scale_log2 : -INFINITY;
        mx = fmaxf(mx, s[j][e]);
      }
    }
    mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
    mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
    const float m_new = fmaxf(m, mx);
    const float m_use = m_new == -INFINITY ? 0.0f : m_new;
    const float alpha = FastExp2(m - m_use);
    m = m_new;
    float sum = 0.0f;
#pragma unroll
    for (int j = 0; j < 2; ++j) {
#pragma unroll
      for (int e = 0; e < 2; ++e) {
        s[j][e] = FastExp2(s[j][e] - m_use);
        sum += s[j][e];
      }
    }
    l = l * alpha + sum;
    uint32_t pa[4];
    pa[0] = PackBf16x2(s[0][0], s[0][1]);
    pa[1] = 0u;
    pa[2] = PackBf16x2(s[1][0], s[1][1]);
    pa[3] = 0u;
#pragma unroll
    for (int i = 0; i < D / 8; i += 2) {
      o[i][0] *= alpha;
      o[i][1] *= alpha;
      o[i + 1][0] *= alpha;
      o[i + 1][1] *= alpha;
      uint32_t b[4];
      LdMatrixX4Trans(b, sv + TcSwz<D>(((lane / 8) % 2) * 8 + lane % 8, i + lane / 16));
      MmaBf16(o[i], pa, b);
      MmaBf16(o[i + 1], pa, b + 2);
    }
    __syncwarp();  // every lane is done with this stage before it is refilled
  }
  CpAsyncWait<0>();

  // Merge the warps through shared memory (as DecodeKernel): row g of each warp, g < G.
  l += __shfl_xor_sync(0xffffffffu, l, 1);
  l += __shfl_xor_sync(0xffffffffu, l, 2);
  __syncthreads();  // the pipeline stages are reused for the merge below
  float* sm_o = reinterpret_cast<float*>(smem_raw);  // [warps][G][D]
  float* sm_m = sm_o + kDecodeWarps * G * D;         // [warps][G]
  float* sm_d = sm_m + kDecodeWarps * G;             // [warps][G]
  if (g < G) {
    if (t == 0) {
      sm_m[warp * G + g] = m;
      sm_d[warp * G + g] = l;
    }
#pragma unroll
    for (int j = 0; j < D / 8; ++j) {
      sm_o[(warp * G + g) * D + 8 * j + 2 * t] = o[j][0];
      sm_o[(warp * G + g) * D + 8 * j + 2 * t + 1] = o[j][1];
    }
  }
  __syncthreads();
  MergeWarpsAndStore<D, G>(args, smem_raw, kvh, seq, split, q_token);
}

template <int D>
__global__ void __launch_bounds__(D) DecodeReduceKernel(const DecodeArgs args, int num_splits) {
  constexpr int kWarps = D / 32;
  constexpr int kPerThread = (kMaxSplits + D - 1) / D;
  constexpr int kUnroll = 8;
  __shared__ float sm_w[kMaxSplits];
  __shared__ float sm_max[kWarps], sm_sum[kWarps];
  const int head = blockIdx.x, seq = blockIdx.y, tid = threadIdx.x;
  const int lane = tid % 32, warp = tid / 32;
  const int64_t base = (int64_t{seq} * args.num_q_heads + head) * num_splits;
  // q_start is an input written before the split kernel started (this kernel launches only
  // once that one runs), so it may be read before the wait; ws_* may not.
  const int q_token = args.batch.q_start[seq];
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;\n" ::: "memory");  // the split kernel's writes
#endif
  float lse[kPerThread];
  float mx = -INFINITY;
#pragma unroll
  for (int i = 0; i < kPerThread; ++i) {
    const int s = tid + i * D;
    lse[i] = s < num_splits ? __ldcg(args.ws_lse + base + s) : -INFINITY;
    mx = fmaxf(mx, lse[i]);
  }
  mx = WarpMax(mx);
  if (lane == 0) sm_max[warp] = mx;
  __syncthreads();
  mx = sm_max[0];
#pragma unroll
  for (int w = 1; w < kWarps; ++w) mx = fmaxf(mx, sm_max[w]);
  float sum = 0.0f;
#pragma unroll
  for (int i = 0; i < kPerThread; ++i) {
    const int s = tid + i * D;
    // An empty split (lse -inf) weighs 0; so does every split when all are empty.
    const float w = lse[i] == -INFINITY ? 0.0f : exp2f(lse[i] - mx);
    if (s < num_splits) sm_w[s] = w;
    sum += w;
  }
  sum = WarpSum(sum);
  if (lane == 0) sm_sum[warp] = sum;
  __syncthreads();  // sm_w and sm_sum
  sum = sm_sum[0];
#pragma unroll
  for (int w = 1; w < kWarps; ++w) sum += sm_sum[w];
  const float* o = args.ws_o + base * D + tid;
  float acc[kUnroll];
#pragma unroll
  for (int j = 0; j < kUnroll; ++j) acc[j] = 0.0f;
  for (int s0 = 0; s0 < num_splits; s0 += kUnroll) {
    float ov[kUnroll];
#pragma unroll
    for (int j = 0; j < kUnroll; ++j) {
      ov[j] = s0 + j < num_splits ? __ldcg(o + int64_t{s0 + j} * D) : 0.0f;
    }
#pragma unroll
    for (int j = 0; j < kUnroll; ++j) {
      if (s0 + j < num_splits) acc[j] = fmaf(sm_w[s0 + j], ov[j], acc[j]);
    }
  }
  float total = 0.0f;
#pragma unroll
  for (int j = 0; j < kUnroll; ++j) total += acc[j];
  args.io.out[(int64_t{q_token} * args.num_q_heads + head) * D + tid] =
      __float2bfloat16(sum > 0.0f ? total / sum : 0.0f);
}

template <int D, int G, bool kTensorCores>
Status LaunchDecode(const DecodeArgs& args, int num_kv_heads, int num_splits, cudaStream_t stream) {
  constexpr size_t kSmem = DecodeCfg<D, G>::kSmemBytes;
  constexpr auto kernel = kTensorCores ? DecodeTcKernel<D, G> : DecodeKernel<D, G>;
  // Once per instantiation (the attribute belongs to the function, not to a launch).
  static const cudaError_t attr_err = cudaFuncSetAttribute(
      kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(kSmem));
  KVKEEP_CUDA_RETURN(attr_err);
  const dim3 grid(num_splits, num_kv_heads, args.batch.num_seqs);
  kernel<<<grid, kDecodeThreads, kSmem, stream>>>(args);
  KVKEEP_CUDA_LAUNCH_CHECK();
  if (num_splits > 1) {
    cudaLaunchConfig_t cfg = {};
    cfg.gridDim = dim3(args.num_q_heads, args.batch.num_seqs);
    cfg.blockDim = dim3(D);
    cfg.dynamicSmemBytes = 0;
    cfg.stream = stream;
    cudaLaunchAttribute attr[1];
    attr[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
    attr[0].val.programmaticStreamSerializationAllowed = 1;
    cfg.attrs = attr;
    cfg.numAttrs = 1;
    KVKEEP_CUDA_RETURN(cudaLaunchKernelEx(&cfg, DecodeReduceKernel<D>, args, num_splits));
  }
  return Status::OK();
}

constexpr int kMinSplitTokens = 256;

}  // namespace

DecodePlan PlanDecode(int32_t num_seqs, int32_t num_kv_heads, int32_t max_kv_len, int32_t num_sms) {
  DecodePlan plan;
  const int64_t ctas = int64_t{std::max(num_seqs, 1)} * std::max(num_kv_heads, 1);
  const int64_t sms = std::max(num_sms, 1);
  // Every CTA keeps kDecodeWarps * (kStages - 1) pages in flight, enough to pull its share
  // of the bandwidth alone, so one CTA per SM needs no split; below that, split to one CTA
  // per SM, never shorter than kMinSplitTokens. Measured on an H100 (132 SMs, 8 KV heads,
  // d=128): B=16 L=8192 unsplit 2772-2784 GB/s vs 3 splits 2300; B=1 L=32768 16 splits
  // 2230-2240 vs 33 splits 2011-2048 vs 128 splits 1536-1556 (bench/RESULTS.md runs 4-7,
  // figures timed after another variant of the same case).
  if (ctas < sms) {
    int64_t splits = sms / ctas;
    splits = std::min<int64_t>(splits, std::max<int64_t>(1, max_kv_len / kMinSplitTokens));
    plan.num_splits = static_cast<int32_t>(std::clamp<int64_t>(splits, 1, kMaxSplits));
  }
  return plan;
}

size_t DecodeWorkspaceBytes(int32_t num_seqs, int32_t num_q_heads, int32_t head_dim,
                            const DecodePlan& plan) {
  if (plan.num_splits <= 1) return 0;
  const size_t rows = size_t(num_seqs) * num_q_heads * plan.num_splits;
  return rows * (head_dim + 1) * sizeof(float);
}

namespace {

// kernel: 0 picks (tensor cores for G >= 4), 1 the CUDA-core kernel, 2 the tensor-core one.
Status Decode(const AttentionParams& params, const AttentionBatch& batch, const PagedKv<bf16_t>& kv,
              const AttentionIo& io, const DecodePlan& plan, float* workspace, int kernel,
              cudaStream_t stream) {
  if (batch.num_seqs == 0) return Status::OK();
  if (kv.num_kv_heads <= 0 || params.num_q_heads % kv.num_kv_heads != 0) {
    return Status::InvalidArgument("decode attention: num_q_heads % num_kv_heads != 0");
  }
  if (plan.num_splits < 1 || plan.num_splits > kMaxSplits) {
    return Status::InvalidArgument("decode attention: num_splits out of range");
  }
  if (plan.num_splits > 1 && workspace == nullptr) {
    return Status::InvalidArgument("decode attention: split path needs a workspace");
  }
  DecodeArgs args;
  args.batch = batch;
  args.kv = kv;
  args.io = io;
  args.num_q_heads = params.num_q_heads;
  args.scale_log2 = params.scale * kLog2e;
  const size_t rows = size_t(batch.num_seqs) * params.num_q_heads * plan.num_splits;
  args.ws_o = workspace;
  args.ws_lse = workspace ? workspace + rows * kv.head_dim : nullptr;
  const int group = params.num_q_heads / kv.num_kv_heads;
  return DispatchHeadDim(kv.head_dim, [&](auto d_tag) -> Status {
    constexpr int D = decltype(d_tag)::value;
    return DispatchGqaGroup(group, [&](auto g_tag) -> Status {
      constexpr int G = decltype(g_tag)::value;
      if (kernel == 2 || (kernel == 0 && G >= 4)) {
        return LaunchDecode<D, G, true>(args, kv.num_kv_heads, plan.num_splits, stream);
      }
      return LaunchDecode<D, G, false>(args, kv.num_kv_heads, plan.num_splits, stream);
    });
  });
}

}  // namespace

Status PagedDecodeAttention(const AttentionParams& params, const AttentionBatch& batch,
                            const PagedKv<bf16_t>& kv, const AttentionIo& io,
                            const DecodePlan& plan, float* workspace, cudaStream_t stream) {
  return Decode(params, batch, kv, io, plan, workspace, 0, stream);
}

Status TEST_PagedDecodeAttention(const AttentionParams& params, const AttentionBatch& batch,
                                 const PagedKv<bf16_t>& kv, const AttentionIo& io,
                                 const DecodePlan& plan, float* workspace, bool tensor_cores,
                                 cudaStream_t stream) {
  return Decode(params, batch, kv, io, plan, workspace, tensor_cores ? 2 : 1, stream);
}

}  // namespace kvkeep::cuda
