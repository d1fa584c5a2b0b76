// CudaSwapQueue's ordering across its two streams (engine/cuda/cuda_swaps.h). Swap-outs and
// swap-ins run on a stream each, so a batch that shares a device block or a host slot with
// a pending batch of the other direction must wait for it. Each test queues a backlog of
// 2 MiB blocks in one direction with the shared block last, then at once one block the
// other way over it: without the wait the second copy runs ahead of the backlog and the
// bytes show it.
#include <gtest/gtest.h>

#include <cstdint>
#include <cstring>
#include <memory>
#include <utility>
#include <vector>

#include "engine/cuda/cuda_swaps.h"
#include "tests/cuda/cuda_test_util.h"

namespace kvkeep::testing {
namespace {

constexpr size_t kBlockBytes = size_t{2} << 20;
constexpr int32_t kBacklog = 256;  // about 10 ms of copies at 50 GB/s
constexpr int32_t kBlocks = kBacklog + 8;
using Pairs = std::vector<std::pair<int32_t, int32_t>>;
using cuda::SwapDirection;

// Device block i holds the byte 1 + i % 127, host slot j the byte 128 + j % 127, so every
// block says where its bytes came from.
uint8_t DeviceByte(int32_t block) { return static_cast<uint8_t>(1 + block % 127); }
uint8_t HostByte(int32_t slot) { return static_cast<uint8_t>(128 + slot % 127); }

class CudaSwapQueueTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!gpu_.ok()) GTEST_SKIP() << "no CUDA device on this machine";
    device_ = gpu_.Alloc<uint8_t>(kBlockBytes * kBlocks);
    auto host = gpu_.device()->AllocatePinned(kBlockBytes * kBlocks);
    ASSERT_TRUE(host.ok()) << host.status().ToString();
    host_ = static_cast<uint8_t*>(*host);
    for (int32_t i = 0; i < kBlocks; ++i) {
      ASSERT_EQ(cudaMemset(device_ + kBlockBytes * i, DeviceByte(i), kBlockBytes), cudaSuccess);
      std::memset(host_ + kBlockBytes * i, HostByte(i), kBlockBytes);
    }
    ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
    queue_ = std::make_unique<CudaSwapQueue>(gpu_.stream(), gpu_.device()->swap_out_stream(),
                                             gpu_.device()->swap_in_stream());
  }
  void TearDown() override {
    queue_.reset();  // waits for its batches
    if (host_ != nullptr) gpu_.device()->FreePinned(host_);
  }

  uint64_t Swap(const Pairs& pairs, SwapDirection dir) {
    auto fence = queue_->Enqueue(device_, host_, kBlockBytes, pairs, dir);
    EXPECT_TRUE(fence.ok()) << fence.status().ToString();
    return fence.ok() ? *fence : 0;
  }
  // A backlog of kBacklog blocks: device block i <-> host slot i, i < kBacklog.
  void Backlog(SwapDirection dir) {
    Pairs pairs;
    for (int32_t i = 0; i < kBacklog; ++i) pairs.emplace_back(i, i);
    Swap(pairs, dir);
  }
  void Drain() { ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess); }
  // Whether every byte of device block `block` (or host slot) is `byte`.
  bool DeviceBlockIs(int32_t block, uint8_t byte) {
    std::vector<uint8_t> bytes(kBlockBytes);
    EXPECT_EQ(cudaMemcpy(bytes.data(), device_ + kBlockBytes * block, kBlockBytes,
                         cudaMemcpyDeviceToHost),
              cudaSuccess);
    for (uint8_t b : bytes) {
      if (b != byte) return false;
    }
    return true;
  }
  bool HostSlotIs(int32_t slot, uint8_t byte) {
    const uint8_t* p = host_ + kBlockBytes * slot;
    for (size_t i = 0; i < kBlockBytes; ++i) {
      if (p[i] != byte) return false;
    }
    return true;
  }

  GpuArena gpu_;
  uint8_t* device_ = nullptr;
  uint8_t* host_ = nullptr;
  std::unique_ptr<CudaSwapQueue> queue_;
};

constexpr int32_t kShared = kBacklog - 1;  // the backlog's last block and slot
constexpr int32_t kSpare = kBacklog + 3;   // outside the backlog

TEST_F(CudaSwapQueueTest, SwapInWaitsForTheSwapOutThatStillReadsItsDeviceBlock) {
  Backlog(SwapDirection::kDeviceToHost);
  Swap({{kSpare, kShared}}, SwapDirection::kHostToDevice);  // host kSpare -> device kShared
  Drain();
  EXPECT_TRUE(HostSlotIs(kShared, DeviceByte(kShared))) << "the swap-out saw the swap-in's bytes";
  EXPECT_TRUE(DeviceBlockIs(kShared, HostByte(kSpare)));
}

TEST_F(CudaSwapQueueTest, SwapOutWaitsForTheSwapInThatStillWritesItsDeviceBlock) {
  Backlog(SwapDirection::kHostToDevice);
  Swap({{kShared, kSpare}}, SwapDirection::kDeviceToHost);  // device kShared -> host kSpare
  Drain();
  EXPECT_TRUE(HostSlotIs(kSpare, HostByte(kShared))) << "the swap-out ran before the swap-in";
}

TEST_F(CudaSwapQueueTest, SwapInWaitsForTheSwapOutThatStillFillsItsHostSlot) {
  Backlog(SwapDirection::kDeviceToHost);
  Swap({{kShared, kSpare}}, SwapDirection::kHostToDevice);  // host kShared -> device kSpare
  Drain();
  EXPECT_TRUE(DeviceBlockIs(kSpare, DeviceByte(kShared))) << "the swap-in read the old host slot";
}

TEST_F(CudaSwapQueueTest, SwapOutWaitsForTheSwapInThatStillReadsItsHostSlot) {
  Backlog(SwapDirection::kHostToDevice);
  Swap({{kSpare, kShared}}, SwapDirection::kDeviceToHost);  // device kSpare -> host kShared
  Drain();
  EXPECT_TRUE(DeviceBlockIs(kShared, HostByte(kShared))) << "the swap-in read the new host slot";
  EXPECT_TRUE(HostSlotIs(kShared, DeviceByte(kSpare)));
}

// Disjoint batches of the two directions do not wait for each other: the swap-in finishes
// while the swap-out backlog queued before it is still copying.
TEST_F(CudaSwapQueueTest, DisjointBatchesOfTheTwoDirectionsRunTogether) {
  Backlog(SwapDirection::kDeviceToHost);
  const uint64_t in = Swap({{kSpare, kSpare}}, SwapDirection::kHostToDevice);
  ASSERT_TRUE(queue_->Wait(in).ok());
  EXPECT_EQ(cudaStreamQuery(gpu_.device()->swap_out_stream()), cudaErrorNotReady)
      << "the swap-in waited for the unrelated backlog";
  Drain();
  EXPECT_TRUE(DeviceBlockIs(kSpare, HostByte(kSpare)));
  EXPECT_TRUE(HostSlotIs(kShared, DeviceByte(kShared)));
}

}  // namespace
}  // namespace kvkeep::testing
