#include "kernels/cpu/quant_matmul.h"

#include <immintrin.h>
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstring>

#include "base/bf16.h"

namespace kvkeep::cpu {
namespace {

constexpr int64_t kRowTile = 16;  // weight rows per task
constexpr int64_t kMinParallelMacs = int64_t{1} << 18;
constexpr int kMaxActRows = 4;  // activation rows per pass over a weight row (prefill)

inline float Half(const uint8_t* p) {
  uint16_t h;
  std::memcpy(&h, p, 2);
  return Fp16ToFloat(h);
}

// --- scalar reference ----------------------------------------------------------------------

// out[r] = row j of w . activation row i0 + r, r < num_rows.
void DotScalar(const PackedQuantMatrix& w, int64_t j, const Q8Rows& x, int64_t i0, int num_rows,
               float* out) {
  const int64_t blocks = w.blocks;
  const uint8_t* u = w.u.data() + j * w.row_u_bytes();
  const float* dw = w.d.data() + j * blocks;
  const float* mw = w.m.data() + j * blocks;
  for (int r = 0; r < num_rows; ++r) {
    const int8_t* q = x.q.data() + (i0 + r) * blocks * kQuantBlock;
    const float* dx = x.d.data() + (i0 + r) * blocks;
    const float* sx = x.s.data() + (i0 + r) * blocks;
    float acc = 0.0f;
    for (int64_t b = 0; b < blocks; ++b) {
      int32_t dot = 0;
      for (int l = 0; l < kQuantBlock; ++l) {
        int32_t v;
        if (w.type == GgmlQuantType::kQ8_0) {
          v = u[b * kQuantBlock + l];
        } else {  // pair b / 2 is 32 bytes; block b % 2 is its low or high nibbles
          v = (u[(b / 2) * kQuantBlock + l] >> (4 * (b % 2))) & 15;
        }
        dot += v * q[b * kQuantBlock + l];
      }
      acc += dw[b] * dx[b] * static_cast<float>(dot) + mw[b] * sx[b];
    }
    out[r] = acc;
  }
}

// --- AVX-512 VNNI -------------------------------------------------------------------------
// GCC 12 reports its own intrinsic headers' undefined upper halves (_mm512_castsi256_si512
// and friends) as uninitialised reads when inlined under a target attribute: false positives.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#define KVKEEP_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni,fma")))

// One pass over weight row j for activation rows i0..i0+R-1. Blocks go in chunks of 16
// (one zmm of scales); within a chunk, a pair of blocks is one zmm of 64 weight values, and
// its two scales are spread over the pair's two 8-lane halves by one permute.
template <int R, bool kQ4>
KVKEEP_AVX512 void DotAvx512(const PackedQuantMatrix& w, int64_t j, const Q8Rows& x, int64_t i0,
                             float* out) {
  const int64_t blocks = w.blocks;
  const uint8_t* u = w.u.data() + j * w.row_u_bytes();
  const float* dw = w.d.data() + j * blocks;
  const float* mw = w.m.data() + j * blocks;
  const int8_t* q[R];
  const float* dx[R];
  const float* sx[R];
  __m512 acc[R], macc[R];
  for (int r = 0; r < R; ++r) {
    q[r] = x.q.data() + (i0 + r) * blocks * kQuantBlock;
    dx[r] = x.d.data() + (i0 + r) * blocks;
    sx[r] = x.s.data() + (i0 + r) * blocks;
    acc[r] = _mm512_setzero_ps();
    macc[r] = _mm512_setzero_ps();
  }
  const __m512i pair_idx0 = _mm512_set_epi32(1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0);
  const __m512i two = _mm512_set1_epi32(2);
  const __m256i low4 = _mm256_set1_epi8(15);
  for (int64_t c = 0; c < blocks; c += 16) {
    const int nb = static_cast<int>(std::min<int64_t>(16, blocks - c));
    const __mmask16 mask = static_cast<__mmask16>((1u << nb) - 1);
    const __m512 dwv = _mm512_maskz_loadu_ps(mask, dw + c);
    const __m512 mwv = _mm512_maskz_loadu_ps(mask, mw + c);
    __m512 dd[R];
    for (int r = 0; r < R; ++r) {
      dd[r] = _mm512_mul_ps(dwv, _mm512_maskz_loadu_ps(mask, dx[r] + c));
      macc[r] = _mm512_fmadd_ps(mwv, _mm512_maskz_loadu_ps(mask, sx[r] + c), macc[r]);
    }
    __m512i idx = pair_idx0;
    for (int p = 0; p < nb / 2; ++p, idx = _mm512_add_epi32(idx, two)) {
      const int64_t b = c + 2 * p;  // first block of the pair
      __m512i uv;
      if constexpr (kQ4) {
        const __m256i packed =
            _mm256_loadu_si256(reinterpret_cast<const __m256i*>(u + b * kQuantBlock / 2));
        const __m256i lo = _mm256_and_si256(packed, low4);
        const __m256i hi = _mm256_and_si256(_mm256_srli_epi16(packed, 4), low4);
        uv = _mm512_inserti64x4(_mm512_castsi256_si512(lo), hi, 1);
      } else {
        uv = _mm512_loadu_si512(u + b * kQuantBlock);
      }
      for (int r = 0; r < R; ++r) {
        const __m512i xv = _mm512_loadu_si512(q[r] + b * kQuantBlock);
        const __m512i dot = _mm512_dpbusd_epi32(_mm512_setzero_si512(), uv, xv);
        acc[r] =
            _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot), _mm512_permutexvar_ps(idx, dd[r]), acc[r]);
      }
    }
  }
  for (int r = 0; r < R; ++r) out[r] = _mm512_reduce_add_ps(_mm512_add_ps(acc[r], macc[r]));
}

