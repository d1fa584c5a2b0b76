// GPU paged attention (decode and prefill) against the CPU reference (kernels/cpu), on fresh
// seeded random inputs with scrambled block tables and poisoned outputs.
#include <gtest/gtest.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <random>
#include <vector>

#include "kernels/cpu/attention.h"
#include "kernels/cuda/attention.h"
#include "kernels/cuda/prefill_attention.cuh"
#include "tests/cuda/cuda_test_util.h"
#include "tests/testlib/test_util.h"

namespace kvkeep::testing {
namespace {

struct Case {
  int head_dim = 128;
  int num_kv_heads = 2;
  int group = 4;
  int num_seqs = 3;
  int max_len = 300;
  bool decode = true;
  int max_new = 1;
  bool whole_prompt = false;  // prefill: the chunk is the whole context (no cached prefix)
  int block_size = 16;
  int decode_kernel = 0;  // 0: the dispatch's pick; 1: CUDA cores; 2: tensor cores
};

struct Scenario {
  KvPoolShape shape;
  std::vector<bf16> pool;
  std::vector<int32_t> q_start, kv_len, tables;
  int max_blocks = 0;
  int num_tokens = 0;
  int max_q = 0, max_kv = 0;
  std::vector<bf16> q;  // [tokens][hq][d]
};

Scenario MakeScenario(std::mt19937_64& rng, const Case& c) {
  Scenario s;
  s.shape.num_layers = 2;
  s.shape.num_kv_heads = c.num_kv_heads;
  s.shape.block_size = c.block_size;
  const int bs = c.block_size;
  s.shape.head_dim = c.head_dim;
  std::uniform_int_distribution<int> len_dist(1, c.max_len);
  s.q_start.push_back(0);
  int total_blocks = 0;
  for (int i = 0; i < c.num_seqs; ++i) {
    const int len = len_dist(rng);
    int n_new = 1;
    if (!c.decode) {
      n_new = c.whole_prompt ? len
                             : std::uniform_int_distribution<int>(1, std::min(len, c.max_new))(rng);
    }
    s.kv_len.push_back(len);
    s.q_start.push_back(s.q_start.back() + n_new);
    s.max_q = std::max(s.max_q, n_new);
    s.max_kv = std::max(s.max_kv, len);
    const int blocks = (len + bs - 1) / bs;
    s.max_blocks = std::max(s.max_blocks, blocks);
    total_blocks += blocks;
  }
  s.num_tokens = s.q_start.back();
  s.shape.num_blocks = total_blocks + 7;
  std::vector<int32_t> ids(s.shape.num_blocks);
  std::iota(ids.begin(), ids.end(), 0);
  std::shuffle(ids.begin(), ids.end(), rng);  // scrambled block tables
  s.tables.assign(size_t(c.num_seqs) * s.max_blocks, -1);
  int next = 0;
  for (int i = 0; i < c.num_seqs; ++i) {
    for (int j = 0; j < (s.kv_len[i] + bs - 1) / bs; ++j) {
      s.tables[i * s.max_blocks + j] = ids[next++];
    }
  }
  s.pool = RandomBf16(rng, s.shape.total_elements());
  s.q = RandomBf16(rng, size_t(s.num_tokens) * c.num_kv_heads * c.group * c.head_dim);
  return s;
}

// Runs the CPU reference and one GPU kernel on layer 1 of the scenario; returns rel. L2.
// forced_splits > 0 overrides the decode plan; rows_per_warp (16/32) forces the mma.sync
// prefill kernel's tile, with block_n (32/64) keys per K/V tile; rows_per_warp kWgmma forces
// the wgmma kernel with block_n (64/128) keys per tile.
constexpr int kWgmma = -1;

double RunCase(GpuArena& gpu, const Case& c, std::mt19937_64& rng, int forced_splits,
               int rows_per_warp = 0, int block_n = 64) {
  Scenario s = MakeScenario(rng, c);
  const int hq = c.num_kv_heads * c.group;
  AttentionParams params;
  params.num_q_heads = hq;
  params.scale = 1.0f / std::sqrt(float(c.head_dim));
  AttentionBatch hb;
  hb.num_seqs = c.num_seqs;
  hb.q_start = s.q_start.data();
  hb.kv_len = s.kv_len.data();
  hb.block_tables = s.tables.data();
  hb.max_blocks_per_seq = s.max_blocks;
  const std::vector<float> qf = ToFloat(s.q);
  std::vector<float> ref(qf.size());
  const int layer = 1;
  EXPECT_TRUE(cpu::PagedAttention(params, hb, LayerView(s.pool.data(), s.shape, layer), qf.data(),
                                  ref.data())
                  .ok());

  AttentionBatch db = hb;
  db.q_start = gpu.Upload(s.q_start);
  db.kv_len = gpu.Upload(s.kv_len);
  db.block_tables = gpu.Upload(s.tables);
  auto* pool = reinterpret_cast<cuda::bf16_t*>(gpu.Upload(s.pool));
  cuda::AttentionIo io;
  io.q = reinterpret_cast<const cuda::bf16_t*>(gpu.Upload(s.q));
  io.q_token_stride = int64_t{hq} * c.head_dim;
  io.out = gpu.Alloc<cuda::bf16_t>(qf.size());
  gpu.Poison(io.out, qf.size());
  const PagedKv<cuda::bf16_t> kv = LayerView(pool, s.shape, layer);
  Status st;
  if (c.decode) {
    cuda::DecodePlan plan = cuda::PlanDecode(c.num_seqs, c.num_kv_heads, s.max_kv, 132);
    if (forced_splits > 0) plan.num_splits = forced_splits;
    const size_t ws = cuda::DecodeWorkspaceBytes(c.num_seqs, hq, c.head_dim, plan);
    float* workspace = ws ? gpu.Alloc<float>(ws / sizeof(float)) : nullptr;
    if (workspace) gpu.Poison(workspace, ws / sizeof(float));
    st = c.decode_kernel == 0
             ? cuda::PagedDecodeAttention(params, db, kv, io, plan, workspace, gpu.stream())
             : cuda::TEST_PagedDecodeAttention(params, db, kv, io, plan, workspace,
                                               c.decode_kernel == 2, gpu.stream());
  } else {
    if (rows_per_warp == 0) {
      st = cuda::PagedPrefillAttention(params, db, kv, io, s.max_q, gpu.stream());
    } else if (rows_per_warp == kWgmma) {
      st = cuda::TEST_PagedPrefillAttentionSm90(params, db, kv, io, s.max_q, block_n, gpu.stream());
    } else {
      st = cuda::TEST_PagedPrefillAttentionTiles(params, db, kv, io, s.max_q, rows_per_warp,
                                                 block_n, gpu.stream());
    }
  }
  EXPECT_TRUE(st.ok()) << st.ToString();
  EXPECT_TRUE(gpu.device()->Synchronize().ok());
  std::vector<bf16> out_bits(qf.size());
  EXPECT_TRUE(gpu.device()->CopyDeviceToHost(out_bits.data(), io.out, out_bits.size() * 2).ok());
  return RelL2(ToFloat(out_bits), ref);
}

constexpr double kTol = 8e-3;  // bf16 output rounding is ~2e-3 relative

TEST(CudaAttention, DecodeMatchesCpu) {
  GpuArena gpu;
  KVKEEP_REQUIRE_GPU(gpu);
  const uint64_t seed = TestSeed();
  std::mt19937_64 rng(seed);
  for (int d : {32, 64, 128}) {
    for (int g : {1, 3, 4, 8}) {
      // 5 and 37 split most lengths unevenly; 37 and 128 (the maximum) leave splits empty
      // for short sequences and give the reduce kernel several splits per thread.
      for (int splits : {0, 1, 5, 37, 128}) {
        // The dispatch's pick, then each kernel forced (tensor cores by default for G >= 4).
        for (int kernel : {0, 1, 2}) {
          Case c;
          c.head_dim = d;
          c.group = g;
          c.decode_kernel = kernel;
          c.num_kv_heads = std::uniform_int_distribution<int>(1, 3)(rng);
          c.num_seqs = std::uniform_int_distribution<int>(1, 17)(rng);
          c.max_len = std::uniform_int_distribution<int>(1, 1500)(rng);
          const double err = RunCase(gpu, c, rng, splits);
          EXPECT_LT(err, kTol) << "seed " << seed << " d " << d << " group " << g << " splits "
                               << splits << " kernel " << kernel << " seqs " << c.num_seqs
                               << " max_len " << c.max_len;
        }
      }
    }
  }
}

TEST(CudaAttention, DecodeLongContextSplitK) {
  GpuArena gpu;
  KVKEEP_REQUIRE_GPU(gpu);
  const uint64_t seed = TestSeed();
  std::mt19937_64 rng(seed);
  Case c;
  c.head_dim = 128;
  c.group = 4;
  c.num_kv_heads = 2;
  c.num_seqs = 2;
  c.max_len = 20000;
  EXPECT_GT(cuda::PlanDecode(1, 8, 32768, 132).num_splits, 8);
  EXPECT_LT(RunCase(gpu, c, rng, 0), kTol) << "seed " << seed;
}

// The split path at its edges: most splits empty (short sequences, many splits), split
// counts that do not divide the length, the maximum count, every head_dim of the reduce
// kernel (32 / 64 / 128 threads over up to 128 splits).
TEST(CudaAttention, DecodeSplitEdgeCases) {
  GpuArena gpu;
  KVKEEP_REQUIRE_GPU(gpu);
  const uint64_t seed = TestSeed();
  std::mt19937_64 rng(seed);
  struct Edge {
    int d, g, seqs, max_len, splits;
  };
  for (const Edge& e : {Edge{128, 4, 3, 40, 128}, Edge{32, 8, 4, 20, 128}, Edge{64, 2, 2, 17, 33},
                        Edge{128, 4, 2, 5000, 33}, Edge{128, 8, 1, 3001, 127},
                        Edge{32, 1, 5, 2500, 100}, Edge{64, 3, 3, 1, 9}}) {
    Case c;
    c.head_dim = e.d;
    c.group = e.g;
    c.num_kv_heads = 2;
    c.num_seqs = e.seqs;
    c.max_len = e.max_len;
    const double err = RunCase(gpu, c, rng, e.splits);
    EXPECT_LT(err, kTol) << "seed " << seed << " d " << e.d << " group " << e.g << " splits "
                         << e.splits << " seqs " << e.seqs << " max_len " << e.max_len;
  }
}

TEST(CudaAttention, PrefillMatchesCpu) {
  GpuArena gpu;
  KVKEEP_REQUIRE_GPU(gpu);
  const uint64_t seed = TestSeed();
  std::mt19937_64 rng(seed);
  for (int d : {32, 64, 128}) {
    for (int g : {1, 3, 4, 8}) {
      for (int variant = 0; variant < 7; ++variant) {
        // Default dispatch; the mma.sync kernel with rows/warp 16 and 32 and 64 and 32 keys
        // per K/V tile; the wgmma kernel with 64 and 128 keys per tile (on sm_90 only).
        int rows = variant == 0 ? 0 : (variant <= 2 ? 16 : 32);
        int block_n = variant == 0 ? 64 : (variant % 2 == 1 ? 64 : 32);
        if (variant >= 5) {
          if (!cuda::PrefillSm90Available(d)) continue;
          rows = kWgmma;
          block_n = variant == 5 ? 64 : 128;
        }
        Case c;
        c.head_dim = d;
        c.group = g;
        c.decode = false;
        c.num_kv_heads = std::uniform_int_distribution<int>(1, 2)(rng);
        c.num_seqs = std::uniform_int_distribution<int>(1, 6)(rng);
        c.max_len = std::uniform_int_distribution<int>(1, 700)(rng);
        c.max_new = std::uniform_int_distribution<int>(1, 300)(rng);
        const double err = RunCase(gpu, c, rng, 0, rows, block_n);
        EXPECT_LT(err, kTol) << "seed " << seed << " d " << d << " group " << g << " rows/warp "
                             << rows << " block_n " << block_n << " seqs " << c.num_seqs
                             << " max_len " << c.max_len << " max_new " << c.max_new;
      }
    }
  }
}

TEST(CudaAttention, PrefillWholePromptNoPrefix) {
  GpuArena gpu;
  KVKEEP_REQUIRE_GPU(gpu);
  const uint64_t seed = TestSeed();
  std::mt19937_64 rng(seed);
  Case c;
  c.head_dim = 128;
  c.group = 4;
  c.num_kv_heads = 2;
  c.num_seqs = 1;
  c.decode = false;
  c.max_len = 1000;
  c.whole_prompt = true;
  EXPECT_LT(RunCase(gpu, c, rng, 0), kTol) << "seed " << seed;
}

// Block sizes other than 16: 8 (a 16-token decode tile spans two blocks) and 32 (a tile is
// half a block).
TEST(CudaAttention, OtherBlockSizesMatchCpu) {
  GpuArena gpu;
  KVKEEP_REQUIRE_GPU(gpu);
  const uint64_t seed = TestSeed();
  std::mt19937_64 rng(seed);
  for (int bs : {8, 32}) {
    for (bool decode : {true, false}) {
      for (int splits : {0, 3}) {
        Case c;
        c.block_size = bs;
        c.decode = decode;
        c.group = 4;
        c.num_kv_heads = 2;
        c.num_seqs = std::uniform_int_distribution<int>(1, 9)(rng);
        c.max_len = std::uniform_int_distribution<int>(1, 900)(rng);
        c.max_new = 200;
        const double err = RunCase(gpu, c, rng, decode ? splits : 0);
        EXPECT_LT(err, kTol) << "seed " << seed << " block_size " << bs << " decode " << decode
                             << " splits " << splits << " seqs " << c.num_seqs << " max_len "
                             << c.max_len;
      }
    }
  }
}

// On an sm_90 GPU the default prefill path must be the wgmma kernel: a build without
// sm_90a code (or a failed capability check) would silently fall back to mma.sync.
TEST(CudaAttention, WgmmaPrefillAvailableOnHopper) {
  GpuArena gpu;
  KVKEEP_REQUIRE_GPU(gpu);
  int dev = 0, major = 0;
  ASSERT_EQ(cudaGetDevice(&dev), cudaSuccess);
  ASSERT_EQ(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev), cudaSuccess);
  if (major != 9) GTEST_SKIP() << "not an sm_90 GPU (compute capability " << major << ".x)";
  EXPECT_TRUE(cuda::PrefillSm90Available(128));
  EXPECT_TRUE(cuda::PrefillSm90Available(64));
  EXPECT_FALSE(cuda::PrefillSm90Available(32));
}

TEST(CudaAttention, UnsupportedShapesAreNotSupported) {
  GpuArena gpu;
  KVKEEP_REQUIRE_GPU(gpu);
  AttentionParams params;
  params.num_q_heads = 10;
  PagedKv<cuda::bf16_t> kv;
  kv.num_kv_heads = 2;
  kv.head_dim = 96;
  AttentionBatch b;
  b.num_seqs = 1;
  cuda::AttentionIo io;
  EXPECT_EQ(cuda::PagedPrefillAttention(params, b, kv, io, 1, gpu.stream()).code(),
            StatusCode::kNotSupported);
  kv.head_dim = 128;  // group 5
  EXPECT_EQ(cuda::PagedDecodeAttention(params, b, kv, io, cuda::DecodePlan{}, nullptr, gpu.stream())
                .code(),
            StatusCode::kNotSupported);
}

}  // namespace
}  // namespace kvkeep::testing
