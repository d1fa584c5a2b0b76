#include "engine/episode_cache.h"

#include <algorithm>
#include <numeric>
#include <string>

namespace kvkeep {
namespace {

// Fills the step's token layout: tokens at entries entry.. with the given positions.
void LayoutBatch(std::span<const int32_t> tokens, int32_t entry, const KvView& view,
                 const std::vector<int32_t>& blocks, int32_t block_size, bool all_rows,
                 ForwardBatch* b) {
  const int32_t n = static_cast<int32_t>(tokens.size());
  b->token_ids.assign(tokens.begin(), tokens.end());
  b->positions.resize(n);
  b->slot_mapping.resize(n);
  b->logit_rows.clear();
  for (int32_t i = 0; i < n; ++i) {
    const int32_t e = entry + i;
    b->positions[i] = view.PositionOf(e);
    b->slot_mapping[i] = blocks[e / block_size] * block_size + e % block_size;
    if (all_rows) b->logit_rows.push_back(i);
  }
  b->q_start = {0, n};
  b->kv_len = {entry + n};
  b->block_tables = blocks;
  b->max_blocks_per_seq = static_cast<int32_t>(blocks.size());
}

// For each (layer, head) row of scores [rows][total], the budget highest-scoring entries
// (ties to the later entry), ascending, into keep [rows][budget].
void SelectTop(const std::vector<float>& scores, int32_t rows, int32_t total, int32_t budget,
               std::vector<int32_t>* keep) {
  keep->resize(static_cast<size_t>(rows) * budget);
  std::vector<int32_t> order(total);
  for (int32_t r = 0; r < rows; ++r) {
    const float* s = scores.data() + static_cast<int64_t>(r) * total;
    std::iota(order.begin(), order.end(), 0);
    std::nth_element(order.begin(), order.begin() + (budget - 1), order.end(),
                     [s](int32_t a, int32_t b) { return s[a] != s[b] ? s[a] > s[b] : a > b; });
    std::sort(order.begin(), order.begin() + budget);
    std::copy(order.begin(), order.begin() + budget,
              keep->begin() + static_cast<int64_t>(r) * budget);
  }
}

}  // namespace

int32_t CompressBlocksNeeded(const CompressOptions& options, int32_t query_tokens,
                             int32_t block_size) {
  const int64_t entries = int64_t{options.budget_tokens} + options.block_tokens +
                          (options.method == KeepMethod::kEpisode ? query_tokens : 0);
  return static_cast<int32_t>((entries + block_size - 1) / block_size);
}

Status EpisodeCompressor::ForwardAt(std::span<const int32_t> tokens, int32_t entry,
                                    int32_t first_position, const std::vector<int32_t>& blocks,
                                    int32_t num_scored, std::vector<float>* scores) {
  LayoutBatch(tokens, entry, KvView{entry, first_position}, blocks, backend_->kv_shape().block_size,
              /*all_rows=*/false, &batch_);
  if (scores != nullptr) return backend_->ForwardScored(batch_, num_scored, &logits_, scores);
  return backend_->Forward(batch_, &logits_);
}

Result<EpisodeCache> EpisodeCompressor::Build(std::span<const int32_t> history,
                                              std::span<const int32_t> query,
                                              const CompressOptions& options,
                                              std::vector<int32_t> blocks, EpisodeCacheId id) {
  const KvPoolShape& shape = backend_->kv_shape();
  const bool episodic = options.method == KeepMethod::kEpisode;
  const int32_t q = episodic ? static_cast<int32_t>(query.size()) : 0;
  if (history.empty()) return Status::InvalidArgument("compress: empty history");
  if (episodic && query.empty()) return Status::InvalidArgument("compress: empty episode prompt");
  if (options.budget_tokens < 1 || options.block_tokens < 1 || options.snap_window < 1 ||
      options.sink_tokens < 0) {
    return Status::InvalidArgument("compress: budget, block and snap window must be positive");
  }
  const int32_t needed = CompressBlocksNeeded(options, q, shape.block_size);
  if (static_cast<int32_t>(blocks.size()) < needed) {
    return Status::InvalidArgument("compress: " + std::to_string(blocks.size()) +
                                   " blocks given, " + std::to_string(needed) + " needed");
  }
  const int32_t rows = shape.num_layers * shape.num_kv_heads;
  const int32_t cap = needed * shape.block_size;
  const int32_t budget = options.budget_tokens;
  std::vector<int32_t> pos(static_cast<size_t>(rows) * cap);  // [rows][cap]
  std::vector<float> scores;
  std::vector<int32_t> keep;
  EpisodeCache cache;
  cache.id = id;
  int32_t count = 0;  // live entries
  const int32_t n = static_cast<int32_t>(history.size());
  for (int32_t s = 0; s < n; s += options.block_tokens) {
    const int32_t b = std::min(options.block_tokens, n - s);
    const int32_t total = count + b;
    for (int32_t r = 0; r < rows; ++r) {
      std::iota(pos.begin() + int64_t{r} * cap + count, pos.begin() + int64_t{r} * cap + total, s);
    }
    const bool evict = total > budget;
    cache.peak_entries = std::max<int64_t>(cache.peak_entries, total + (evict ? q : 0));
    std::span<const int32_t> block = history.subspan(s, b);
    if (!evict || options.method == KeepMethod::kStreaming) {
      RETURN_IF_ERROR(ForwardAt(block, count, s, blocks, 0, nullptr));
    } else if (episodic) {
      RETURN_IF_ERROR(ForwardAt(block, count, s, blocks, 0, nullptr));
      RETURN_IF_ERROR(ForwardAt(query, total, s + b, blocks, total, &scores));
    } else {  // kSnapKv: the block's last window scores everything; the window is kept
      const int32_t w = std::min(options.snap_window, b);
      if (b > w) RETURN_IF_ERROR(ForwardAt(block.first(b - w), count, s, blocks, 0, nullptr));
      RETURN_IF_ERROR(ForwardAt(block.last(w), total - w, s + b - w, blocks, total, &scores));
      for (int32_t r = 0; r < rows; ++r) {
        std::fill_n(scores.begin() + int64_t{r} * total + (total - w), w, 2.0f);
      }
    }
    if (!evict) {
      count = total;
      continue;
    }
    if (options.method == KeepMethod::kStreaming) {
      scores.resize(static_cast<size_t>(rows) * total);
      for (int32_t r = 0; r < rows; ++r) {
        for (int32_t j = 0; j < total; ++j) {
          scores[int64_t{r} * total + j] =
              j < options.sink_tokens ? 2.0f : static_cast<float>(j) / total;
        }
      }
    }
    SelectTop(scores, rows, total, budget, &keep);
    RETURN_IF_ERROR(backend_->CompactKv(blocks, total, keep, budget));
    for (int32_t r = 0; r < rows; ++r) {
      int32_t* p = pos.data() + int64_t{r} * cap;
      const int32_t* k = keep.data() + int64_t{r} * budget;
      for (int32_t i = 0; i < budget; ++i) p[i] = p[k[i]];  // k[i] >= i: safe in place
    }
    count = budget;
  }
  cache.num_kept = count;
  cache.history_tokens = n;
  cache.positions.resize(static_cast<size_t>(rows) * count);
  for (int32_t r = 0; r < rows; ++r) {
    std::copy_n(pos.begin() + int64_t{r} * cap, count,
                cache.positions.begin() + int64_t{r} * count);
  }
  cache.blocks = std::move(blocks);
  return cache;
}

Status EpisodeDecoder::Append(std::span<const int32_t> tokens, bool last_only,
                              std::vector<float>* logits) {
  const int32_t bs = backend_->kv_shape().block_size;
  const int64_t capacity = static_cast<int64_t>(cache_.blocks.size()) * bs;
  if (tokens.empty()) return Status::InvalidArgument("episode decode: no tokens");
  if (num_entries_ + static_cast<int64_t>(tokens.size()) > capacity) {
    return Status::ResourceExhausted("episode decode: " + std::to_string(tokens.size()) +
                                     " tokens do not fit on top of the cache's blocks");
  }
  LayoutBatch(tokens, num_entries_, cache_.view(), cache_.blocks, bs, !last_only, &batch_);
  if (last_only) batch_.logit_rows = {static_cast<int32_t>(tokens.size()) - 1};
  RETURN_IF_ERROR(backend_->Forward(batch_, logits));
  num_entries_ += static_cast<int32_t>(tokens.size());
  return Status::OK();
}

Result<std::vector<int32_t>> EpisodeDecoder::Generate(std::span<const int32_t> message,
                                                      int32_t max_new_tokens,
                                                      std::span<const int32_t> stop_ids) {
  std::vector<int32_t> out;
  std::vector<float> logits;
  RETURN_IF_ERROR(Append(message, /*last_only=*/true, &logits));
  while (static_cast<int32_t>(out.size()) < max_new_tokens) {
    const int32_t next =
        static_cast<int32_t>(std::max_element(logits.begin(), logits.end()) - logits.begin());
    out.push_back(next);
    if (std::find(stop_ids.begin(), stop_ids.end(), next) != stop_ids.end()) break;
    if (static_cast<int32_t>(out.size()) == max_new_tokens) break;
    RETURN_IF_ERROR(Append(std::span<const int32_t>(&next, 1), true, &logits));
  }
  return out;
}

}  // namespace kvkeep