template <bool kQ4>
KVKEEP_AVX512 void DotAvx512Rows(const PackedQuantMatrix& w, int64_t j, const Q8Rows& x, int64_t i0,
                                 int num_rows, float* out) {
  switch (num_rows) {
    case 1:
      return DotAvx512<1, kQ4>(w, j, x, i0, out);
    case 2:
      return DotAvx512<2, kQ4>(w, j, x, i0, out);
    case 3:
      return DotAvx512<3, kQ4>(w, j, x, i0, out);
    default:
      return DotAvx512<4, kQ4>(w, j, x, i0, out);
  }
}

void DotAvx512Any(const PackedQuantMatrix& w, int64_t j, const Q8Rows& x, int64_t i0, int num_rows,
                  float* out) {
  if (w.type == GgmlQuantType::kQ4_1) return DotAvx512Rows<true>(w, j, x, i0, num_rows, out);
  return DotAvx512Rows<false>(w, j, x, i0, num_rows, out);
}

#pragma GCC diagnostic pop

bool CpuHasAvx512Vnni() {
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
         __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512vnni") &&
         __builtin_cpu_supports("fma");
}

using DotFn = void (*)(const PackedQuantMatrix&, int64_t, const Q8Rows&, int64_t, int, float*);

int64_t EvenBlocks(int64_t cols) { return (cols / kQuantBlock + 1) / 2 * 2; }

}  // namespace

int64_t GgmlQuantBlockBytes(GgmlQuantType type) {
  return type == GgmlQuantType::kQ8_0 ? 2 + kQuantBlock : 4 + kQuantBlock / 2;
}

PackedQuantMatrix PackQuantMatrix(GgmlQuantType type, int64_t rows, int64_t cols,
                                  const uint8_t* src) {
  PackedQuantMatrix p;
  p.type = type;
  p.rows = rows;
  p.cols = cols;
  p.blocks = EvenBlocks(cols);
  const int64_t src_blocks = cols / kQuantBlock, bb = GgmlQuantBlockBytes(type);
  p.u.assign(static_cast<size_t>(rows * p.row_u_bytes()), 0);
  p.d.assign(static_cast<size_t>(rows * p.blocks), 0.0f);
  p.m.assign(static_cast<size_t>(rows * p.blocks), 0.0f);
  for (int64_t r = 0; r < rows; ++r) {
    uint8_t* u = p.u.data() + r * p.row_u_bytes();
    for (int64_t b = 0; b < src_blocks; ++b) {
      const uint8_t* blk = src + (r * src_blocks + b) * bb;
      const float d = Half(blk);
      p.d[r * p.blocks + b] = d;
      if (type == GgmlQuantType::kQ8_0) {
        p.m[r * p.blocks + b] = -128.0f * d;
        for (int l = 0; l < kQuantBlock; ++l) u[b * kQuantBlock + l] = blk[2 + l] ^ 0x80;
      } else {
        p.m[r * p.blocks + b] = Half(blk + 2);
        uint8_t* pair = u + (b / 2) * kQuantBlock;
        const int shift = 4 * static_cast<int>(b % 2);
        for (int l = 0; l < kQuantBlock / 2; ++l) {
          pair[l] |= static_cast<uint8_t>((blk[4 + l] & 15) << shift);
          pair[l + 16] |= static_cast<uint8_t>((blk[4 + l] >> 4) << shift);
        }
      }
    }
  }
  return p;
}

