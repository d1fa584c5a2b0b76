// GPU KV movement kernels (write, copy-on-write, compaction, swap) against host references.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstring>
#include <numeric>
#include <random>
#include <vector>

#include "kernels/cpu/attention.h"
#include "kernels/cpu/ops.h"
#include "kernels/cuda/kv_ops.h"
#include "kernels/cuda/ops.h"
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

// WriteKv of `tokens` rows of a fused [q][k][v] row (q part of width q_width) into layer 2
// of a random pool; every bit of the pool must match the CPU reference. Token 5 (if any) is
// skipped with slot -1.
void CheckWriteKv(GpuArena& gpu, std::mt19937_64& rng, uint64_t seed, const KvPoolShape& shape,
                  int tokens, int q_width) {
  SCOPED_TRACE(::testing::Message() << "tokens " << tokens << " heads " << shape.num_kv_heads
                                    << " head_dim " << shape.head_dim << " seed " << seed);
  std::vector<bf16> pool = RandomBf16(rng, shape.total_elements());
  const int kvd = shape.num_kv_heads * shape.head_dim;
  const int stride = q_width + 2 * kvd;
  std::vector<bf16> rows = RandomBf16(rng, size_t(tokens) * stride);
  std::vector<int32_t> slots(shape.num_blocks * shape.block_size);
  std::iota(slots.begin(), slots.end(), 0);
  std::shuffle(slots.begin(), slots.end(), rng);
  slots.resize(tokens);
  if (tokens > 5) slots[5] = -1;  // skipped
  // CPU reference on layer 2 with the same bf16 values.
  std::vector<float> k(size_t(tokens) * kvd), v(size_t(tokens) * kvd);
  for (int t = 0; t < tokens; ++t) {
    for (int i = 0; i < kvd; ++i) {
      k[size_t(t) * kvd + i] = Bf16ToFloat(rows[size_t(t) * stride + q_width + i]);
      v[size_t(t) * kvd + i] = Bf16ToFloat(rows[size_t(t) * stride + q_width + kvd + i]);
    }
  }
  std::vector<bf16> ref = pool;
  ASSERT_TRUE(
      cpu::WriteKv(LayerView(ref.data(), shape, 2), k.data(), v.data(), slots.data(), tokens).ok());
  auto* dpool = reinterpret_cast<cuda::bf16_t*>(gpu.Upload(pool));
  auto* drows = reinterpret_cast<cuda::bf16_t*>(gpu.Upload(rows));
  ASSERT_TRUE(cuda::WriteKv(LayerView(dpool, shape, 2), drows + q_width, stride,
                            drows + q_width + kvd, stride, gpu.Upload(slots), tokens, gpu.stream())
                  .ok());
  EXPECT_TRUE(SameBits(gpu.Download(reinterpret_cast<bf16*>(dpool), pool.size()), ref));
}

TEST(CudaKvOps, WriteKvMatchesCpu) {
  GpuArena gpu;
  KVKEEP_REQUIRE_GPU(gpu);
  const uint64_t seed = TestSeed();
  std::mt19937_64 rng(seed);
  const KvPoolShape small = Shape(20);  // 2 heads x 64: 32 chunks, one partial CTA
  CheckWriteKv(gpu, rng, seed, small, 37, small.num_kv_heads * small.head_dim);
  CheckWriteKv(gpu, rng, seed, small, 1, 0);
  // The 8B model's decode shape: 8 kv heads x 128 = 256 chunks, two CTAs per token.
  KvPoolShape big = Shape(6);
  big.num_kv_heads = 8;
  big.head_dim = 128;
  CheckWriteKv(gpu, rng, seed, big, 1, 32 * 128);
  CheckWriteKv(gpu, rng, seed, big, 19, 32 * 128);
  // A chunk count that does not fill a CTA: 3 heads x 80 = 30 chunks each of K and V.
  KvPoolShape odd = Shape(4);
  odd.num_kv_heads = 3;
  odd.head_dim = 80;
  odd.block_size = 8;
  CheckWriteKv(gpu, rng, seed, odd, 9, 2 * 80);
}

