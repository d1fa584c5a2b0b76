// GPU model kernels (add+RMSNorm, RoPE with llama3 scaling, SiLU*mul, embedding, GEMM,
// argmax, top-k/top-p sampling) against the CPU references on seeded random inputs.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <random>
#include <tuple>
#include <vector>

#include "engine/sampler.h"
#include "kernels/cpu/ops.h"
#include "kernels/cuda/gemm.h"
#include "kernels/cuda/ops.h"
#include "tests/cuda/cuda_test_util.h"
#include "tests/testlib/test_util.h"

namespace kvkeep::testing {
namespace {

using cuda::bf16_t;

template <typename T>
const bf16_t* Dev(GpuArena& gpu, const std::vector<T>& v) {
  return reinterpret_cast<const bf16_t*>(gpu.Upload(v));
}

std::vector<float> DownloadBf16(GpuArena& gpu, const bf16_t* p, size_t n) {
  return ToFloat(gpu.Download(reinterpret_cast<const bf16*>(p), n));
}

// One AddRmsNorm call on rows x dim against the CPU reference. `offset` shifts delta and out
// by that many elements (offset 4 misaligns them and forces the generic path).
void CheckAddRmsNorm(GpuArena& gpu, std::mt19937_64& rng, uint64_t seed, int rows, int dim,
                     bool with_delta, int offset) {
  SCOPED_TRACE(::testing::Message() << "rows " << rows << " dim " << dim << " delta " << with_delta
                                    << " offset " << offset << " seed " << seed);
  const size_t n = size_t(rows) * dim;
  std::vector<float> hidden(n);
  std::normal_distribution<float> nd(0.0f, 2.0f);
  for (float& x : hidden) x = nd(rng);
  std::vector<bf16> delta = RandomBf16(rng, n + offset), weight = RandomBf16(rng, dim);
  std::vector<float> sum(n), ref(n);
  for (size_t i = 0; i < n; ++i) {
    sum[i] = hidden[i] + (with_delta ? Bf16ToFloat(delta[i + offset]) : 0.0f);
  }
  const std::vector<float> wf = ToFloat(weight);
  cpu::RmsNorm(sum.data(), wf.data(), rows, dim, 1e-5f, ref.data());
  float* dh = gpu.Upload(hidden);
  bf16_t* out = gpu.Alloc<bf16_t>(n + offset);
  gpu.Poison(out, n + offset);
  const bf16_t* dd = with_delta ? Dev(gpu, delta) + offset : nullptr;
  ASSERT_TRUE(
      cuda::AddRmsNorm(dh, dd, Dev(gpu, weight), rows, dim, 1e-5f, out + offset, gpu.stream())
          .ok());
  EXPECT_LT(RelL2(DownloadBf16(gpu, out + offset, n), ref), 5e-3);
  EXPECT_LT(MaxAbsDiff(gpu.Download(dh, n), sum), 1e-5);
  if (offset > 0) {  // the elements before out + offset are not written
    EXPECT_TRUE(std::isnan(DownloadBf16(gpu, out, offset)[0]));
  }
}

TEST(CudaOps, AddRmsNormMatchesCpu) {
  GpuArena gpu;
  KVKEEP_REQUIRE_GPU(gpu);
  const uint64_t seed = TestSeed();
  std::mt19937_64 rng(seed);
  // Vectorised path: one chunk per thread (8, 768, 4096, 8192) and two (16384, 12296).
  // Generic path: dim % 8 != 0, misaligned pointers (offset 4 below) and dim > 16384.
  for (auto [rows, dim] :
       {std::pair{13, 768}, std::pair{1, 4096}, std::pair{3, 4096}, std::pair{64, 4096},
        std::pair{2, 8192}, std::pair{1, 16384}, std::pair{2, 24576}, std::pair{1, 65536},
        std::pair{5, 100}, std::pair{3, 4100}, std::pair{1, 65544}, std::pair{1, 8},
        std::pair{4, 12296}}) {
    CheckAddRmsNorm(gpu, rng, seed, rows, dim, /*with_delta=*/true, /*offset=*/0);
  }
  CheckAddRmsNorm(gpu, rng, seed, 1, 4096, /*with_delta=*/false, 0);
  CheckAddRmsNorm(gpu, rng, seed, 3, 768, /*with_delta=*/false, 0);
  CheckAddRmsNorm(gpu, rng, seed, 3, 4096, /*with_delta=*/true, /*offset=*/4);
  CheckAddRmsNorm(gpu, rng, seed, 2, 100, /*with_delta=*/false, /*offset=*/4);
}

TEST(CudaOps, AddRmsNormRejectsBadShapes) {
  GpuArena gpu;
  KVKEEP_REQUIRE_GPU(gpu);
  float* h = gpu.Alloc<float>(16);
  bf16_t* out = gpu.Alloc<bf16_t>(16);
  const bf16_t* w = out;
  EXPECT_TRUE(cuda::AddRmsNorm(h, nullptr, w, 0, 16, 1e-5f, out, gpu.stream()).ok());
  EXPECT_TRUE(cuda::AddRmsNorm(h, nullptr, w, 1, 0, 1e-5f, out, gpu.stream()).IsInvalidArgument());
}

TEST(CudaOps, RopeLlama3MatchesCpu) {
  GpuArena gpu;
  KVKEEP_REQUIRE_GPU(gpu);
  const uint64_t seed = TestSeed();
  std::mt19937_64 rng(seed);
  for (bool llama3 : {false, true}) {
    cpu::RopeParams p;
    p.head_dim = 128;
    p.theta = llama3 ? 500000.0f : 10000.0f;
    if (llama3) p.factor = 8.0f;
    std::vector<float> inv_freq(64);
    cpu::RopeInvFreq(p, inv_freq.data());
    const int tokens = 9, heads = 6, stride = heads * 128 + 40;  // padded rows
    std::vector<bf16> x = RandomBf16(rng, tokens * stride);
    std::vector<int32_t> pos(tokens);
    for (int32_t& v : pos) v = std::uniform_int_distribution<int>(0, 20000)(rng);
    std::vector<float> ref(tokens * heads * 128);
    for (int t = 0; t < tokens; ++t) {
      for (int i = 0; i < heads * 128; ++i)
        ref[t * heads * 128 + i] = Bf16ToFloat(x[t * stride + i]);
    }
    cpu::ApplyRope(p, inv_freq.data(), pos.data(), tokens, heads, ref.data());
    auto* dx = reinterpret_cast<bf16_t*>(gpu.Upload(x));
    ASSERT_TRUE(cuda::ApplyRope(dx, stride, tokens, heads, 128, 128, gpu.Upload(pos),
                                gpu.Upload(inv_freq), gpu.stream())
                    .ok());
    std::vector<float> got = DownloadBf16(gpu, dx, tokens * stride), packed;
    for (int t = 0; t < tokens; ++t) {
      packed.insert(packed.end(), got.begin() + t * stride, got.begin() + t * stride + heads * 128);
      for (int i = heads * 128; i < stride; ++i) {
        EXPECT_EQ(got[t * stride + i], Bf16ToFloat(x[t * stride + i])) << "padding touched";
      }
    }
    EXPECT_LT(RelL2(packed, ref), 5e-3) << "seed " << seed << " llama3 " << llama3;
  }
}

// The backend's call: one ApplyRope over the q and k heads of a fused [q][k][v] row, at
// decode (1 token) and prefill shapes, full and partial rotary dims. The reference rotates q
// and k separately; v and the row padding must be untouched.
TEST(CudaOps, RopeOverFusedQkvMatchesCpu) {
  GpuArena gpu;
  KVKEEP_REQUIRE_GPU(gpu);
  const uint64_t seed = TestSeed();
  std::mt19937_64 rng(seed);
  struct Case {
    int tokens, nq, nkv, head_dim, rotary_dim;
  };
  for (const Case& cs : {Case{1, 32, 8, 128, 128}, Case{17, 32, 8, 128, 128}, Case{3, 4, 2, 64, 32},
                         Case{1, 5, 1, 96, 96}}) {
    SCOPED_TRACE(::testing::Message() << "tokens " << cs.tokens << " nq " << cs.nq << " rotary "
                                      << cs.rotary_dim << " seed " << seed);
    cpu::RopeParams p;
    p.head_dim = cs.head_dim;
    p.rotary_dim = cs.rotary_dim == cs.head_dim ? 0 : cs.rotary_dim;
    p.theta = 500000.0f;
    p.factor = 8.0f;
    std::vector<float> inv_freq(cs.rotary_dim / 2);
    cpu::RopeInvFreq(p, inv_freq.data());
    const int qd = cs.nq * cs.head_dim, kvd = cs.nkv * cs.head_dim;
    const int stride = qd + 2 * kvd + 8;  // padded rows
    std::vector<bf16> x = RandomBf16(rng, size_t(cs.tokens) * stride);
    std::vector<int32_t> pos(cs.tokens);
    for (int32_t& v : pos) v = std::uniform_int_distribution<int>(0, 100000)(rng);
    std::vector<float> q(size_t(cs.tokens) * qd), k(size_t(cs.tokens) * kvd);
    for (int t = 0; t < cs.tokens; ++t) {
      for (int i = 0; i < qd; ++i) q[t * qd + i] = Bf16ToFloat(x[t * stride + i]);
      for (int i = 0; i < kvd; ++i) k[t * kvd + i] = Bf16ToFloat(x[t * stride + qd + i]);
    }
    cpu::ApplyRope(p, inv_freq.data(), pos.data(), cs.tokens, cs.nq, q.data());
    cpu::ApplyRope(p, inv_freq.data(), pos.data(), cs.tokens, cs.nkv, k.data());
    auto* dx = reinterpret_cast<bf16_t*>(gpu.Upload(x));
    ASSERT_TRUE(cuda::ApplyRope(dx, stride, cs.tokens, cs.nq + cs.nkv, cs.head_dim, cs.rotary_dim,
                                gpu.Upload(pos), gpu.Upload(inv_freq), gpu.stream())
                    .ok());
    const std::vector<float> got = DownloadBf16(gpu, dx, size_t(cs.tokens) * stride);
    std::vector<float> gq, gk;
    for (int t = 0; t < cs.tokens; ++t) {
      const auto row = got.begin() + size_t(t) * stride;
      gq.insert(gq.end(), row, row + qd);
      gk.insert(gk.end(), row + qd, row + qd + kvd);
      for (int i = qd + kvd; i < stride; ++i) {
        ASSERT_EQ(got[size_t(t) * stride + i], Bf16ToFloat(x[size_t(t) * stride + i]))
            << "v or padding touched at token " << t << " i " << i;
      }
    }
    EXPECT_LT(RelL2(gq, q), 5e-3);
    EXPECT_LT(RelL2(gk, k), 5e-3);
  }
}

TEST(CudaOps, SiluMulShapes) {
  GpuArena gpu;
  KVKEEP_REQUIRE_GPU(gpu);
  const uint64_t seed = TestSeed();
  std::mt19937_64 rng(seed);
  // Vectorised (dim % 8 == 0, aligned) at decode and prefill shapes; generic for odd dims and
  // a misaligned output (offset 1).
  struct Case {
    int rows, dim, offset;
  };
  for (const Case& cs : {Case{1, 14336, 0}, Case{3, 14336, 0}, Case{64, 1024, 0}, Case{1, 8, 0},
                         Case{5, 1001, 0}, Case{2, 14336, 1}}) {
    SCOPED_TRACE(::testing::Message() << "rows " << cs.rows << " dim " << cs.dim << " offset "
                                      << cs.offset << " seed " << seed);
    const size_t n = size_t(cs.rows) * cs.dim;
    std::vector<bf16> gu = RandomBf16(rng, 2 * n, 3.0f);
    std::vector<float> gate(n), up(n), ref(n);
    for (int r = 0; r < cs.rows; ++r) {
      for (int i = 0; i < cs.dim; ++i) {
        gate[size_t(r) * cs.dim + i] = Bf16ToFloat(gu[size_t(r) * 2 * cs.dim + i]);
        up[size_t(r) * cs.dim + i] = Bf16ToFloat(gu[size_t(r) * 2 * cs.dim + cs.dim + i]);
      }
    }
    cpu::SiluMul(gate.data(), up.data(), cs.rows, cs.dim, ref.data());
    bf16_t* out = gpu.Alloc<bf16_t>(n + cs.offset + 8);
    gpu.Poison(out, n + cs.offset + 8);
    ASSERT_TRUE(cuda::SiluMul(Dev(gpu, gu), cs.rows, cs.dim, out + cs.offset, gpu.stream()).ok());
    const std::vector<float> got = DownloadBf16(gpu, out, n + cs.offset + 8);
    EXPECT_LT(RelL2(std::vector<float>(got.begin() + cs.offset, got.begin() + cs.offset + n), ref),
              5e-3);
    for (size_t i = n + cs.offset; i < got.size(); ++i) {
      EXPECT_TRUE(std::isnan(got[i])) << "wrote past the end at " << i;
    }
  }
}

TEST(CudaOps, SiluMulEmbeddingGather) {
  GpuArena gpu;
  KVKEEP_REQUIRE_GPU(gpu);
  const uint64_t seed = TestSeed();
  std::mt19937_64 rng(seed);
  const int rows = 7, dim = 1000;
  std::vector<bf16> gu = RandomBf16(rng, rows * 2 * dim, 3.0f);
  std::vector<float> gate(rows * dim), up(rows * dim), ref(rows * dim);
  for (int r = 0; r < rows; ++r) {
    for (int i = 0; i < dim; ++i) {
      gate[r * dim + i] = Bf16ToFloat(gu[r * 2 * dim + i]);
      up[r * dim + i] = Bf16ToFloat(gu[r * 2 * dim + dim + i]);
    }
  }
  cpu::SiluMul(gate.data(), up.data(), rows, dim, ref.data());
  bf16_t* out = gpu.Alloc<bf16_t>(rows * dim);
  gpu.Poison(out, rows * dim);
  ASSERT_TRUE(cuda::SiluMul(Dev(gpu, gu), rows, dim, out, gpu.stream()).ok());
  EXPECT_LT(RelL2(DownloadBf16(gpu, out, rows * dim), ref), 5e-3) << "seed " << seed;

  const int vocab = 50, hdim = 96, tokens = 11;
  std::vector<bf16> table = RandomBf16(rng, vocab * hdim);
  std::vector<int32_t> ids(tokens);
  for (auto& i : ids) i = std::uniform_int_distribution<int>(0, vocab - 1)(rng);
  std::vector<float> tf = ToFloat(table), eref(tokens * hdim);
  cpu::EmbeddingLookup(tf.data(), ids.data(), tokens, hdim, eref.data());
  float* hidden = gpu.Alloc<float>(tokens * hdim);
  gpu.Poison(hidden, tokens * hdim);
  const int32_t* dids = gpu.Upload(ids);
  ASSERT_TRUE(
      cuda::EmbeddingLookup(Dev(gpu, table), dids, tokens, hdim, hidden, gpu.stream()).ok());
  EXPECT_EQ(MaxAbsDiff(gpu.Download(hidden, tokens * hdim), eref), 0.0);

  bf16_t* rows_out = gpu.Alloc<bf16_t>(tokens * hdim);
  ASSERT_TRUE(cuda::GatherRows(Dev(gpu, table), dids, tokens, hdim, rows_out, gpu.stream()).ok());
  EXPECT_EQ(MaxAbsDiff(DownloadBf16(gpu, rows_out, tokens * hdim), eref), 0.0);
}

// One Gemm::Run per output type (bf16, fp32) on fresh random x against cpu::Matmul. x_offset
// shifts x by that many elements (1 misaligns it and forces cuBLAS); `gemv` is the path the call
// must take. Outputs are poisoned, with a poisoned tail that must stay untouched.
void CheckGemm(GpuArena& gpu, cuda::Gemm& gemm, std::mt19937_64& rng, uint64_t seed, int m, int n,
               int k, const std::vector<float>& wf, const bf16_t* dw, int x_offset, bool gemv) {
  SCOPED_TRACE(::testing::Message() << "m " << m << " n " << n << " k " << k << " x_offset "
                                    << x_offset << " seed " << seed);
  const size_t mn = size_t(m) * n, tail = 8;
  std::vector<bf16> x = RandomBf16(rng, size_t(m) * k + x_offset);
  std::vector<float> xf = ToFloat(x), ref(mn);
  cpu::Matmul(xf.data() + x_offset, wf.data(), nullptr, m, n, k, ref.data());
  const bf16_t* dx = Dev(gpu, x) + x_offset;
  EXPECT_EQ(cuda::Gemm::UsesGemv(dx, dw, m, k), gemv);
  float* y32 = gpu.Alloc<float>(mn + tail);
  bf16_t* y16 = gpu.Alloc<bf16_t>(mn + tail);
  gpu.Poison(y32, mn + tail);
  gpu.Poison(y16, mn + tail);
  ASSERT_TRUE(gemm.Run(dx, dw, y32, true, m, n, k).ok());
  ASSERT_TRUE(gemm.Run(dx, dw, y16, false, m, n, k).ok());
  const std::vector<float> out32 = gpu.Download(y32, mn + tail);
  const std::vector<float> out16 = DownloadBf16(gpu, y16, mn + tail);
  EXPECT_LT(RelL2(std::vector<float>(out32.begin(), out32.begin() + mn), ref), 1e-5);
  EXPECT_LT(RelL2(std::vector<float>(out16.begin(), out16.begin() + mn), ref), 5e-3);
  for (size_t i = mn; i < mn + tail; ++i) {
    EXPECT_TRUE(std::isnan(out32[i]) && std::isnan(out16[i])) << "wrote past y at " << i;
  }
}

TEST(CudaOps, GemmMatchesCpu) {
  GpuArena gpu;
  KVKEEP_REQUIRE_GPU(gpu);
  const uint64_t seed = TestSeed();
  std::mt19937_64 rng(seed);
  auto gemm = cuda::Gemm::Create(gpu.stream());
  ASSERT_TRUE(gemm.ok());
  // GEMV path (m <= 8, k % 8 == 0, aligned): n = 13 leaves a warp's last columns past n; k = 8
  // is one chunk (lane 0 only), k = 800 gives lanes unequal chunk counts and a tail chunk.
  for (int n : {8, 13, 4096 + 8, 6144}) {
    for (int k : {8, 800, 4096, 14336}) {
      const std::vector<bf16> w = RandomBf16(rng, size_t(n) * k);
      const std::vector<float> wf = ToFloat(w);
      const bf16_t* dw = Dev(gpu, w);
      for (int m : {1, 2, 3, 8}) CheckGemm(gpu, **gemm, rng, seed, m, n, k, wf, dw, 0, true);
    }
  }
  // cuBLAS path: m > 8, k % 8 != 0, misaligned x.
  for (auto [m, n, k, x_offset] : {std::tuple{37, 300, 200, 0}, std::tuple{9, 4096 + 8, 4096, 0},
                                   std::tuple{1, 320, 4100, 0}, std::tuple{3, 4096, 4096, 1}}) {
    const std::vector<bf16> w = RandomBf16(rng, size_t(n) * k);
    const std::vector<float> wf = ToFloat(w);
    CheckGemm(gpu, **gemm, rng, seed, m, n, k, wf, Dev(gpu, w), x_offset, false);
  }
}

// Not a pass/fail check: per-call times of the decode (m = 1) shapes of an 8B model, GEMV
// against cuBLAS, with weights rotated over more than L2 so that every call reads from DRAM.
TEST(CudaOps, GemmDecodeTiming) {
  GpuArena gpu;
  KVKEEP_REQUIRE_GPU(gpu);
  auto gemm = cuda::Gemm::Create(gpu.stream());
  ASSERT_TRUE(gemm.ok());
  cudaStream_t s = gpu.stream();
  struct Shape {
    const char* name;
    int n, k;
    bool f32;
  };
  for (const Shape& sh : {Shape{"qkv", 6144, 4096, false}, Shape{"o_proj", 4096, 4096, false},
                          Shape{"gate_up", 28672, 4096, false}, Shape{"down", 4096, 14336, false},
                          Shape{"lm_head", 128256, 4096, true}}) {
    const size_t w_elems = size_t(sh.n) * sh.k, w_bytes = w_elems * sizeof(bf16_t);
    const int copies = int(std::max<size_t>(2, (size_t(512) << 20) / w_bytes + 1));
    bf16_t* w = gpu.Alloc<bf16_t>(w_elems * copies);
    bf16_t* x = gpu.Alloc<bf16_t>(sh.k);
    float* y = gpu.Alloc<float>(sh.n);
    ASSERT_EQ(cudaMemsetAsync(w, 0, w_bytes * copies, s), cudaSuccess);
    ASSERT_EQ(cudaMemsetAsync(x, 0, sh.k * sizeof(bf16_t), s), cudaSuccess);
    double us[2];
    for (int path = 0; path < 2; ++path) {
      const auto call = [&](int i) {
        const bf16_t* wi = w + (i % copies) * w_elems;
        return path == 0 ? (*gemm)->Run(x, wi, y, sh.f32, 1, sh.n, sh.k)
                         : (*gemm)->RunCublas(x, wi, y, sh.f32, 1, sh.n, sh.k);
      };
      const int iters = 4 * copies;
      for (int i = 0; i < copies; ++i) ASSERT_TRUE(call(i).ok());  // warm-up
      cudaEvent_t start, stop;
      ASSERT_EQ(cudaEventCreate(&start), cudaSuccess);
      ASSERT_EQ(cudaEventCreate(&stop), cudaSuccess);
      ASSERT_EQ(cudaEventRecord(start, s), cudaSuccess);
      for (int i = 0; i < iters; ++i) ASSERT_TRUE(call(i).ok());
      ASSERT_EQ(cudaEventRecord(stop, s), cudaSuccess);
      ASSERT_EQ(cudaEventSynchronize(stop), cudaSuccess);
      float ms = 0;
      ASSERT_EQ(cudaEventElapsedTime(&ms, start, stop), cudaSuccess);
      us[path] = 1e3 * ms / iters;
      cudaEventDestroy(start);
      cudaEventDestroy(stop);
    }
    std::printf(
        "gemm m=1 %-8s n=%6d k=%5d: gemv %7.1f us (%4.0f GB/s), cublas %7.1f us (%4.0f GB/s)\n",
        sh.name, sh.n, sh.k, us[0], w_bytes / us[0] / 1e3, us[1], w_bytes / us[1] / 1e3);
  }
}

TEST(CudaOps, ArgmaxAndTopKTopPMatchSampler) {
  GpuArena gpu;
  KVKEEP_REQUIRE_GPU(gpu);
  const uint64_t seed = TestSeed();
  std::mt19937_64 rng(seed);
  const int rows = 6, vocab = 32000;
  std::vector<float> logits(rows * vocab);
  std::normal_distribution<float> nd(0.0f, 3.0f);
  for (float& x : logits) x = nd(rng);
  logits[2 * vocab + 17] = logits[2 * vocab + 5] = 100.0f;  // tie: the lower id wins
  logits[3 * vocab + 9] = NAN;                              // NaN never wins
  std::vector<float> temp(rows), top_p(rows), u(rows);
  std::vector<int32_t> top_k(rows);
  std::uniform_real_distribution<float> ud(0.0f, 1.0f);
  for (int r = 0; r < rows; ++r) {
    temp[r] = 0.5f + ud(rng);
    top_k[r] = std::uniform_int_distribution<int>(1, cuda::kMaxDeviceTopK)(rng);
    top_p[r] = r % 2 ? 1.0f : 0.5f + 0.5f * ud(rng);
    u[r] = ud(rng);
  }
  const float* dl = gpu.Upload(logits);
  int32_t* out = gpu.Alloc<int32_t>(rows);
  ASSERT_TRUE(cuda::Argmax(dl, rows, vocab, out, gpu.stream()).ok());
  std::vector<int32_t> am = gpu.Download(out, rows);
  for (int r = 0; r < rows; ++r) {
    EXPECT_EQ(am[r], Sampler::Argmax(logits.data() + r * vocab, vocab)) << "row " << r;
  }
  int32_t* cand_ids = gpu.Alloc<int32_t>(rows * cuda::kMaxDeviceTopK);
  float* cand_p = gpu.Alloc<float>(rows * cuda::kMaxDeviceTopK);
  ASSERT_TRUE(cuda::SampleTopKTopP(dl, rows, vocab, gpu.Upload(temp), gpu.Upload(top_k),
                                   gpu.Upload(top_p), gpu.Upload(u), out, cand_ids, cand_p,
                                   gpu.stream())
                  .ok());
  std::vector<int32_t> picks = gpu.Download(out, rows);
  std::vector<int32_t> ids = gpu.Download(cand_ids, rows * cuda::kMaxDeviceTopK);
  std::vector<float> probs = gpu.Download(cand_p, rows * cuda::kMaxDeviceTopK);
  for (int r = 0; r < rows; ++r) {
    SamplingParams sp;
    sp.temperature = temp[r];
    sp.top_k = top_k[r];
    sp.top_p = top_p[r];
    const auto cands = Sampler::Candidates(sp, logits.data() + r * vocab, vocab);
    ASSERT_LE(cands.size(), size_t(cuda::kMaxDeviceTopK));
    for (size_t i = 0; i < cands.size(); ++i) {
      EXPECT_EQ(ids[r * cuda::kMaxDeviceTopK + i], cands[i].first) << "row " << r << " i " << i;
      EXPECT_NEAR(probs[r * cuda::kMaxDeviceTopK + i], cands[i].second, 1e-6);
    }
    if (cands.size() < size_t(cuda::kMaxDeviceTopK)) {
      EXPECT_EQ(ids[r * cuda::kMaxDeviceTopK + cands.size()], -1) << "row " << r;
    }
    // The first candidate whose cumulative mass passes u.
    double a2 = 0;
    int32_t first = cands.back().first;
    for (const auto& [tok, p] : cands) {
      a2 += p;
      if (u[r] < a2) {
        first = tok;
        break;
      }
    }
    EXPECT_EQ(picks[r], first) << "row " << r << " seed " << seed;
  }
}

}  // namespace
}  // namespace kvkeep::testing
