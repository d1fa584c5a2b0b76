// GPU KV movement kernels (write, copy-on-write, compaction, swap) against host references.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstring>
#include <numeric>
#include <random>
#include <vector>

#include "kernels/cpu/attention.h"
#include "kernels/cuda/kv_ops.h"
#include "tests/cuda/cuda_test_util.h"
#include "tests/testlib/test_util.h"

namespace kvkeep::testing {
namespace {

KvPoolShape Shape(int blocks) {
  KvPoolShape s;
  s.num_blocks = blocks;
  s.num_layers = 3;
  s.num_kv_heads = 2;
  s.block_size = 16;
  s.head_dim = 64;
  return s;
}

bool SameBits(const std::vector<bf16>& a, const std::vector<bf16>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * 2) == 0;
}

TEST(CudaKvOps, WriteKvMatchesCpu) {
  GpuArena gpu;
  KVKEEP_REQUIRE_GPU(gpu);
  const uint64_t seed = TestSeed();
  std::mt19937_64 rng(seed);
  const KvPoolShape shape = Shape(20);
  std::vector<bf16> pool = RandomBf16(rng, shape.total_elements());
  const int tokens = 37, kvd = shape.num_kv_heads * shape.head_dim;
  const int stride = 3 * kvd;  // k and v inside a fused row
  std::vector<bf16> rows = RandomBf16(rng, size_t(tokens) * stride);
  std::vector<int32_t> slots(shape.num_blocks * shape.block_size);
  std::iota(slots.begin(), slots.end(), 0);
  std::shuffle(slots.begin(), slots.end(), rng);
  slots.resize(tokens);
  slots[5] = -1;  // skipped
  // CPU reference on layer 2 with the same bf16 values.
  std::vector<float> k(size_t(tokens) * kvd), v(size_t(tokens) * kvd);
  for (int t = 0; t < tokens; ++t) {
    for (int i = 0; i < kvd; ++i) {
      k[t * kvd + i] = Bf16ToFloat(rows[t * stride + kvd + i]);
      v[t * kvd + i] = Bf16ToFloat(rows[t * stride + 2 * kvd + i]);
    }
  }
  std::vector<bf16> ref = pool;
  ASSERT_TRUE(
      cpu::WriteKv(LayerView(ref.data(), shape, 2), k.data(), v.data(), slots.data(), tokens).ok());
  auto* dpool = reinterpret_cast<cuda::bf16_t*>(gpu.Upload(pool));
  auto* drows = reinterpret_cast<cuda::bf16_t*>(gpu.Upload(rows));
  ASSERT_TRUE(cuda::WriteKv(LayerView(dpool, shape, 2), drows + kvd, stride, drows + 2 * kvd,
                            stride, gpu.Upload(slots), tokens, gpu.stream())
                  .ok());
  EXPECT_TRUE(SameBits(gpu.Download(reinterpret_cast<bf16*>(dpool), pool.size()), ref))
      << "seed " << seed;
}

TEST(CudaKvOps, CopyBlocksAndGatherSlots) {
  GpuArena gpu;
  KVKEEP_REQUIRE_GPU(gpu);
  const uint64_t seed = TestSeed();
  std::mt19937_64 rng(seed);
  const KvPoolShape shape = Shape(24);
  std::vector<bf16> pool = RandomBf16(rng, shape.total_elements());
  const int64_t bs = shape.block_stride();
  // Copy-on-write: blocks 0..5 -> 12..17 in a shuffled order.
  std::vector<int32_t> pairs;
  std::vector<int32_t> dst(6);
  std::iota(dst.begin(), dst.end(), 12);
  std::shuffle(dst.begin(), dst.end(), rng);
  std::vector<bf16> ref = pool;
  for (int i = 0; i < 6; ++i) {
    pairs.push_back(i);
    pairs.push_back(dst[i]);
    std::copy(pool.begin() + i * bs, pool.begin() + (i + 1) * bs, ref.begin() + dst[i] * bs);
  }
  auto* dpool = reinterpret_cast<cuda::bf16_t*>(gpu.Upload(pool));
  ASSERT_TRUE(cuda::CopyBlocks(dpool, shape, gpu.Upload(pairs), 6, gpu.stream()).ok());
  EXPECT_TRUE(SameBits(gpu.Download(reinterpret_cast<bf16*>(dpool), pool.size()), ref));

  // Compaction: 40 random slots of blocks 0..9 -> the first 40 slots of blocks 20..22.
  std::vector<int32_t> src(10 * 16);
  std::iota(src.begin(), src.end(), 0);
  std::shuffle(src.begin(), src.end(), rng);
  src.resize(40);
  std::vector<int32_t> dslots(40);
  std::iota(dslots.begin(), dslots.end(), 20 * 16);
  for (int i = 0; i < 40; ++i) {
    for (int l = 0; l < shape.num_layers; ++l) {
      for (int kv = 0; kv < 2; ++kv) {
        for (int h = 0; h < shape.num_kv_heads; ++h) {
          auto at = [&](int slot) {
            return (slot / 16) * bs + l * shape.layer_stride() + kv * shape.kv_stride() +
                   (h * 16 + slot % 16) * shape.head_dim;
          };
          std::copy_n(ref.begin() + at(src[i]), shape.head_dim, ref.begin() + at(dslots[i]));
        }
      }
    }
  }
  ASSERT_TRUE(
      cuda::GatherSlots(dpool, shape, gpu.Upload(src), gpu.Upload(dslots), 40, gpu.stream()).ok());
  EXPECT_TRUE(SameBits(gpu.Download(reinterpret_cast<bf16*>(dpool), pool.size()), ref))
      << "seed " << seed;
}

TEST(CudaKvOps, SwapRoundTripThroughPinnedHost) {
  GpuArena gpu;
  KVKEEP_REQUIRE_GPU(gpu);
  const uint64_t seed = TestSeed();
  std::mt19937_64 rng(seed);
  const KvPoolShape shape = Shape(16);
  const size_t block_bytes = shape.block_stride() * 2;
  std::vector<bf16> pool = RandomBf16(rng, shape.total_elements());
  auto* dpool = gpu.Upload(pool);
  auto host = gpu.device()->AllocatePinned(block_bytes * 8);
  ASSERT_TRUE(host.ok());
  std::memset(*host, 0xff, block_bytes * 8);
  // Out: device blocks 3,4,5 (a run) and 9 -> host 0,1,2 and 7.
  std::vector<std::pair<int32_t, int32_t>> out = {{3, 0}, {4, 1}, {5, 2}, {9, 7}};
  ASSERT_TRUE(cuda::SwapBlocks(dpool, *host, block_bytes, out, cuda::SwapDirection::kDeviceToHost,
                               gpu.device()->swap_stream())
                  .ok());
  ASSERT_EQ(cudaStreamSynchronize(gpu.device()->swap_stream()), cudaSuccess);
  for (const auto& [d, h] : out) {
    EXPECT_EQ(std::memcmp(static_cast<char*>(*host) + h * block_bytes,
                          reinterpret_cast<char*>(pool.data()) + d * block_bytes, block_bytes),
              0);
  }
  // In: host 0,1,2,7 -> device 12,13,14,15.
  std::vector<std::pair<int32_t, int32_t>> in = {{0, 12}, {1, 13}, {2, 14}, {7, 15}};
  ASSERT_TRUE(cuda::SwapBlocks(dpool, *host, block_bytes, in, cuda::SwapDirection::kHostToDevice,
                               gpu.device()->swap_stream())
                  .ok());
  ASSERT_EQ(cudaStreamSynchronize(gpu.device()->swap_stream()), cudaSuccess);
  std::vector<bf16> back = gpu.Download(dpool, pool.size());
  for (int i = 0; i < 4; ++i) {
    EXPECT_EQ(
        std::memcmp(reinterpret_cast<char*>(back.data()) + in[i].second * block_bytes,
                    reinterpret_cast<char*>(pool.data()) + out[i].first * block_bytes, block_bytes),
        0);
  }
  gpu.device()->FreePinned(*host);
}

}  // namespace
}  // namespace kvkeep::testing
