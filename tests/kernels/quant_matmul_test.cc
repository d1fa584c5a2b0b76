// Quantised matmul (Q8_0 / Q4_1 weights, Q8 activations) against the dequantise-then-fp32
// product computed here in double from the block layout (written independently of the
// kernel). The tolerance is the activation rounding's own bound: each x_i moves by at most
// d_x / 2 with d_x = max|x in its block| / 127, so a block contributes at most
// d_x / 2 * sum |w| in the block; plus fp32 summation slack (1e-5 of sum |w x|).
#include "kernels/cpu/quant_matmul.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstring>
#include <random>
#include <vector>

#include "base/bf16.h"
#include "tests/testlib/test_util.h"

namespace kvkeep::cpu {
namespace {

// Smallest normal fp16 above 0.01 etc.: scales are taken from a short list of exact fp16
// values so that the test's own decoding cannot disagree with the kernel's.
uint16_t RandomHalf(std::mt19937_64& rng, float lo, float hi) {
  std::uniform_real_distribution<float> u(lo, hi);
  for (;;) {
    const float f = u(rng);
    // Round to fp16 by truncating the mantissa to 10 bits (normal range only).
    uint32_t bits;
    std::memcpy(&bits, &f, 4);
    const int32_t exp = static_cast<int32_t>((bits >> 23) & 0xff) - 127;
    if (exp < -14 || exp > 15) continue;
    const uint16_t sign = static_cast<uint16_t>((bits >> 16) & 0x8000);
    return static_cast<uint16_t>(sign | ((exp + 15) << 10) | ((bits >> 13) & 0x3ff));
  }
}

struct TestMatrix {
  PackedQuantMatrix view;
  std::vector<uint8_t> bytes;
  std::vector<double> dense;  // [rows][cols], the exact dequantised values
};

TestMatrix MakeMatrix(GgmlQuantType type, int64_t rows, int64_t cols, std::mt19937_64& rng) {
  TestMatrix m;
  const int64_t blocks = cols / kQuantBlock, bb = GgmlQuantBlockBytes(type);
  m.bytes.resize(static_cast<size_t>(rows * blocks * bb));
  m.dense.resize(static_cast<size_t>(rows * cols));
  std::uniform_int_distribution<int> q8(-128, 127), q4(0, 15);
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t b = 0; b < blocks; ++b) {
      uint8_t* blk = m.bytes.data() + (r * blocks + b) * bb;
      double* out = m.dense.data() + r * cols + b * kQuantBlock;
      const uint16_t d = RandomHalf(rng, 0.001f, 0.05f);
      std::memcpy(blk, &d, 2);
      if (type == GgmlQuantType::kQ8_0) {
        for (int i = 0; i < kQuantBlock; ++i) {
          const auto q = static_cast<int8_t>(q8(rng));
          blk[2 + i] = static_cast<uint8_t>(q);
          out[i] = double{Fp16ToFloat(d)} * q;
        }
      } else {
        const uint16_t mn = RandomHalf(rng, -0.2f, 0.2f);
        std::memcpy(blk + 2, &mn, 2);
        for (int i = 0; i < kQuantBlock / 2; ++i) {
          const int lo = q4(rng), hi = q4(rng);
          blk[4 + i] = static_cast<uint8_t>(lo | (hi << 4));
          // As ggml: d * q + m evaluated in fp32.
          out[i] = Fp16ToFloat(d) * static_cast<float>(lo) + Fp16ToFloat(mn);
          out[i + 16] = Fp16ToFloat(d) * static_cast<float>(hi) + Fp16ToFloat(mn);
        }
      }
    }
  }
  m.view = PackQuantMatrix(type, rows, cols, m.bytes.data());
  return m;
}

struct Reference {
  std::vector<double> y, bound, slack;
};

