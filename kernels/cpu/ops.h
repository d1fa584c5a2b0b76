// CPU model kernels (reference implementations). Row-major fp32 throughout.
#pragma once

#include <cstdint>

#include "base/status.h"

namespace kvkeep::cpu {

// out[r] = x[r] / rms(x[r]) * weight, rows of `dim`. out may alias x.
void RmsNorm(const float* x, const float* weight, int64_t rows, int64_t dim, float eps, float* out);

// Rotary embedding parameters, including Llama-3 frequency scaling
// (rope_scaling.rope_type == "llama3"). factor <= 0 means no scaling.
struct RopeParams {
  int32_t head_dim = 0;
  int32_t rotary_dim = 0;  // 0 means head_dim
  float theta = 10000.0f;
  // llama3 scaling
  float factor = 0.0f;
  float low_freq_factor = 1.0f;
  float high_freq_factor = 4.0f;
  int32_t original_max_position = 8192;
};

// Inverse frequencies [rotary_dim / 2] after any scaling.
void RopeInvFreq(const RopeParams& p, float* inv_freq);

// Rotates x[num_tokens][num_heads][head_dim] in place, HF "rotate_half" convention
// (pairs (i, i + rotary_dim/2)), at positions[num_tokens].
void ApplyRope(const RopeParams& p, const float* inv_freq, const int32_t* positions,
               int64_t num_tokens, int64_t num_heads, float* x);

// out[r][i] = silu(gate[r][i]) * up[r][i]. out may alias gate.
void SiluMul(const float* gate, const float* up, int64_t rows, int64_t dim, float* out);

// y[m][n] = x[m][k] * w[n][k]^T (+ bias[n] if bias). OpenBLAS sgemm.
void Matmul(const float* x, const float* w, const float* bias, int64_t m, int64_t n, int64_t k,
            float* y);

// out[t] = table[ids[t]] for rows of `dim`. REQUIRES: 0 <= ids[t] < vocab (checked by caller).
void EmbeddingLookup(const float* table, const int32_t* ids, int64_t num_tokens, int64_t dim,
                     float* out);

}  // namespace kvkeep::cpu
