// KV movement kernels; see kv_ops.h. Every thread moves 16-byte chunks.
#include "kernels/cuda/cuda_status.h"
#include "kernels/cuda/kv_ops.h"

namespace kvkeep::cuda {
namespace {

__global__ void WriteKvKernel(PagedKv<bf16_t> kv, const bf16_t* k, int64_t k_stride,
                              const bf16_t* v, int64_t v_stride, const int32_t* slots) {
  const int token = blockIdx.x;
  const int slot = slots[token];
  if (slot < 0) return;
  const int chunks_per_head = kv.head_dim / 8;
  const int chunks = kv.num_kv_heads * chunks_per_head;
  const int64_t blk = slot / kv.block_size, off = slot % kv.block_size;
  for (int c = threadIdx.x; c < chunks; c += blockDim.x) {
    const int h = c / chunks_per_head, cc = c % chunks_per_head;
    const int64_t dst =
        blk * kv.block_stride + (int64_t{h} * kv.block_size + off) * kv.head_dim + cc * 8;
    const int64_t src = int64_t{h} * kv.head_dim + cc * 8;
    *reinterpret_cast<uint4*>(kv.k + dst) =
        *reinterpret_cast<const uint4*>(k + token * k_stride + src);
    *reinterpret_cast<uint4*>(kv.v + dst) =
        *reinterpret_cast<const uint4*>(v + token * v_stride + src);
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

}  // namespace

Status WriteKv(const PagedKv<bf16_t>& kv, const bf16_t* k, int64_t k_token_stride, const bf16_t* v,
               int64_t v_token_stride, const int32_t* slot_mapping, int32_t num_tokens,
               cudaStream_t stream) {
  if (num_tokens == 0) return Status::OK();
  if (kv.head_dim % 8 != 0) return Status::NotSupported("WriteKv: head_dim % 8 != 0");
  WriteKvKernel<<<num_tokens, 128, 0, stream>>>(kv, k, k_token_stride, v, v_token_stride,
                                                slot_mapping);
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
