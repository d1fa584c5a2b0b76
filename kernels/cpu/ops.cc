#include "kernels/cpu/ops.h"

#include <cblas.h>
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <numbers>
#include <vector>

namespace kvkeep::cpu {
namespace {

// Below this many floats an op runs on the calling thread only.
constexpr int64_t kMinParallelFloats = int64_t{1} << 15;

}  // namespace

void RmsNorm(const float* x, const float* weight, int64_t rows, int64_t dim, float eps,
             float* out) {
#pragma omp parallel for schedule(static) if (rows * dim >= kMinParallelFloats)
  for (int64_t r = 0; r < rows; ++r) {
    const float* xr = x + r * dim;
    float* yr = out + r * dim;
    double sum_sq = 0.0;
#pragma omp simd reduction(+ : sum_sq)
    for (int64_t i = 0; i < dim; ++i) sum_sq += double{xr[i]} * xr[i];
    // As transformers' LlamaRMSNorm: x * rsqrt(mean(x^2) + eps), then * weight, in fp32.
    const float variance = static_cast<float>(sum_sq / static_cast<double>(dim));
    const float inv_rms = 1.0f / std::sqrt(variance + eps);
    for (int64_t i = 0; i < dim; ++i) yr[i] = weight[i] * (xr[i] * inv_rms);
  }
}

// Mirrors transformers' _compute_default_rope_parameters and _compute_llama3_parameters
// operation by operation in float32 (torch evaluates `scalar / t` as reciprocal(t) *
// scalar), so the frequencies match a float32 HF model to the last bit or so.
void RopeInvFreq(const RopeParams& p, float* inv_freq) {
  const int32_t dim = p.rotary_dim > 0 ? p.rotary_dim : p.head_dim;
  const int32_t half = dim / 2;
  for (int32_t i = 0; i < half; ++i) {
    const float exponent = static_cast<float>(2 * i) / static_cast<float>(dim);
    // powf rounded correctly: double pow of float arguments, rounded once.
    const float base_pow =
        static_cast<float>(std::pow(static_cast<double>(p.theta), static_cast<double>(exponent)));
    inv_freq[i] = 1.0f / base_pow;
  }
  if (p.factor <= 0.0f) return;

  const float factor = p.factor;
  const float old_context = static_cast<float>(p.original_max_position);
  const float low_freq_wavelen =
      static_cast<float>(static_cast<double>(p.original_max_position) / double{p.low_freq_factor});
  const float high_freq_wavelen =
      static_cast<float>(static_cast<double>(p.original_max_position) / double{p.high_freq_factor});
  const float band = static_cast<float>(double{p.high_freq_factor} - double{p.low_freq_factor});
  const float two_pi = static_cast<float>(2.0 * std::numbers::pi);
  for (int32_t i = 0; i < half; ++i) {
    const float f = inv_freq[i];
    const float wavelen = (1.0f / f) * two_pi;
    // Long wavelengths (low frequencies) are divided by factor; short ones are kept.
    const float f_llama = wavelen > low_freq_wavelen ? f / factor : f;
    const bool is_medium = !(wavelen < high_freq_wavelen) && !(wavelen > low_freq_wavelen);
    if (!is_medium) {
      inv_freq[i] = f_llama;
      continue;
    }
    // In between: interpolate with smooth = (old_context / wavelen - low) / (high - low).
    const float smooth = ((1.0f / wavelen) * old_context - p.low_freq_factor) / band;
    inv_freq[i] = (1.0f - smooth) * f_llama / factor + smooth * f_llama;
  }
}

void ApplyRope(const RopeParams& p, const float* inv_freq, const int32_t* positions,
               int64_t num_tokens, int64_t num_heads, float* x) {
  const int32_t dim = p.rotary_dim > 0 ? p.rotary_dim : p.head_dim;
  const int32_t half = dim / 2;
#pragma omp parallel if (num_tokens * num_heads * p.head_dim >= kMinParallelFloats)
  {
    std::vector<float> cos_t(half);
    std::vector<float> sin_t(half);
#pragma omp for schedule(static)
    for (int64_t t = 0; t < num_tokens; ++t) {
      // As HF: the angle is float(position) * inv_freq rounded to fp32; its cos and sin are
      // then rounded correctly (evaluated in double).
      const float pos = static_cast<float>(positions[t]);
      for (int32_t i = 0; i < half; ++i) {
        const double angle = static_cast<double>(pos * inv_freq[i]);
        cos_t[i] = static_cast<float>(std::cos(angle));
        sin_t[i] = static_cast<float>(std::sin(angle));
      }
      for (int64_t h = 0; h < num_heads; ++h) {
        float* xh = x + (t * num_heads + h) * p.head_dim;
        for (int32_t i = 0; i < half; ++i) {
          const float x1 = xh[i];
          const float x2 = xh[i + half];
          // x * cos + rotate_half(x) * sin, rotate_half(x) = (-x2, x1).
          xh[i] = x1 * cos_t[i] + (-x2) * sin_t[i];
          xh[i + half] = x2 * cos_t[i] + x1 * sin_t[i];
        }
      }
    }
  }
}

void SiluMul(const float* gate, const float* up, int64_t rows, int64_t dim, float* out) {
  const int64_t n = rows * dim;
#pragma omp parallel for schedule(static) if (n >= kMinParallelFloats)
  for (int64_t i = 0; i < n; ++i) {
    const float g = gate[i];
    out[i] = g / (1.0f + std::exp(-g)) * up[i];
  }
}

// One thread pool for everything: OpenBLAS runs single-threaded and the columns of the
// product are split across OpenMP threads here. Two pools (OpenMP's spinning workers and
// OpenBLAS's pthreads) starve each other: measured 5-17x slower decode and chunked
// prefill on 16 cores (docs/engine.md).
void Matmul(const float* x, const float* w, const float* bias, int64_t m, int64_t n, int64_t k,
            float* y) {
  if (m <= 0 || n <= 0) return;
  static const bool kSingleThreadedBlas = [] {
    openblas_set_num_threads(1);
    return true;
  }();
  (void)kSingleThreadedBlas;
  float beta = 0.0f;
  if (bias != nullptr) {  // as torch.addmm: y starts as the bias and the product is added
    for (int64_t r = 0; r < m; ++r) std::memcpy(y + r * n, bias, n * sizeof(float));
    beta = 1.0f;
  }
  if (k <= 0) {
    if (bias == nullptr) std::memset(y, 0, m * n * sizeof(float));
    return;
  }
  // Column chunks of at least 64 (a multiple of 16 keeps the SIMD tails out of the middle);
  // small products stay on one thread.
  constexpr int64_t kMinColumns = 64;
  const int64_t max_chunks = std::max<int64_t>(1, n / kMinColumns);
  const bool parallel = m * n * k >= (int64_t{1} << 18);
  const int64_t chunks = parallel ? std::min<int64_t>(omp_get_max_threads(), max_chunks) : 1;
  const int64_t per_chunk = (n / chunks + 15) / 16 * 16;
#pragma omp parallel for schedule(static) if (chunks > 1)
  for (int64_t c = 0; c < chunks; ++c) {
    const int64_t n0 = c * per_chunk;
    const int64_t n1 = c == chunks - 1 ? n : std::min(n, n0 + per_chunk);
    if (n1 <= n0) continue;
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, static_cast<blasint>(m),
                static_cast<blasint>(n1 - n0), static_cast<blasint>(k), 1.0f, x,
                static_cast<blasint>(k), w + n0 * k, static_cast<blasint>(k), beta, y + n0,
                static_cast<blasint>(n));
  }
}

void EmbeddingLookup(const float* table, const int32_t* ids, int64_t num_tokens, int64_t dim,
                     float* out) {
  for (int64_t t = 0; t < num_tokens; ++t) {
    std::memcpy(out + t * dim, table + int64_t{ids[t]} * dim, dim * sizeof(float));
  }
}

}  // namespace kvkeep::cpu
