// Matrix products against weights kept quantised (GGUF Q8_0 and Q4_1), the CPU's fast path
// for GGUF models. As llama.cpp does, the fp32 activations are quantised to 8 bits per
// block of 32 (Q8: one fp32 scale per block, round to nearest) and each block's dot product
// is an integer dot product, scaled once. Both weight types are packed at load into one
// form, w = d * u + m with u unsigned (Q4_1: u = the nibble; Q8_0: u = q + 128, m = -128 d):
//   sum_i w_i x_i ~ d_w d_x sum_i u_i q_i + m_w (d_x sum_i q_i)
// The only error against dequantise-then-fp32 is the activation rounding: |x_i - d_x q_i|
// <= d_x / 2 with d_x = max |x in the block| / 127, so a block's error is at most
// d_x / 2 * sum |w in the block|, and a product's at most the sum over its blocks.
//
// Kernels: a scalar reference and an AVX-512 VNNI one (vpdpbusd, unsigned x signed bytes),
// chosen at run time from the CPU's features (never assumed). Work is split over output
// rows across OpenMP threads; small products stay on the calling thread.
// Thread-safety: a PackedQuantMatrix is immutable; QuantMatmul is safe to call
// concurrently with distinct scratch.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

namespace kvkeep::cpu {

inline constexpr int64_t kQuantBlock = 32;

// ggml block types (ggml-common.h), blocks of 32 along a row, rows contiguous:
//   Q8_0: fp16 d, int8 q[32]             (34 bytes; w = d q)
//   Q4_1: fp16 d, fp16 m, uint8 qs[16]   (20 bytes; w = d q + m, element j is qs[j] & 15,
//                                          element j + 16 is qs[j] >> 4)
enum class GgmlQuantType { kQ8_0, kQ4_1 };
int64_t GgmlQuantBlockBytes(GgmlQuantType type);

// A [rows][cols] matrix repacked for the kernels. Blocks are padded to an even count
// (a zero block, d = m = 0) so that the vector kernel always takes two at a time.
struct PackedQuantMatrix {
  GgmlQuantType type = GgmlQuantType::kQ8_0;
  int64_t rows = 0;
  int64_t cols = 0;
  int64_t blocks = 0;       // per row, padded to even
  std::vector<uint8_t> u;   // [rows][blocks / 2][64 values]: Q8_0 one byte each; Q4_1
                            // two blocks per 32 bytes (low nibble: the pair's first)
  std::vector<float> d, m;  // [rows][blocks]
  int64_t row_u_bytes() const { return type == GgmlQuantType::kQ8_0 ? blocks * 32 : blocks * 16; }
  size_t memory_bytes() const { return u.size() + (d.size() + m.size()) * sizeof(float); }
};

// REQUIRES: cols % 32 == 0; `blocks` holds rows * cols / 32 ggml blocks of `type`.
PackedQuantMatrix PackQuantMatrix(GgmlQuantType type, int64_t rows, int64_t cols,
                                  const uint8_t* blocks);

// Activations quantised per block of 32: x ~ d * q; s = d * sum(q). Rows padded like the
// weights (zero blocks).
struct Q8Rows {
  int64_t rows = 0;
  int64_t blocks = 0;       // per row, padded to even
  std::vector<int8_t> q;    // [rows][blocks * 32]
  std::vector<float> d, s;  // [rows][blocks]
};
// x[m][k] -> out (resized as needed, never shrunk). REQUIRES: k % 32 == 0.
void QuantizeRowsQ8(const float* x, int64_t m, int64_t k, Q8Rows* out);

enum class QuantIsa { kScalar, kAvx512Vnni };
// The best kernel this CPU runs (AVX-512 F/BW/VL + VNNI, else scalar).
QuantIsa DetectQuantIsa();
const char* QuantIsaName(QuantIsa isa);

// y[m][n] = x[m][k] * W[n][k]^T (+ bias[n] if bias), with n = w.rows, k = w.cols.
// kAvx512Vnni falls back to the scalar reference when the CPU lacks the features.
void QuantMatmul(const float* x, const PackedQuantMatrix& w, const float* bias, int64_t m, float* y,
                 Q8Rows* scratch, QuantIsa isa = DetectQuantIsa());

}  // namespace kvkeep::cpu
