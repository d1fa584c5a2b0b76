// CudaBackend's hooks for compressed caches (engine/episode_cache.h): attention scores
// after each layer's KV write, and per-head compaction (engine/cuda/cuda_backend_impl.h).
#include "engine/cuda/cuda_backend_impl.h"

#include <algorithm>
#include <cstdint>
#include <vector>

#include "kernels/cuda/cuda_status.h"

namespace kvkeep::cuda_backend_detail {

Status CudaBackend::ForwardScored(const ForwardBatch& batch, int32_t num_scored,
                                  std::vector<float>* logits, std::vector<float>* scores) {
  if (batch.num_seqs() != 1 || batch.kv_len.size() != 1 || num_scored < 0 ||
      num_scored > batch.kv_len[0]) {
    return Status::InvalidArgument(
        "forward batch: scoring needs one sequence and 0 <= num_scored <= kv_len");
  }
  return Run(batch, logits, num_scored, scores);
}

// A trimmed layer scores its own num_scored - trim entries (over its own context); the
// rest of its rows stay 0, as on the CPU backend. The kernel writes rows of its own
// length, so those go through a scratch buffer into the [num_kv_heads][num_scored] rows.
Status CudaBackend::ScoreLayer(const Step& st, int layer, const AttentionParams& ap,
                               const PagedKv<bf16_t>& view, const bf16_t* qkv, int64_t qkv_stride) {
  const int32_t heads = config_.num_kv_heads;
  float* out = st.scores + int64_t{layer} * heads * st.num_scored;
  const int32_t trim = st.score_trims.empty() ? 0 : st.score_trims[layer];
  cudaStream_t s = device_->compute_stream();
  if (trim == 0) {
    return cuda::AttentionScores(ap, view, st.attn.block_tables, st.score_kv_len, st.num_tokens,
                                 qkv, qkv_stride, st.num_scored, out, score_workspace_.as<float>(),
                                 s);
  }
  const int32_t own = st.num_scored - trim;
  RETURN_IF_ERROR(
      layer_scores_.Reserve(std::max<int64_t>(int64_t{heads} * own, 1) * sizeof(float)));
  KVKEEP_CUDA_RETURN(cudaMemsetAsync(out, 0, size_t(heads) * st.num_scored * sizeof(float), s));
  if (own == 0) return Status::OK();
  RETURN_IF_ERROR(cuda::AttentionScores(
      ap, view, st.attn.block_tables, st.score_kv_len - trim, st.num_tokens, qkv, qkv_stride, own,
      layer_scores_.as<float>(), score_workspace_.as<float>(), s));
  KVKEEP_CUDA_RETURN(cudaMemcpy2DAsync(
      out, size_t(st.num_scored) * sizeof(float), layer_scores_.get(), size_t(own) * sizeof(float),
      size_t(own) * sizeof(float), heads, cudaMemcpyDeviceToDevice, s));
  return Status::OK();
}

Status CudaBackend::CompactKvLayers(std::span<const int32_t> block_table,
                                    std::span<const int32_t> num_entries,
                                    std::span<const int32_t> keep,
                                    std::span<const int32_t> num_keep) {
  RETURN_IF_ERROR(CheckCompactKvLayers(shape_, block_table, num_entries, keep, num_keep));
  // Element offsets of every (layer, K/V, head, kept entry) row that moves: source, then
  // destination; entries that stay put are skipped.
  const int32_t bs = shape_.block_size, heads = shape_.num_kv_heads;
  auto row = [&](int32_t l, int32_t kv, int32_t h, int32_t entry) {
    return int64_t{block_table[entry / bs]} * shape_.block_stride() + l * shape_.layer_stride() +
           kv * shape_.kv_stride() + (int64_t{h} * bs + entry % bs) * shape_.head_dim;
  };
  std::vector<int64_t> src, dst;
  const int32_t* k = keep.data();
  for (int32_t l = 0; l < shape_.num_layers; ++l) {
    for (int32_t h = 0; h < heads; ++h, k += num_keep[l]) {
      for (int32_t i = 0; i < num_keep[l]; ++i) {
        if (k[i] == i) continue;
        for (int32_t kv = 0; kv < 2; ++kv) {
          src.push_back(row(l, kv, h, k[i]));
          dst.push_back(row(l, kv, h, i));
        }
      }
    }
  }
  const int32_t rows = static_cast<int32_t>(src.size());
  if (rows == 0) return Status::OK();
  src.insert(src.end(), dst.begin(), dst.end());
  RETURN_IF_ERROR(rows_offsets_.Reserve(src.size() * sizeof(int64_t)));
  RETURN_IF_ERROR(compact_scratch_.Reserve(size_t(rows) * shape_.head_dim * sizeof(bf16_t)));
  cudaStream_t s = device_->compute_stream();
  // Stream-ordered after the previous step, and synchronous: src may go out of scope.
  RETURN_IF_ERROR(
      device_->CopyHostToDevice(rows_offsets_.get(), src.data(), src.size() * sizeof(int64_t)));
  const int64_t* d_src = rows_offsets_.as<int64_t>();
  const int64_t* d_dst = d_src + rows;
  std::vector<int32_t> used(
      block_table.begin(),
      block_table.begin() +
          (*std::max_element(num_entries.begin(), num_entries.end()) + bs - 1) / bs);
  RETURN_IF_ERROR(swaps_.OrderCompute(used));
  RETURN_IF_ERROR(cuda::CopyRows(pool_, d_src, compact_scratch_.as<bf16_t>(), nullptr, rows,
                                 shape_.head_dim, s));
  return cuda::CopyRows(compact_scratch_.as<bf16_t>(), nullptr, pool_, d_dst, rows, shape_.head_dim,
                        s);
}

}  // namespace kvkeep::cuda_backend_detail