// RopeWriteKv against the unfused path (ApplyRope over q + k heads, then WriteKv) bit for
// bit, and against the CPU RoPE and WriteKv references.
void CheckRopeWriteKv(GpuArena& gpu, std::mt19937_64& rng, uint64_t seed, const KvPoolShape& shape,
                      int tokens, int nq, int rotary_dim) {
  SCOPED_TRACE(::testing::Message()
               << "tokens " << tokens << " nq " << nq << " nkv " << shape.num_kv_heads
               << " head_dim " << shape.head_dim << " rotary " << rotary_dim << " seed " << seed);
  const int hd = shape.head_dim, qd = nq * hd, kvd = shape.num_kv_heads * hd;
  const int stride = qd + 2 * kvd + 8;  // padded rows
  cpu::RopeParams p;
  p.head_dim = hd;
  p.rotary_dim = rotary_dim == hd ? 0 : rotary_dim;
  p.theta = 500000.0f;
  p.factor = 8.0f;
  std::vector<float> inv_freq(rotary_dim / 2);
  cpu::RopeInvFreq(p, inv_freq.data());
  std::vector<bf16> pool = RandomBf16(rng, shape.total_elements());
  std::vector<bf16> rows = RandomBf16(rng, size_t(tokens) * stride);
  std::vector<int32_t> pos(tokens), slots(shape.num_blocks * shape.block_size);
  for (int32_t& v : pos) v = std::uniform_int_distribution<int>(0, 100000)(rng);
  std::iota(slots.begin(), slots.end(), 0);
  std::shuffle(slots.begin(), slots.end(), rng);
  slots.resize(tokens);
  if (tokens > 2) slots[2] = -1;  // skipped: still rotated, not cached

  // Unfused GPU path.
  auto* pool_a = reinterpret_cast<cuda::bf16_t*>(gpu.Upload(pool));
  auto* rows_a = reinterpret_cast<cuda::bf16_t*>(gpu.Upload(rows));
  const int32_t* dpos = gpu.Upload(pos);
  const int32_t* dslots = gpu.Upload(slots);
  const float* dinv = gpu.Upload(inv_freq);
  ASSERT_TRUE(cuda::ApplyRope(rows_a, stride, tokens, nq + shape.num_kv_heads, hd, rotary_dim, dpos,
                              dinv, gpu.stream())
                  .ok());
  ASSERT_TRUE(cuda::WriteKv(LayerView(pool_a, shape, 1), rows_a + qd, stride, rows_a + qd + kvd,
                            stride, dslots, tokens, gpu.stream())
                  .ok());
  // Fused.
  auto* pool_b = reinterpret_cast<cuda::bf16_t*>(gpu.Upload(pool));
  auto* rows_b = reinterpret_cast<cuda::bf16_t*>(gpu.Upload(rows));
  ASSERT_TRUE(cuda::RopeWriteKv(LayerView(pool_b, shape, 1), rows_b, stride, tokens, nq, rotary_dim,
                                dpos, dinv, dslots, gpu.stream())
                  .ok());
  const auto got_rows = gpu.Download(reinterpret_cast<bf16*>(rows_b), rows.size());
  const auto got_pool = gpu.Download(reinterpret_cast<bf16*>(pool_b), pool.size());
  EXPECT_TRUE(SameBits(got_rows, gpu.Download(reinterpret_cast<bf16*>(rows_a), rows.size())))
      << "rows differ from ApplyRope";
  EXPECT_TRUE(SameBits(got_pool, gpu.Download(reinterpret_cast<bf16*>(pool_a), pool.size())))
      << "pool differs from ApplyRope + WriteKv";

  // CPU: rotate q and k, write k and v, and compare with a tolerance (bf16 rounding).
  std::vector<float> q(size_t(tokens) * qd), k(size_t(tokens) * kvd), v(size_t(tokens) * kvd);
  for (int t = 0; t < tokens; ++t) {
    for (int i = 0; i < qd; ++i) q[size_t(t) * qd + i] = Bf16ToFloat(rows[size_t(t) * stride + i]);
    for (int i = 0; i < kvd; ++i) {
      k[size_t(t) * kvd + i] = Bf16ToFloat(rows[size_t(t) * stride + qd + i]);
      v[size_t(t) * kvd + i] = Bf16ToFloat(rows[size_t(t) * stride + qd + kvd + i]);
    }
  }
  cpu::ApplyRope(p, inv_freq.data(), pos.data(), tokens, nq, q.data());
  cpu::ApplyRope(p, inv_freq.data(), pos.data(), tokens, shape.num_kv_heads, k.data());
  std::vector<bf16> ref_pool = pool;
  ASSERT_TRUE(
      cpu::WriteKv(LayerView(ref_pool.data(), shape, 1), k.data(), v.data(), slots.data(), tokens)
          .ok());
  EXPECT_LT(RelL2(ToFloat(got_pool), ToFloat(ref_pool)), 5e-3);
  std::vector<float> gq, gk, gv, rv;
  for (int t = 0; t < tokens; ++t) {
    const size_t r = size_t(t) * stride;
    for (int i = 0; i < qd; ++i) gq.push_back(Bf16ToFloat(got_rows[r + i]));
    for (int i = 0; i < kvd; ++i) gk.push_back(Bf16ToFloat(got_rows[r + qd + i]));
    for (int i = qd + kvd; i < stride; ++i) {
      ASSERT_EQ(got_rows[r + i].bits, rows[r + i].bits) << "v or padding touched, token " << t;
    }
  }
  EXPECT_LT(RelL2(gq, q), 5e-3);
  EXPECT_LT(RelL2(gk, k), 5e-3);
  // Pool entries that no token writes keep their bits (the slot -1 token writes nothing).
  std::vector<bool> written(size_t(shape.num_blocks) * shape.block_size, false);
  for (int32_t sl : slots) {
    if (sl >= 0) written[sl] = true;
  }
  for (size_t i = 0; i < pool.size(); ++i) {
    const int64_t in_block = int64_t(i) % shape.block_stride();
    const int64_t layer = in_block / shape.layer_stride();
    const int64_t slot_in_block =
        (in_block % shape.kv_stride()) / shape.head_dim % shape.block_size;
    const int64_t slot = int64_t(i) / shape.block_stride() * shape.block_size + slot_in_block;
    if (layer != 1 || !written[slot]) {
      ASSERT_EQ(got_pool[i].bits, pool[i].bits) << "unwritten pool element " << i << " changed";
    }
  }
}

