// CudaBackend's block copies, raw block I/O, pinned host tier and swaps
// (engine/cuda/cuda_backend_impl.h).
#include "engine/cuda/cuda_backend_impl.h"

#include <algorithm>
#include <string>
#include <vector>

#include "kernels/cuda/cuda_status.h"

namespace kvkeep::cuda_backend_detail {

Status CudaBackend::OrderAfterSwaps(const ForwardBatch& batch) {
  if (swaps_.num_pending() == 0) return Status::OK();
  return swaps_.OrderCompute(BlocksTouched(batch, shape_.block_size));
}

Status CudaBackend::CopyBlocks(const std::vector<std::pair<int32_t, int32_t>>& src_dst) {
  std::vector<int32_t> flat;
  for (const auto& [src, dst] : src_dst) {
    RETURN_IF_ERROR(CheckBlockId(shape_, src));
    RETURN_IF_ERROR(CheckBlockId(shape_, dst));
    if (src == dst) continue;
    flat.push_back(src);
    flat.push_back(dst);
  }
  if (flat.empty()) return Status::OK();
  RETURN_IF_ERROR(pairs_.Reserve(flat.size() * sizeof(int32_t)));
  RETURN_IF_ERROR(
      device_->CopyHostToDevice(pairs_.as<int32_t>(), flat.data(), flat.size() * sizeof(int32_t)));
  RETURN_IF_ERROR(swaps_.OrderCompute(flat));  // a swapped-in source, a swapped-out target
  RETURN_IF_ERROR(cuda::CopyBlocks(pool_, shape_, pairs_.as<int32_t>(),
                                   static_cast<int32_t>(flat.size() / 2),
                                   device_->compute_stream()));
  // The compute stream only: a device-wide synchronise would wait for unrelated swaps.
  KVKEEP_CUDA_RETURN(cudaStreamSynchronize(device_->compute_stream()));
  return Status::OK();
}

Status CudaBackend::ReadBlock(int32_t block_id, void* dst) {
  RETURN_IF_ERROR(CheckBlockId(shape_, block_id));
  RETURN_IF_ERROR(swaps_.OrderCompute(std::span<const int32_t>(&block_id, 1)));
  return device_->CopyDeviceToHost(dst, pool_ + block_id * shape_.block_stride(), block_bytes());
}

Status CudaBackend::WriteBlock(int32_t block_id, const void* src) {
  RETURN_IF_ERROR(CheckBlockId(shape_, block_id));
  RETURN_IF_ERROR(swaps_.OrderCompute(std::span<const int32_t>(&block_id, 1)));
  return device_->CopyHostToDevice(pool_ + block_id * shape_.block_stride(), src, block_bytes());
}

Status CudaBackend::AllocateHostTier(int32_t num_blocks) {
  if (num_blocks < 0 || host_arena_ != nullptr) {
    return Status::InvalidArgument("host tier: allocated twice or negative size");
  }
  if (num_blocks == 0) return Status::OK();
  ASSIGN_OR_RETURN(void* pinned, device_->AllocatePinned(size_t(num_blocks) * block_bytes()));
  host_arena_ = static_cast<uint8_t*>(pinned);
  num_host_blocks_ = num_blocks;
  return Status::OK();
}

Result<TransferFence> CudaBackend::Swap(std::span<const std::pair<int32_t, int32_t>> pairs,
                                        cuda::SwapDirection dir) {
  if (pairs.empty()) return TransferFence{};
  const bool out = dir == cuda::SwapDirection::kDeviceToHost;
  for (const auto& [src, dst] : pairs) {
    RETURN_IF_ERROR(CheckBlockId(shape_, out ? src : dst));
    const int32_t host = out ? dst : src;
    if (host < 0 || host >= num_host_blocks_) {
      return Status::InvalidArgument("host slot " + std::to_string(host) + " outside the tier");
    }
  }
  ASSIGN_OR_RETURN(const uint64_t fence,
                   swaps_.Enqueue(pool_, host_arena_, block_bytes(), pairs, dir));
  return TransferFence{fence};
}

Result<TransferFence> CudaBackend::SwapOut(
    std::span<const std::pair<int32_t, int32_t>> device_host) {
  return Swap(device_host, cuda::SwapDirection::kDeviceToHost);
}

Result<TransferFence> CudaBackend::SwapIn(
    std::span<const std::pair<int32_t, int32_t>> host_device) {
  return Swap(host_device, cuda::SwapDirection::kHostToDevice);
}

Status CudaBackend::WaitFence(TransferFence fence) { return swaps_.Wait(fence.id); }

}  // namespace kvkeep::cuda_backend_detail