QuantIsa DetectQuantIsa() {
  static const QuantIsa kIsa = CpuHasAvx512Vnni() ? QuantIsa::kAvx512Vnni : QuantIsa::kScalar;
  return kIsa;
}

const char* QuantIsaName(QuantIsa isa) {
  return isa == QuantIsa::kAvx512Vnni ? "avx512-vnni" : "scalar";
}

void QuantizeRowsQ8(const float* x, int64_t m, int64_t k, Q8Rows* out) {
  const int64_t src_blocks = k / kQuantBlock, blocks = EvenBlocks(k);
  out->rows = m;
  out->blocks = blocks;
  const auto n = static_cast<size_t>(m * blocks);
  if (out->d.size() < n) {
    out->q.resize(n * kQuantBlock);
    out->d.resize(n);
    out->s.resize(n);
  }
  for (int64_t r = 0; r < m; ++r) {
    for (int64_t b = 0; b < blocks; ++b) {
      int8_t* q = out->q.data() + (r * blocks + b) * kQuantBlock;
      const size_t i = static_cast<size_t>(r * blocks + b);
      if (b >= src_blocks) {  // padding
        std::memset(q, 0, kQuantBlock);
        out->d[i] = out->s[i] = 0.0f;
        continue;
      }
      const float* v = x + r * k + b * kQuantBlock;
      float amax = 0.0f;
      for (int l = 0; l < kQuantBlock; ++l) amax = std::max(amax, std::fabs(v[l]));
      const float inv = amax > 0.0f ? 127.0f / amax : 0.0f;
      int32_t sum = 0;
      for (int l = 0; l < kQuantBlock; ++l) {
        q[l] = static_cast<int8_t>(std::nearbyint(v[l] * inv));  // |v * inv| <= 127
        sum += q[l];
      }
      out->d[i] = amax / 127.0f;
      out->s[i] = out->d[i] * static_cast<float>(sum);
    }
  }
}

void QuantMatmul(const float* x, const PackedQuantMatrix& w, const float* bias, int64_t m, float* y,
                 Q8Rows* scratch, QuantIsa isa) {
  const int64_t n = w.rows;
  if (m <= 0 || n <= 0) return;
  QuantizeRowsQ8(x, m, w.cols, scratch);
  const Q8Rows& xq = *scratch;
  const DotFn dot = isa == QuantIsa::kAvx512Vnni && DetectQuantIsa() == QuantIsa::kAvx512Vnni
                        ? DotAvx512Any
                        : DotScalar;
  const int64_t tiles = (n + kRowTile - 1) / kRowTile;
  const bool parallel = m * n * w.cols >= kMinParallelMacs;
#pragma omp parallel for schedule(static) if (parallel)
  for (int64_t t = 0; t < tiles; ++t) {
    const int64_t j0 = t * kRowTile, j1 = std::min(n, j0 + kRowTile);
    float out[kMaxActRows];
    for (int64_t i = 0; i < m; i += kMaxActRows) {
      const int rows = static_cast<int>(std::min<int64_t>(kMaxActRows, m - i));
      for (int64_t j = j0; j < j1; ++j) {
        dot(w, j, xq, i, rows, out);
        for (int r = 0; r < rows; ++r) {
          y[(i + r) * n + j] = bias != nullptr ? out[r] + bias[j] : out[r];
        }
      }
    }
  }
}

}  // namespace kvkeep::cpu
