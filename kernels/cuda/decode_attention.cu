// Paged decode attention (flash-decoding) on CUDA cores. See attention.h for the contract.
//
// CTA = (split, KV head, sequence), 128 threads. A key row of head_dim bf16 is read by
// kTpr = head_dim / 8 threads with 16-byte loads, so a CTA reads kRows rows at once and
// kUnroll such row sets per iteration (all loads issued before any use). Every thread
// keeps the queries of the G query heads that share the KV head, so each K/V byte is read
// once for the whole group. Each row group keeps its own online-softmax state; the states
// are merged through shared memory at the end, and across splits by the reduce kernel.
#include <algorithm>
#include <cmath>

#include "kernels/cuda/attention.h"
#include "kernels/cuda/attention_dispatch.cuh"
#include "kernels/cuda/cuda_status.h"
#include "kernels/cuda/device_utils.cuh"

namespace kvkeep::cuda {
namespace {

constexpr int kDecodeThreads = 128;
constexpr int kUnroll = 4;

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
__global__ void __launch_bounds__(kDecodeThreads) DecodeKernel(const DecodeArgs args) {
  constexpr int kTpr = D / 8;
  constexpr int kRows = kDecodeThreads / kTpr;
  constexpr int kTile = kRows * kUnroll;
  __shared__ float sm_m[kRows][G];
  __shared__ float sm_d[kRows][G];
  __shared__ float sm_o[kRows][G][D];

  const int split = blockIdx.x, kvh = blockIdx.y, seq = blockIdx.z;
  const int num_splits = gridDim.x;
  const int tid = threadIdx.x;
  const int lane_in_row = tid % kTpr;
  const int row = tid / kTpr;

  const int kv_len = args.batch.kv_len[seq];
  int chunk = (kv_len + num_splits - 1) / num_splits;
  chunk = (chunk + kTile - 1) / kTile * kTile;
  const int begin = split * chunk;
  const int end = min(kv_len, begin + chunk);
  const int q_token = args.batch.q_start[seq];
  const int bs = args.kv.block_size;

  float q[G][8];
#pragma unroll
  for (int g = 0; g < G; ++g) {
    const bf16_t* qp =
        args.io.q + int64_t{q_token} * args.io.q_token_stride + (kvh * G + g) * D + lane_in_row * 8;
    Bf16x8ToFloat(*reinterpret_cast<const uint4*>(qp), q[g]);
#pragma unroll
    for (int i = 0; i < 8; ++i) q[g][i] *= args.scale_log2;
  }
  float o[G][8];
  float m[G], d[G];
#pragma unroll
  for (int g = 0; g < G; ++g) {
    m[g] = -INFINITY;
    d[g] = 0.0f;
#pragma unroll
    for (int i = 0; i < 8; ++i) o[g][i] = 0.0f;
  }

  const int32_t* table = args.batch.block_tables + int64_t{seq} * args.batch.max_blocks_per_seq;
  const bf16_t* kbase = args.kv.k + int64_t{kvh} * bs * D + lane_in_row * 8;
  const bf16_t* vbase = args.kv.v + int64_t{kvh} * bs * D + lane_in_row * 8;

  for (int t0 = begin; t0 < end; t0 += kTile) {
    uint4 kr[kUnroll], vr[kUnroll];
    bool valid[kUnroll];
#pragma unroll
    for (int j = 0; j < kUnroll; ++j) {
      const int t = t0 + j * kRows + row;
      valid[j] = t < end;
      if (valid[j]) {
        const int64_t blk = table[t / bs];
        const int64_t off = blk * args.kv.block_stride + int64_t{t % bs} * D;
        kr[j] = __ldg(reinterpret_cast<const uint4*>(kbase + off));
        vr[j] = __ldg(reinterpret_cast<const uint4*>(vbase + off));
      } else {
        kr[j] = make_uint4(0, 0, 0, 0);
        vr[j] = make_uint4(0, 0, 0, 0);
      }
    }
    float s[kUnroll][G];
#pragma unroll
    for (int j = 0; j < kUnroll; ++j) {
      float kf[8];
      Bf16x8ToFloat(kr[j], kf);
#pragma unroll
      for (int g = 0; g < G; ++g) {
        float acc = 0.0f;
#pragma unroll
        for (int i = 0; i < 8; ++i) acc = fmaf(q[g][i], kf[i], acc);
        s[j][g] = acc;
      }
    }
#pragma unroll
    for (int j = 0; j < kUnroll; ++j) {
#pragma unroll
      for (int g = 0; g < G; ++g) {
#pragma unroll
        for (int off = kTpr / 2; off > 0; off >>= 1) {
          s[j][g] += __shfl_xor_sync(0xffffffffu, s[j][g], off);
        }
        if (!valid[j]) s[j][g] = -INFINITY;
      }
    }
#pragma unroll
    for (int g = 0; g < G; ++g) {
      float mx = s[0][g];
#pragma unroll
      for (int j = 1; j < kUnroll; ++j) mx = fmaxf(mx, s[j][g]);
      const float m_new = fmaxf(m[g], mx);
      if (m_new == -INFINITY) continue;  // nothing valid seen yet
      const float alpha = exp2f(m[g] - m_new);
      m[g] = m_new;
      d[g] *= alpha;
#pragma unroll
      for (int i = 0; i < 8; ++i) o[g][i] *= alpha;
    }
#pragma unroll
    for (int j = 0; j < kUnroll; ++j) {
      float vf[8];
      Bf16x8ToFloat(vr[j], vf);
#pragma unroll
      for (int g = 0; g < G; ++g) {
        const float p = valid[j] ? exp2f(s[j][g] - m[g]) : 0.0f;
        d[g] += p;
#pragma unroll
        for (int i = 0; i < 8; ++i) o[g][i] = fmaf(p, vf[i], o[g][i]);
      }
    }
  }

  // Merge the kRows row-group states of this CTA.
#pragma unroll
  for (int g = 0; g < G; ++g) {
    if (lane_in_row == 0) {
      sm_m[row][g] = m[g];
      sm_d[row][g] = d[g];
    }
#pragma unroll
    for (int i = 0; i < 8; ++i) sm_o[row][g][lane_in_row * 8 + i] = o[g][i];
  }
  __syncthreads();
  for (int e = tid; e < G * D; e += kDecodeThreads) {
    const int g = e / D, dim = e % D;
    float mx = -INFINITY;
#pragma unroll
    for (int r = 0; r < kRows; ++r) mx = fmaxf(mx, sm_m[r][g]);
    float sum = 0.0f, acc = 0.0f;
    if (mx != -INFINITY) {
#pragma unroll
      for (int r = 0; r < kRows; ++r) {
        const float w = exp2f(sm_m[r][g] - mx);  // 0 for an empty row group
        sum += w * sm_d[r][g];
        acc += w * sm_o[r][g][dim];
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

template <int D>
__global__ void DecodeReduceKernel(const DecodeArgs args, int num_splits) {
  const int head = blockIdx.x, seq = blockIdx.y, dim = threadIdx.x;
  const int64_t base = (int64_t{seq} * args.num_q_heads + head) * num_splits;
  float mx = -INFINITY;
  for (int s = 0; s < num_splits; ++s) mx = fmaxf(mx, args.ws_lse[base + s]);
  float sum = 0.0f, acc = 0.0f;
  if (mx != -INFINITY) {
    for (int s = 0; s < num_splits; ++s) {
      const float w = exp2f(args.ws_lse[base + s] - mx);
      sum += w;
      acc += w * args.ws_o[(base + s) * D + dim];
    }
  }
  const int q_token = args.batch.q_start[seq];
  args.io.out[(int64_t{q_token} * args.num_q_heads + head) * D + dim] =
      __float2bfloat16(sum > 0.0f ? acc / sum : 0.0f);
}

constexpr int kMaxSplits = 128;
constexpr int kMinSplitTokens = 256;

}  // namespace

DecodePlan PlanDecode(int32_t num_seqs, int32_t num_kv_heads, int32_t max_kv_len, int32_t num_sms) {
  DecodePlan plan;
  const int64_t ctas = int64_t{std::max(num_seqs, 1)} * std::max(num_kv_heads, 1);
  const int64_t sms = std::max(num_sms, 1);
  // Measured on an H100 (132 SMs, 32 q / 8 KV heads, d=128): with >= 2 CTAs per SM from
  // (sequence, KV head) pairs alone, splitting only adds work (B=64 L=4096: 2509 GB/s
  // unsplit vs 2462 with 3 splits); below that, ~8 waves of short splits win (B=1
  // L=32768: 1460 GB/s with 128 splits vs 1305 with 66; B=16 L=8192: 2082 with 9 vs 1803
  // with 4).
  if (ctas >= 2 * sms) return plan;
  int64_t splits = (8 * sms + ctas - 1) / ctas;
  splits = std::min<int64_t>(splits, std::max<int64_t>(1, max_kv_len / kMinSplitTokens));
  plan.num_splits = static_cast<int32_t>(std::clamp<int64_t>(splits, 1, kMaxSplits));
  return plan;
}

size_t DecodeWorkspaceBytes(int32_t num_seqs, int32_t num_q_heads, int32_t head_dim,
                            const DecodePlan& plan) {
  if (plan.num_splits <= 1) return 0;
  const size_t rows = size_t(num_seqs) * num_q_heads * plan.num_splits;
  return rows * (head_dim + 1) * sizeof(float);
}

Status PagedDecodeAttention(const AttentionParams& params, const AttentionBatch& batch,
                            const PagedKv<bf16_t>& kv, const AttentionIo& io,
                            const DecodePlan& plan, float* workspace, cudaStream_t stream) {
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
      const dim3 grid(plan.num_splits, kv.num_kv_heads, batch.num_seqs);
      DecodeKernel<D, G><<<grid, kDecodeThreads, 0, stream>>>(args);
      KVKEEP_CUDA_LAUNCH_CHECK();
      if (plan.num_splits > 1) {
        DecodeReduceKernel<D>
            <<<dim3(params.num_q_heads, batch.num_seqs), D, 0, stream>>>(args, plan.num_splits);
        KVKEEP_CUDA_LAUNCH_CHECK();
      }
      return Status::OK();
    });
  });
}

}  // namespace kvkeep::cuda