Reference Dense(const TestMatrix& w, const std::vector<float>& x, int64_t m) {
  const int64_t n = w.view.rows, k = w.view.cols;
  Reference ref;
  ref.y.resize(m * n);
  ref.bound.resize(m * n);
  ref.slack.resize(m * n);
  for (int64_t i = 0; i < m; ++i) {
    for (int64_t j = 0; j < n; ++j) {
      double y = 0, bound = 0, mag = 0;
      for (int64_t b = 0; b < k / kQuantBlock; ++b) {
        double amax = 0, wabs = 0;
        for (int l = 0; l < kQuantBlock; ++l) {
          const int64_t c = b * kQuantBlock + l;
          const double wv = w.dense[j * k + c], xv = x[i * k + c];
          y += wv * xv;
          mag += std::fabs(wv * xv);
          amax = std::max(amax, std::fabs(xv));
          wabs += std::fabs(wv);
        }
        bound += amax / 127.0 / 2.0 * wabs;
      }
      ref.y[i * n + j] = y;
      ref.bound[i * n + j] = bound;
      ref.slack[i * n + j] = 1e-5 * (mag + bound) + 1e-30;
    }
  }
  return ref;
}

std::vector<QuantIsa> Isas() {
  std::vector<QuantIsa> isas = {QuantIsa::kScalar};
  if (DetectQuantIsa() == QuantIsa::kAvx512Vnni) isas.push_back(QuantIsa::kAvx512Vnni);
  return isas;
}

TEST(QuantMatmul, WithinTheActivationRoundingBoundOfTheDenseProduct) {
  std::mt19937_64 rng(testing::TestSeed());
  std::normal_distribution<float> normal(0.0f, 1.0f);
  Q8Rows scratch;
  for (GgmlQuantType type : {GgmlQuantType::kQ8_0, GgmlQuantType::kQ4_1}) {
    // Odd block counts (3, 5) exercise the AVX-512 kernel's single-block tail; m = 1 is the
    // decode shape, 19 a small prefill; n = 100 is not a multiple of the row tile.
    for (auto [m, n, k] : std::vector<std::array<int64_t, 3>>{
             {1, 1, 32}, {1, 100, 96}, {3, 17, 160}, {19, 64, 576}, {1, 40, 1536}}) {
      const TestMatrix w = MakeMatrix(type, n, k, rng);
      std::vector<float> x(m * k);
      for (float& v : x)
        v = normal(rng) * (std::uniform_int_distribution<int>(0, 9)(rng) == 0 ? 8 : 1);
      std::vector<float> bias(n);
      for (float& v : bias) v = normal(rng);
      const Reference ref = Dense(w, x, m);
      for (QuantIsa isa : Isas()) {
        SCOPED_TRACE(
            std::string(QuantIsaName(isa)) + (type == GgmlQuantType::kQ8_0 ? " Q8_0" : " Q4_1") +
            " m=" + std::to_string(m) + " n=" + std::to_string(n) + " k=" + std::to_string(k));
        std::vector<float> y(m * n), yb(m * n);
        QuantMatmul(x.data(), w.view, nullptr, m, y.data(), &scratch, isa);
        QuantMatmul(x.data(), w.view, bias.data(), m, yb.data(), &scratch, isa);
        double worst = 0;
        for (int64_t i = 0; i < m * n; ++i) {
          const double err = std::fabs(y[i] - ref.y[i]);
          ASSERT_LE(err, ref.bound[i] + ref.slack[i]) << "element " << i;
          ASSERT_NEAR(yb[i], y[i] + bias[i % n], 1e-6 * (1 + std::fabs(yb[i])));
          worst = std::max(worst, err / (ref.bound[i] + ref.slack[i]));
        }
        // The bound is not vacuous: the rounding error uses a good part of it somewhere.
        if (m * n * k >= 4096) {
          EXPECT_GT(worst, 0.01);
        }
      }
    }
  }
}

