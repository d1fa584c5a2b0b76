// A block's trip through every KV tier, driven by hand through the real Backend and
// DiskBlockStore, and the checks that it came back unchanged. Shared by the CPU tier tests
// (tests/engine/tiers_test.cc) and the CUDA ones (tests/cuda/cuda_tiers_test.cc), so that
// both backends are held to the same round trip.
#pragma once

#include <gtest/gtest.h>

#include <cstring>
#include <utility>
#include <vector>

#include "cache/disk_tier.h"
#include "engine/backend.h"
#include "tests/engine/engine_fixture.h"

namespace kvkeep::enginetest {

// Device -> host slots 0..n-1 (one batch; its fence waited on before the host reads them,
// as the engine does) -> disk -> host slots n..2n-1 -> device blocks first_free.. (one
// batch). The first host copies are poisoned after the disk write, so only the disk's
// bytes can come back. Returns the device blocks the KV now lives in.
inline std::vector<int32_t> RoundTripThroughHostAndDisk(Backend* backend, DiskBlockStore* store,
                                                        const std::vector<int32_t>& blocks,
                                                        int32_t first_free, int32_t block_size) {
  const int32_t n = static_cast<int32_t>(blocks.size());
  std::vector<std::pair<int32_t, int32_t>> out, in;
  for (int32_t i = 0; i < n; ++i) out.emplace_back(blocks[i], i);
  auto fence = backend->SwapOut(out);
  EXPECT_TRUE(fence.ok()) << fence.status().ToString();
  if (fence.ok()) {
    EXPECT_TRUE(backend->WaitFence(*fence).ok());
  }
  std::vector<int32_t> moved;
  for (int32_t i = 0; i < n; ++i) {
    DiskBlockHeader h;
    h.hash = BlockHash{1000 + static_cast<uint64_t>(i)};
    h.tokens.assign(block_size, i);
    EXPECT_TRUE(store->Write(h, backend->host_block(i)).ok());
    std::memset(backend->host_block(i), 0xee, backend->block_bytes());
    EXPECT_TRUE(store->Read(h.hash, backend->host_block(n + i)).ok());
    in.emplace_back(n + i, first_free + i);
    moved.push_back(first_free + i);
  }
  EXPECT_TRUE(backend->SwapIn(in).ok());
  return moved;
}

// Expects each moved block bit-identical to its original, layer by layer, and the logits of
// `tail` appended to `tokens` (whose KV fills `blocks`) to be exactly the same over the
// moved blocks as over the originals. orig_spare / moved_spare: a free block each for the
// tail's KV.
inline void ExpectSameKvAndNextLogits(Backend* backend, const std::vector<int32_t>& tokens,
                                      const std::vector<int32_t>& blocks,
                                      const std::vector<int32_t>& moved,
                                      const std::vector<int32_t>& tail, int32_t orig_spare,
                                      int32_t moved_spare, int32_t block_size) {
  const int32_t num_layers = backend->kv_shape().num_layers;
  const size_t layer_bytes = backend->block_bytes() / num_layers;
  std::vector<uint8_t> a(backend->block_bytes()), b(backend->block_bytes());
  for (size_t i = 0; i < blocks.size(); ++i) {
    ASSERT_TRUE(backend->ReadBlock(blocks[i], a.data()).ok());
    ASSERT_TRUE(backend->ReadBlock(moved[i], b.data()).ok());
    for (int32_t l = 0; l < num_layers; ++l) {
      EXPECT_EQ(std::memcmp(a.data() + l * layer_bytes, b.data() + l * layer_bytes, layer_bytes), 0)
          << "block " << i << " layer " << l;
    }
  }
  std::vector<int32_t> more = tokens;
  more.insert(more.end(), tail.begin(), tail.end());
  std::vector<int32_t> orig_blocks = blocks, moved_blocks = moved;
  orig_blocks.push_back(orig_spare);
  moved_blocks.push_back(moved_spare);
  const int32_t start = static_cast<int32_t>(tokens.size());
  const int32_t end = static_cast<int32_t>(more.size());
  const std::vector<float> want =
      RunBatch(backend, MakeBatch({{&more, &orig_blocks, start, end}}, block_size, true));
  const std::vector<float> got =
      RunBatch(backend, MakeBatch({{&more, &moved_blocks, start, end}}, block_size, true));
  ASSERT_FALSE(want.empty());
  EXPECT_EQ(want, got);  // exactly: the same bytes through the same kernels
}

}  // namespace kvkeep::enginetest
