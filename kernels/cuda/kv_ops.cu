// KV movement kernels; see kv_ops.h. Every thread moves 16-byte chunks.
#include "kernels/cuda/cuda_status.h"
#include "kernels/cuda/kv_ops.h"

namespace kvkeep::cuda {
namespace {

// One 16-byte chunk of K or V per thread (K chunks first, then V). The source chunk and the
// slot are loaded before either is used, so their latencies overlap: at decode this kernel
// is one dependent round trip, not two.
__global__ void WriteKvKernel(PagedKv<bf16_t> kv, const bf16_t* k, int64_t k_stride,
                              const bf16_t* v, int64_t v_stride, const int32_t* slots) {
  const int token = blockIdx.x;
  const int chunks_per_head = kv.head_dim / 8;
  const int chunks = kv.num_kv_heads * chunks_per_head;
  const int c = blockIdx.y * blockDim.x + threadIdx.x;
  if (c >= 2 * chunks) return;
  const bool is_v = c >= chunks;
  const int cv = is_v ? c - chunks : c;
  const int h = cv / chunks_per_head, cc = cv % chunks_per_head;
  const bf16_t* src = is_v ? v + int64_t{token} * v_stride : k + int64_t{token} * k_stride;
  const uint4 val = *reinterpret_cast<const uint4*>(src + int64_t{h} * kv.head_dim + cc * 8);
  const int slot = slots[token];
  if (slot < 0) return;
  const int64_t blk = slot / kv.block_size, off = slot % kv.block_size;
  const int64_t dst =
      blk * kv.block_stride + (int64_t{h} * kv.block_size + off) * kv.head_dim + cc * 8;
  *reinterpret_cast<uint4*>((is_v ? kv.v : kv.k) + dst) = val;
}

// RoPE over the q and k heads of a fused [q][k][v] row plus WriteKv of the rotated k and v.
// Per token, head_dim / 2 threads per head (q, k, then v heads): thread j < half of a q/k
// head rotates the pair (j, j + half) in place; the other threads of a k head and all v
// threads carry two unrotated elements. k and v go to the slot unless it is negative. The
// arithmetic matches RopeKernel (ops.cu) bit for bit.
__global__ void RopeWriteKvKernel(PagedKv<bf16_t> kv, bf16_t* qkv, int64_t stride, int num_q_heads,
                                  int half, const int32_t* positions, const float* inv_freq,
                                  const int32_t* slots) {
  const int token = blockIdx.x;
  const int head_dim = kv.head_dim, threads_per_head = head_dim / 2;
  const int e = blockIdx.y * blockDim.x + threadIdx.x;
  const int h = e / threads_per_head, j = e % threads_per_head;
  const int nkv = kv.num_kv_heads;
  if (h >= num_q_heads + 2 * nkv) return;
  bf16_t* head = qkv + int64_t{token} * stride + int64_t{h} * head_dim;
  const bool rotated = h < num_q_heads + nkv;
  const int slot = slots[token];
  const bool write = h >= num_q_heads && slot >= 0;  // a k or v head with a slot
  bf16_t* dst = nullptr;
  if (write) {
    const bool is_v = h >= num_q_heads + nkv;
    const int kvh = h - num_q_heads - (is_v ? nkv : 0);
    const int64_t blk = slot / kv.block_size, off = slot % kv.block_size;
    dst = (is_v ? kv.v : kv.k) + blk * kv.block_stride +
          (int64_t{kvh} * kv.block_size + off) * head_dim;
  }
  if (rotated && j < half) {
    const float a = __bfloat162float(head[j]), b = __bfloat162float(head[j + half]);
    const float angle = static_cast<float>(positions[token]) * inv_freq[j];
    float s, c;
    sincosf(angle, &s, &c);
    const bf16_t ra = __float2bfloat16(__fsub_rn(__fmul_rn(a, c), __fmul_rn(b, s)));
    const bf16_t rb = __float2bfloat16(__fadd_rn(__fmul_rn(b, c), __fmul_rn(a, s)));
    head[j] = ra;
    head[j + half] = rb;
    if (write) {
      dst[j] = ra;
      dst[j + half] = rb;
    }
  } else if (write) {
    // Two unrotated elements: of a v head, or of a k head's tail past rotary_dim (2j >=
    // rotary_dim there).
    const int i = 2 * j;
    dst[i] = head[i];
    dst[i + 1] = head[i + 1];
  }
}

__global__ void CopyBlocksKernel(uint4* pool, int64_t block_chunks, const int32_t* src_dst) {
  const int pair = blockIdx.y;
  const uint4* src = pool + src_dst[2 * pair] * block_chunks;
  uint4* dst = pool + src_dst[2 * pair + 1] * block_chunks;
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < block_chunks;
       i += int64_t{gridDim.x} * blockDim.x) {
    dst[i] = src[i];
  }
}

// Strides in elements, computed on the host (KvPoolShape's methods are host-only).
struct PoolStrides {
  int64_t block, layer, kv;
  int32_t num_kv_heads, block_size, head_dim;
};

__global__ void GatherSlotsKernel(bf16_t* pool, PoolStrides st, const int32_t* src_slots,
                                  const int32_t* dst_slots) {
  const int i = blockIdx.x;
  const int layer_kv = blockIdx.y;  // layer * 2 + (0: K, 1: V)
  const int src = src_slots[i], dst = dst_slots[i];
  const int chunks_per_head = st.head_dim / 8;
  const int chunks = st.num_kv_heads * chunks_per_head;
  const int64_t base = int64_t{layer_kv / 2} * st.layer + int64_t{layer_kv % 2} * st.kv;
  const int64_t src_base = int64_t{src / st.block_size} * st.block + base;
  const int64_t dst_base = int64_t{dst / st.block_size} * st.block + base;
  const int src_off = src % st.block_size, dst_off = dst % st.block_size;
  for (int c = threadIdx.x; c < chunks; c += blockDim.x) {
    const int h = c / chunks_per_head, cc = c % chunks_per_head;
    const int64_t hs = int64_t{h} * st.block_size;
    *reinterpret_cast<uint4*>(pool + dst_base + (hs + dst_off) * st.head_dim + cc * 8) =
        *reinterpret_cast<const uint4*>(pool + src_base + (hs + src_off) * st.head_dim + cc * 8);
  }
}

// One 16-byte chunk of one row per thread: row r (row_elems bf16) moves from
// src + src_offsets[r] (or src + r * row_elems when src_offsets is null) to dst likewise.
__global__ void CopyRowsKernel(const bf16_t* src, const int64_t* src_offsets, bf16_t* dst,
                               const int64_t* dst_offsets, int64_t num_chunks,
                               int32_t chunks_per_row) {
  const int64_t c = int64_t{blockIdx.x} * blockDim.x + threadIdx.x;
  if (c >= num_chunks) return;
  const int64_t r = c / chunks_per_row, cc = c % chunks_per_row;
  const int64_t row_elems = int64_t{chunks_per_row} * 8;
  const int64_t s = src_offsets != nullptr ? src_offsets[r] : r * row_elems;
  const int64_t d = dst_offsets != nullptr ? dst_offsets[r] : r * row_elems;
  *reinterpret_cast<uint4*>(dst + d + cc * 8) = *reinterpret_cast<const uint4*>(src + s + cc * 8);
}

}  // namespace