TEST(CudaKvOps, RopeWriteKvMatchesUnfusedAndCpu) {
  GpuArena gpu;
  KVKEEP_REQUIRE_GPU(gpu);
  const uint64_t seed = TestSeed();
  std::mt19937_64 rng(seed);
  // The 8B model's decode and a prefill shape: 32 q heads, 8 kv heads x 128.
  KvPoolShape big = Shape(6);
  big.num_kv_heads = 8;
  big.head_dim = 128;
  CheckRopeWriteKv(gpu, rng, seed, big, 1, 32, 128);
  CheckRopeWriteKv(gpu, rng, seed, big, 23, 32, 128);
  // Partial rotary (the k tail past rotary_dim is carried unrotated) and a small GQA shape.
  const KvPoolShape small = Shape(8);  // 2 kv heads x 64
  CheckRopeWriteKv(gpu, rng, seed, small, 9, 4, 32);
  CheckRopeWriteKv(gpu, rng, seed, small, 5, 2, 64);
}

TEST(CudaKvOps, RopeWriteKvRejectsBadRotaryDim) {
  GpuArena gpu;
  KVKEEP_REQUIRE_GPU(gpu);
  const KvPoolShape shape = Shape(1);
  auto* pool = gpu.Alloc<cuda::bf16_t>(shape.total_elements());
  auto* rows = gpu.Alloc<cuda::bf16_t>(4 * 64);
  const int32_t* ids = gpu.Alloc<int32_t>(1);
  const float* inv = gpu.Alloc<float>(64);
  for (int rotary : {0, 3, 66}) {
    EXPECT_TRUE(cuda::RopeWriteKv(LayerView(pool, shape, 0), rows, 4 * 64, 1, 1, rotary, ids, inv,
                                  ids, gpu.stream())
                    .IsInvalidArgument())
        << rotary;
  }
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
                               gpu.device()->swap_out_stream())
                  .ok());
  ASSERT_EQ(cudaStreamSynchronize(gpu.device()->swap_out_stream()), cudaSuccess);
  for (const auto& [d, h] : out) {
    EXPECT_EQ(std::memcmp(static_cast<char*>(*host) + h * block_bytes,
                          reinterpret_cast<char*>(pool.data()) + d * block_bytes, block_bytes),
              0);
  }
  // In: host 0,1,2,7 -> device 12,13,14,15.
  std::vector<std::pair<int32_t, int32_t>> in = {{0, 12}, {1, 13}, {2, 14}, {7, 15}};
  ASSERT_TRUE(cuda::SwapBlocks(dpool, *host, block_bytes, in, cuda::SwapDirection::kHostToDevice,
                               gpu.device()->swap_out_stream())
                  .ok());
  ASSERT_EQ(cudaStreamSynchronize(gpu.device()->swap_out_stream()), cudaSuccess);
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
