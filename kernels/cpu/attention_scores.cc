#include "kernels/cpu/attention_scores.h"

#include <fmt/format.h>
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <type_traits>
#include <vector>

namespace kvkeep::cpu {
namespace {

inline float AsFloat(float x) { return x; }
inline float AsFloat(bf16 x) { return Bf16ToFloat(x); }

// Copies one KV head's keys [0, kv_len) out of the paged pool into rows of head_dim floats.
template <typename KvT>
void GatherKeys(const PagedKv<KvT>& kv, const int32_t* table, int32_t kv_len, int32_t head,
                float* dst) {
  const int32_t d = kv.head_dim, bs = kv.block_size;
  for (int32_t j = 0; j < kv_len; ++j) {
    const KvT* src =
        kv.k + int64_t{table[j / bs]} * kv.block_stride + (int64_t{head} * bs + j % bs) * d;
    for (int32_t x = 0; x < d; ++x) dst[int64_t{j} * d + x] = AsFloat(src[x]);
  }
}

}  // namespace

template <typename KvT>
Status AttentionScores(const AttentionParams& params, const AttentionBatch& batch,
                       const PagedKv<KvT>& kv, const float* q, int32_t num_scored, float* scores) {
  if (batch.num_seqs != 1 || batch.q_start == nullptr || batch.kv_len == nullptr ||
      batch.block_tables == nullptr) {
    return Status::InvalidArgument("attention scores: need exactly one sequence");
  }
  if (kv.num_kv_heads < 1 || params.num_q_heads % kv.num_kv_heads != 0 || kv.head_dim < 1) {
    return Status::InvalidArgument("attention scores: bad head counts");
  }
  const int32_t n_new = batch.q_start[1] - batch.q_start[0];
  const int32_t kv_len = batch.kv_len[0];
  if (batch.q_start[0] != 0 || n_new < 1 || kv_len < n_new ||
      kv_len > int64_t{batch.max_blocks_per_seq} * kv.block_size) {
    return Status::InvalidArgument(
        fmt::format("attention scores: bad query count {} or kv_len {}", n_new, kv_len));
  }
  if (num_scored < 0 || num_scored > kv_len) {
    return Status::InvalidArgument(
        fmt::format("attention scores: num_scored {} outside [0, {}]", num_scored, kv_len));
  }
  for (int32_t b = 0; b < (kv_len + kv.block_size - 1) / kv.block_size; ++b) {
    const int32_t id = batch.block_tables[b];
    if (id < 0 || (kv.num_blocks > 0 && id >= kv.num_blocks)) {
      return Status::InvalidArgument(fmt::format("attention scores: block id {}", id));
    }
  }
  if (q == nullptr || scores == nullptr) {
    return Status::InvalidArgument("attention scores: null q or scores");
  }
  const int32_t d = kv.head_dim, nq = params.num_q_heads, nkv = kv.num_kv_heads;
  const int32_t group = nq / nkv;
  const int32_t first_pos = kv_len - n_new;
  std::fill(scores, scores + int64_t{nkv} * num_scored, 0.0f);
  std::vector<float> keys(int64_t{kv_len} * d);
  for (int32_t h = 0; h < nkv; ++h) {
    GatherKeys(kv, batch.block_tables, kv_len, h, keys.data());
    float* out = scores + int64_t{h} * num_scored;
#pragma omp parallel
    {
      std::vector<float> s(kv_len), best(num_scored, 0.0f);
#pragma omp for schedule(dynamic, 1)
      for (int32_t row = 0; row < n_new * group; ++row) {
        const int32_t t = row / group, g = row % group;
        const float* qr = q + (int64_t{batch.q_start[0] + t} * nq + h * group + g) * d;
        const int32_t visible = first_pos + t + 1;
        float m = -INFINITY;
        for (int32_t j = 0; j < visible; ++j) {
          const float* kr = keys.data() + int64_t{j} * d;
          float dot = 0.0f;
#pragma omp simd reduction(+ : dot)
          for (int32_t x = 0; x < d; ++x) dot += qr[x] * kr[x];
          s[j] = dot * params.scale;
          m = std::max(m, s[j]);
        }
        float sum = 0.0f;
        for (int32_t j = 0; j < visible; ++j) sum += std::exp(s[j] - m);
        const float inv = 1.0f / sum;
        const int32_t n = std::min(visible, num_scored);
        for (int32_t j = 0; j < n; ++j) best[j] = std::max(best[j], std::exp(s[j] - m) * inv);
      }
#pragma omp critical
      for (int32_t j = 0; j < num_scored; ++j) out[j] = std::max(out[j], best[j]);
    }
  }
  return Status::OK();
}

template Status AttentionScores<float>(const AttentionParams&, const AttentionBatch&,
                                       const PagedKv<float>&, const float*, int32_t, float*);
template Status AttentionScores<bf16>(const AttentionParams&, const AttentionBatch&,
                                      const PagedKv<bf16>&, const float*, int32_t, float*);

}  // namespace kvkeep::cpu
