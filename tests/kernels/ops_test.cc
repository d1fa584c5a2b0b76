// CPU model ops against double-precision loops written here independently.
#include "kernels/cpu/ops.h"

#include <gtest/gtest.h>

#include <cmath>
#include <numbers>
#include <random>
#include <vector>

#include "tests/testlib/test_util.h"

namespace kvkeep::cpu {
namespace {

std::vector<float> RandomVector(size_t n, float lo, float hi, std::mt19937_64& rng) {
  std::uniform_real_distribution<float> u(lo, hi);
  std::vector<float> v(n);
  for (float& x : v) x = u(rng);
  return v;
}

TEST(RmsNorm, MatchesDoubleLoopAndMayAlias) {
  std::mt19937_64 rng(testing::TestSeed());
  for (int64_t dim : {1, 7, 64, 4097}) {
    const int64_t rows = 5;
    const float eps = 1e-6f;
    std::vector<float> x = RandomVector(rows * dim, -3.0f, 3.0f, rng);
    x[0] = 0.0f;
    const std::vector<float> w = RandomVector(dim, 0.5f, 1.5f, rng);
    std::vector<float> out(x.size());
    RmsNorm(x.data(), w.data(), rows, dim, eps, out.data());
    for (int64_t r = 0; r < rows; ++r) {
      double sum_sq = 0.0;
      for (int64_t i = 0; i < dim; ++i) sum_sq += double{x[r * dim + i]} * x[r * dim + i];
      const double inv = 1.0 / std::sqrt(sum_sq / dim + eps);
      for (int64_t i = 0; i < dim; ++i) {
        const double want = x[r * dim + i] * inv * w[i];
        ASSERT_NEAR(out[r * dim + i], want, 1e-5 * (1.0 + std::abs(want)))
            << "dim " << dim << " row " << r << " i " << i;
      }
    }
    RmsNorm(x.data(), w.data(), rows, dim, eps, x.data());
    EXPECT_EQ(x, out);
  }
}

// theta^(-2i/dim), in double.
double DefaultInvFreq(double theta, int i, int dim) { return std::pow(theta, -2.0 * i / dim); }

TEST(Rope, InvFreqDefault) {
  for (int dim : {64, 80, 128}) {
    for (float theta : {10000.0f, 500000.0f, 1000000.0f}) {
      RopeParams p{.head_dim = dim, .theta = theta};
      std::vector<float> inv(dim / 2);
      RopeInvFreq(p, inv.data());
      for (int i = 0; i < dim / 2; ++i) {
        const double want = DefaultInvFreq(theta, i, dim);
        EXPECT_NEAR(inv[i], want, 2e-6 * want) << "dim " << dim << " theta " << theta << " i " << i;
      }
    }
  }
}

// Llama 3 frequency scaling, written from the published formula: wavelengths longer than
// original_max_position / low_freq_factor are slowed by `factor`, shorter than
// original_max_position / high_freq_factor are kept, and those in between interpolate
// linearly in original_max_position / wavelength.
TEST(Rope, InvFreqLlama3) {
  struct Case {
    float theta, factor, low, high;
    int original;
  };
  for (const Case& c :
       {Case{500000.0f, 8.0f, 1.0f, 4.0f, 8192}, Case{500000.0f, 32.0f, 1.0f, 4.0f, 8192},
        Case{10000.0f, 4.0f, 2.0f, 8.0f, 2048}}) {
    const int dim = 128;
    RopeParams p{.head_dim = dim,
                 .theta = c.theta,
                 .factor = c.factor,
                 .low_freq_factor = c.low,
                 .high_freq_factor = c.high,
                 .original_max_position = c.original};
    std::vector<float> inv(dim / 2);
    RopeInvFreq(p, inv.data());
    int kept = 0, slowed = 0, blended = 0;
    for (int i = 0; i < dim / 2; ++i) {
      const double f = DefaultInvFreq(c.theta, i, dim);
      const double wavelen = 2.0 * std::numbers::pi / f;
      double want;
      if (wavelen < c.original / c.high) {
        want = f;
        ++kept;
      } else if (wavelen > c.original / c.low) {
        want = f / c.factor;
        ++slowed;
      } else {
        const double smooth = (c.original / wavelen - c.low) / (c.high - c.low);
        want = (1.0 - smooth) * f / c.factor + smooth * f;
        ++blended;
      }
      EXPECT_NEAR(inv[i], want, 2e-6 * want) << "factor " << c.factor << " i " << i;
    }
    // All three regimes are exercised.
    EXPECT_GT(kept, 0);
    EXPECT_GT(slowed, 0);
    EXPECT_GT(blended, 0);
  }
}

// Direct rotation of pairs (i, i + half) by the angle position * inv_freq, in double.
// `fp32_angle` rounds the angle to float first, as transformers does.
std::vector<double> DirectRope(const std::vector<float>& x, const std::vector<float>& inv,
                               const std::vector<int32_t>& pos, int heads, int head_dim,
                               int rotary_dim, bool fp32_angle) {
  std::vector<double> out(x.begin(), x.end());
  const int half = rotary_dim / 2;
  for (size_t t = 0; t < pos.size(); ++t) {
    for (int h = 0; h < heads; ++h) {
      const size_t base = (t * heads + h) * head_dim;
      for (int i = 0; i < half; ++i) {
        const double angle = fp32_angle ? double{static_cast<float>(pos[t]) * inv[i]}
                                        : static_cast<double>(pos[t]) * inv[i];
        const double a = x[base + i];
        const double b = x[base + i + half];
        out[base + i] = a * std::cos(angle) - b * std::sin(angle);
        out[base + i + half] = b * std::cos(angle) + a * std::sin(angle);
      }
    }
  }
  return out;
}

TEST(Rope, MatchesDirectRotationAndKeepsNorms) {
  std::mt19937_64 rng(testing::TestSeed() + 1);
  const std::vector<int32_t> positions = {0, 1, 2, 15, 16, 17, 1000, 8191, 8192, 32767, 32768};
  for (int head_dim : {64, 128}) {
    for (int rotary_dim : {head_dim, head_dim / 2}) {
      for (float factor : {0.0f, 8.0f}) {
        SCOPED_TRACE(::testing::Message() << "head_dim " << head_dim << " rotary_dim " << rotary_dim
                                          << " factor " << factor);
        RopeParams p{
            .head_dim = head_dim, .rotary_dim = rotary_dim, .theta = 500000.0f, .factor = factor};
        std::vector<float> inv(rotary_dim / 2);
        RopeInvFreq(p, inv.data());
        const int heads = 3;
        const std::vector<float> x =
            RandomVector(positions.size() * heads * head_dim, -1.0f, 1.0f, rng);
        std::vector<float> y = x;
        ApplyRope(p, inv.data(), positions.data(), positions.size(), heads, y.data());

        const std::vector<double> hf =
            DirectRope(x, inv, positions, heads, head_dim, rotary_dim, /*fp32_angle=*/true);
        const std::vector<double> exact =
            DirectRope(x, inv, positions, heads, head_dim, rotary_dim, /*fp32_angle=*/false);
        for (size_t e = 0; e < y.size(); ++e) {
          const size_t t = e / (heads * head_dim);
          ASSERT_NEAR(y[e], hf[e], 2e-6) << "position " << positions[t] << " element " << e;
          // Against the exact angle the only extra error is rounding the angle to fp32:
          // half an ulp of position * inv_freq (at most 2^-24 relative), times |x| <= 1 ... 2.
          const double angle_ulp = positions[t] * 6e-8 * 2.0;
          ASSERT_NEAR(y[e], exact[e], 4e-6 + 2.0 * angle_ulp) << "position " << positions[t];
        }
        for (size_t v = 0; v < positions.size() * heads; ++v) {
          double n_in = 0.0, n_out = 0.0;
          for (int i = 0; i < head_dim; ++i) {
            n_in += double{x[v * head_dim + i]} * x[v * head_dim + i];
            n_out += double{y[v * head_dim + i]} * y[v * head_dim + i];
          }
          ASSERT_NEAR(std::sqrt(n_out), std::sqrt(n_in), 1e-5 * std::sqrt(n_in));
        }
        if (rotary_dim < head_dim) {  // the pass-through dims are untouched
          for (size_t v = 0; v < positions.size() * heads; ++v) {
            for (int i = rotary_dim; i < head_dim; ++i) {
              ASSERT_EQ(y[v * head_dim + i], x[v * head_dim + i]);
            }
          }
        }
      }
    }
  }
}

TEST(SiluMul, MatchesDoubleAndMayAlias) {
  std::mt19937_64 rng(testing::TestSeed() + 2);
  const int64_t rows = 3, dim = 1001;
  std::vector<float> gate = RandomVector(rows * dim, -12.0f, 12.0f, rng);
  const std::vector<float> up = RandomVector(rows * dim, -2.0f, 2.0f, rng);
  std::vector<float> out(gate.size());
  SiluMul(gate.data(), up.data(), rows, dim, out.data());
  for (size_t i = 0; i < out.size(); ++i) {
    const double g = gate[i];
    const double want = g / (1.0 + std::exp(-g)) * up[i];
    ASSERT_NEAR(out[i], want, 1e-6 * (1.0 + std::abs(want))) << i;
  }
  SiluMul(gate.data(), up.data(), rows, dim, gate.data());
  EXPECT_EQ(gate, out);
}

TEST(Matmul, MatchesNaiveLoopsWithOddSizes) {
  std::mt19937_64 rng(testing::TestSeed() + 3);
  struct Size {
    int64_t m, n, k;
  };
  for (const Size& s :
       {Size{1, 1, 1}, Size{1, 13, 29}, Size{7, 13, 29}, Size{33, 65, 127}, Size{5, 1, 300}}) {
    for (bool with_bias : {false, true}) {
      const std::vector<float> x = RandomVector(s.m * s.k, -1.0f, 1.0f, rng);
      const std::vector<float> w = RandomVector(s.n * s.k, -1.0f, 1.0f, rng);
      const std::vector<float> bias = RandomVector(s.n, -1.0f, 1.0f, rng);
      std::vector<float> y(s.m * s.n, std::nanf(""));
      Matmul(x.data(), w.data(), with_bias ? bias.data() : nullptr, s.m, s.n, s.k, y.data());
      for (int64_t r = 0; r < s.m; ++r) {
        for (int64_t c = 0; c < s.n; ++c) {
          double want = with_bias ? bias[c] : 0.0;
          for (int64_t i = 0; i < s.k; ++i) want += double{x[r * s.k + i]} * w[c * s.k + i];
          ASSERT_NEAR(y[r * s.n + c], want, 1e-5 * (1.0 + std::sqrt(double(s.k))))
              << "m " << s.m << " n " << s.n << " k " << s.k << " at " << r << "," << c;
        }
      }
    }
  }
}

TEST(EmbeddingLookup, CopiesRows) {
  std::mt19937_64 rng(testing::TestSeed() + 4);
  const int64_t vocab = 11, dim = 17;
  const std::vector<float> table = RandomVector(vocab * dim, -1.0f, 1.0f, rng);
  const std::vector<int32_t> ids = {3, 0, 10, 3};
  std::vector<float> out(ids.size() * dim);
  EmbeddingLookup(table.data(), ids.data(), ids.size(), dim, out.data());
  for (size_t t = 0; t < ids.size(); ++t) {
    for (int64_t i = 0; i < dim; ++i) ASSERT_EQ(out[t * dim + i], table[ids[t] * dim + i]);
  }
}

}  // namespace
}  // namespace kvkeep::cpu