Status CopyRows(const bf16_t* src, const int64_t* src_offsets, bf16_t* dst,
                const int64_t* dst_offsets, int32_t num_rows, int32_t row_elems,
                cudaStream_t stream) {
  if (num_rows == 0) return Status::OK();
  if (row_elems % 8 != 0) return Status::NotSupported("CopyRows: row_elems % 8 != 0");
  constexpr int kThreads = 256;
  const int64_t chunks = int64_t{num_rows} * (row_elems / 8);
  const int64_t blocks = (chunks + kThreads - 1) / kThreads;
  if (blocks > 0x7fffffff) return Status::InvalidArgument("CopyRows: too many rows");
  CopyRowsKernel<<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>(
      src, src_offsets, dst, dst_offsets, chunks, row_elems / 8);
  KVKEEP_CUDA_LAUNCH_CHECK();
  return Status::OK();
}

Status WriteKv(const PagedKv<bf16_t>& kv, const bf16_t* k, int64_t k_token_stride, const bf16_t* v,
               int64_t v_token_stride, const int32_t* slot_mapping, int32_t num_tokens,
               cudaStream_t stream) {
  if (num_tokens == 0) return Status::OK();
  if (kv.head_dim % 8 != 0) return Status::NotSupported("WriteKv: head_dim % 8 != 0");
  constexpr int kThreads = 128;
  const int work = 2 * kv.num_kv_heads * (kv.head_dim / 8);
  if (work == 0) return Status::OK();
  const dim3 grid(num_tokens, (work + kThreads - 1) / kThreads);
  WriteKvKernel<<<grid, kThreads, 0, stream>>>(kv, k, k_token_stride, v, v_token_stride,
                                               slot_mapping);
  KVKEEP_CUDA_LAUNCH_CHECK();
  return Status::OK();
}

