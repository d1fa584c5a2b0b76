// GPU model kernels (add+RMSNorm, RoPE with llama3 scaling, SiLU*mul, embedding, GEMM,
// argmax, top-k/top-p sampling) against the CPU references on seeded random inputs.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <random>
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

TEST(CudaOps, AddRmsNormMatchesCpu) {
  GpuArena gpu;
  KVKEEP_REQUIRE_GPU(gpu);
  const uint64_t seed = TestSeed();
  std::mt19937_64 rng(seed);
  const int rows = 13, dim = 768;
  std::vector<float> hidden(rows * dim);
  std::normal_distribution<float> nd(0.0f, 2.0f);
  for (float& x : hidden) x = nd(rng);
  std::vector<bf16> delta = RandomBf16(rng, rows * dim), weight = RandomBf16(rng, dim);
  std::vector<float> sum(rows * dim), ref(rows * dim);
  for (int i = 0; i < rows * dim; ++i) sum[i] = hidden[i] + Bf16ToFloat(delta[i]);
  const std::vector<float> wf = ToFloat(weight);
  cpu::RmsNorm(sum.data(), wf.data(), rows, dim, 1e-5f, ref.data());
  float* dh = gpu.Upload(hidden);
  bf16_t* out = gpu.Alloc<bf16_t>(rows * dim);
  gpu.Poison(out, rows * dim);
  ASSERT_TRUE(
      cuda::AddRmsNorm(dh, Dev(gpu, delta), Dev(gpu, weight), rows, dim, 1e-5f, out, gpu.stream())
          .ok());
  EXPECT_LT(RelL2(DownloadBf16(gpu, out, rows * dim), ref), 5e-3) << "seed " << seed;
  EXPECT_LT(MaxAbsDiff(gpu.Download(dh, rows * dim), sum), 1e-5);
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

TEST(CudaOps, GemmMatchesCpu) {
  GpuArena gpu;
  KVKEEP_REQUIRE_GPU(gpu);
  const uint64_t seed = TestSeed();
  std::mt19937_64 rng(seed);
  auto gemm = cuda::Gemm::Create(gpu.stream());
  ASSERT_TRUE(gemm.ok());
  for (auto [m, n, k] : {std::tuple{1, 320, 128}, std::tuple{37, 300, 200}}) {
    std::vector<bf16> x = RandomBf16(rng, m * k), w = RandomBf16(rng, n * k);
    std::vector<float> xf = ToFloat(x), wf = ToFloat(w), ref(m * n);
    cpu::Matmul(xf.data(), wf.data(), nullptr, m, n, k, ref.data());
    float* y32 = gpu.Alloc<float>(m * n);
    bf16_t* y16 = gpu.Alloc<bf16_t>(m * n);
    gpu.Poison(y32, m * n);
    gpu.Poison(y16, m * n);
    ASSERT_TRUE((*gemm)->Run(Dev(gpu, x), Dev(gpu, w), y32, true, m, n, k).ok());
    ASSERT_TRUE((*gemm)->Run(Dev(gpu, x), Dev(gpu, w), y16, false, m, n, k).ok());
    EXPECT_LT(RelL2(gpu.Download(y32, m * n), ref), 1e-5) << "seed " << seed;
    EXPECT_LT(RelL2(DownloadBf16(gpu, y16, m * n), ref), 5e-3) << "seed " << seed;
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