// Activations already on the Q8 grid (x = d * integer, with 127 d the block's max) quantise
// without error, so the product equals the dense one up to fp32 summation.
TEST(QuantMatmul, ExactOnTheQ8Grid) {
  std::mt19937_64 rng(testing::TestSeed() + 1);
  std::uniform_int_distribution<int> qd(-127, 127);
  Q8Rows scratch;
  for (GgmlQuantType type : {GgmlQuantType::kQ8_0, GgmlQuantType::kQ4_1}) {
    const int64_t m = 4, n = 33, k = 192;
    const TestMatrix w = MakeMatrix(type, n, k, rng);
    std::vector<float> x(m * k);
    for (int64_t b = 0; b < m * k / kQuantBlock; ++b) {
      const float d = 0.03125f * static_cast<float>(1 + b % 5);  // powers of two times small ints
      for (int l = 0; l < kQuantBlock; ++l)
        x[b * kQuantBlock + l] = d * static_cast<float>(qd(rng));
      x[b * kQuantBlock] = 127.0f * d;  // the block's max
    }
    const Reference ref = Dense(w, x, m);
    for (QuantIsa isa : Isas()) {
      std::vector<float> y(m * n);
      QuantMatmul(x.data(), w.view, nullptr, m, y.data(), &scratch, isa);
      for (int64_t i = 0; i < m * n; ++i) {
        ASSERT_LE(std::fabs(y[i] - ref.y[i]), ref.slack[i]) << QuantIsaName(isa) << " " << i;
      }
    }
  }
}

TEST(QuantMatmul, VectorKernelAgreesWithScalarReference) {
  if (DetectQuantIsa() != QuantIsa::kAvx512Vnni) {
    GTEST_SKIP() << "this CPU lacks AVX-512 VNNI; only the scalar kernel runs";
  }
  std::mt19937_64 rng(testing::TestSeed() + 2);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  Q8Rows scratch;
  for (GgmlQuantType type : {GgmlQuantType::kQ8_0, GgmlQuantType::kQ4_1}) {
    const int64_t m = 7, n = 50, k = 544;  // 17 blocks
    const TestMatrix w = MakeMatrix(type, n, k, rng);
    std::vector<float> x(m * k);
    for (float& v : x) v = normal(rng);
    const Reference ref = Dense(w, x, m);
    std::vector<float> ys(m * n), yv(m * n);
    QuantMatmul(x.data(), w.view, nullptr, m, ys.data(), &scratch, QuantIsa::kScalar);
    QuantMatmul(x.data(), w.view, nullptr, m, yv.data(), &scratch, QuantIsa::kAvx512Vnni);
    // Same integer dot products; only the fp32 summation order differs.
    for (int64_t i = 0; i < m * n; ++i) ASSERT_NEAR(yv[i], ys[i], ref.slack[i]) << i;
  }
}

TEST(QuantizeRowsQ8, RoundsToNearestWithinHalfAStep) {
  std::mt19937_64 rng(testing::TestSeed() + 3);
  std::normal_distribution<float> normal(0.0f, 3.0f);
  const int64_t k = 96;  // 3 blocks, padded to 4
  std::vector<float> x(2 * k);
  for (float& v : x) v = normal(rng);
  std::fill(x.begin() + k + 64, x.end(), 0.0f);  // an all-zero block
  Q8Rows q;
  QuantizeRowsQ8(x.data(), 2, k, &q);
  ASSERT_EQ(q.blocks, 4);
  for (int r = 0; r < 2; ++r) {
    for (int b = 0; b < 4; ++b) {
      const size_t i = static_cast<size_t>(r * 4 + b);
      const int8_t* qb = q.q.data() + i * kQuantBlock;
      if (b == 3) {  // padding is zero
        EXPECT_EQ(q.d[i], 0.0f);
        EXPECT_EQ(q.s[i], 0.0f);
        EXPECT_TRUE(std::all_of(qb, qb + kQuantBlock, [](int8_t v) { return v == 0; }));
        continue;
      }
      const float* xb = x.data() + r * k + b * kQuantBlock;
      float amax = 0;
      int sum = 0;
      for (int l = 0; l < kQuantBlock; ++l) amax = std::max(amax, std::fabs(xb[l]));
      EXPECT_FLOAT_EQ(q.d[i], amax / 127.0f);
      for (int l = 0; l < kQuantBlock; ++l) {
        EXPECT_LE(std::fabs(xb[l] - q.d[i] * qb[l]), q.d[i] / 2 * 1.0001f + 1e-30f);
        sum += qb[l];
      }
      EXPECT_FLOAT_EQ(q.s[i], q.d[i] * static_cast<float>(sum));
    }
  }
}

}  // namespace
}  // namespace kvkeep::cpu