Status RopeWriteKv(const PagedKv<bf16_t>& kv, bf16_t* qkv, int64_t qkv_token_stride,
                   int32_t num_tokens, int32_t num_q_heads, int32_t rotary_dim,
                   const int32_t* positions, const float* inv_freq, const int32_t* slot_mapping,
                   cudaStream_t stream) {
  if (num_tokens == 0) return Status::OK();
  if (kv.head_dim % 2 != 0) return Status::NotSupported("RopeWriteKv: odd head_dim");
  if (rotary_dim <= 0 || rotary_dim > kv.head_dim || rotary_dim % 2 != 0) {
    return Status::InvalidArgument("RopeWriteKv: bad rotary_dim");
  }
  constexpr int kThreads = 128;
  const int64_t work = int64_t{num_q_heads + 2 * kv.num_kv_heads} * (kv.head_dim / 2);
  if (work == 0) return Status::OK();
  const int64_t blocks_y = (work + kThreads - 1) / kThreads;
  if (blocks_y > 65535) return Status::InvalidArgument("RopeWriteKv: row too wide");
  const dim3 grid(num_tokens, static_cast<unsigned>(blocks_y));
  RopeWriteKvKernel<<<grid, kThreads, 0, stream>>>(
      kv, qkv, qkv_token_stride, num_q_heads, rotary_dim / 2, positions, inv_freq, slot_mapping);
  KVKEEP_CUDA_LAUNCH_CHECK();
  return Status::OK();
}

Status CopyBlocks(bf16_t* pool, const KvPoolShape& shape, const int32_t* src_dst, int32_t num_pairs,
                  cudaStream_t stream) {
  if (num_pairs == 0) return Status::OK();
  const int64_t block_chunks = shape.block_stride() / 8;
  const int x = static_cast<int>(std::min<int64_t>(64, (block_chunks + 255) / 256));
  CopyBlocksKernel<<<dim3(x, num_pairs), 256, 0, stream>>>(reinterpret_cast<uint4*>(pool),
                                                           block_chunks, src_dst);
  KVKEEP_CUDA_LAUNCH_CHECK();
  return Status::OK();
}

Status GatherSlots(bf16_t* pool, const KvPoolShape& shape, const int32_t* src_slots,
                   const int32_t* dst_slots, int32_t num_slots, cudaStream_t stream) {
  if (num_slots == 0) return Status::OK();
  if (shape.head_dim % 8 != 0) return Status::NotSupported("GatherSlots: head_dim % 8 != 0");
  const PoolStrides st{shape.block_stride(), shape.layer_stride(), shape.kv_stride(),
                       shape.num_kv_heads,   shape.block_size,     shape.head_dim};
  GatherSlotsKernel<<<dim3(num_slots, shape.num_layers * 2), 128, 0, stream>>>(pool, st, src_slots,
                                                                               dst_slots);
  KVKEEP_CUDA_LAUNCH_CHECK();
  return Status::OK();
}

Status SwapBlocks(void* device_pool, void* host_pool, size_t block_bytes,
                  const std::vector<std::pair<int32_t, int32_t>>& src_dst, SwapDirection dir,
                  cudaStream_t stream) {
  char* src_base =
      static_cast<char*>(dir == SwapDirection::kDeviceToHost ? device_pool : host_pool);
  char* dst_base =
      static_cast<char*>(dir == SwapDirection::kDeviceToHost ? host_pool : device_pool);
  const cudaMemcpyKind kind =
      dir == SwapDirection::kDeviceToHost ? cudaMemcpyDeviceToHost : cudaMemcpyHostToDevice;
  size_t i = 0;
  while (i < src_dst.size()) {
    size_t run = 1;
    while (i + run < src_dst.size() &&
           src_dst[i + run].first == src_dst[i].first + static_cast<int32_t>(run) &&
           src_dst[i + run].second == src_dst[i].second + static_cast<int32_t>(run)) {
      ++run;
    }
    KVKEEP_CUDA_RETURN(cudaMemcpyAsync(dst_base + src_dst[i].second * block_bytes,
                                       src_base + src_dst[i].first * block_bytes, run * block_bytes,
                                       kind, stream));
    i += run;
  }
  return Status::OK();
}

}  // namespace kvkeep::cuda
