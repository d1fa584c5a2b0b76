#include "engine/episode_cache.h"

#include <algorithm>
#include <numeric>
#include <string>

namespace kvkeep {
namespace {

// Fills the step's token layout: tokens at entries entry.. with the given positions; layer
// l's tokens sit trims[l] entries earlier (empty: none).
void LayoutBatch(std::span<const int32_t> tokens, int32_t entry, const KvView& view,
                 const std::vector<int32_t>& blocks, int32_t block_size, bool all_rows,
                 std::span<const int32_t> trims, ForwardBatch* b) {
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
  b->layer_kv_trim.assign(trims.begin(), trims.end());
}

// For each of `rows` rows of scores (row r at scores + r * stride, `total` entries), the
// budget highest-scoring entries (ties to the later entry), ascending, appended to *keep.
void SelectTop(const float* scores, int32_t rows, int64_t stride, int32_t total, int32_t budget,
               std::vector<int32_t>* keep) {
  std::vector<int32_t> order(total);
  for (int32_t r = 0; r < rows; ++r) {
    const float* s = scores + r * stride;
    std::iota(order.begin(), order.end(), 0);
    std::nth_element(order.begin(), order.begin() + (budget - 1), order.end(),
                     [s](int32_t a, int32_t b) { return s[a] != s[b] ? s[a] > s[b] : a > b; });
    std::sort(order.begin(), order.begin() + budget);
    keep->insert(keep->end(), order.begin(), order.begin() + budget);
  }
}

// Each of row's first n scores becomes the largest within kernel / 2 entries either side
// (SnapKV's max-pooling); tmp is scratch.
void MaxPool(float* row, int32_t n, int32_t kernel, std::vector<float>* tmp) {
  const int32_t r = kernel / 2;
  tmp->assign(row, row + n);
  for (int32_t j = 0; j < n; ++j) {
    row[j] =
        *std::max_element(tmp->begin() + std::max(0, j - r), tmp->begin() + std::min(n, j + r + 1));
  }
}

// Per layer trims: max(counts) - counts[l]; empty when every layer holds the same count.
void TrimsOf(const std::vector<int32_t>& counts, std::vector<int32_t>* trims) {
  const int32_t top = *std::max_element(counts.begin(), counts.end());
  trims->clear();
  if (std::all_of(counts.begin(), counts.end(), [top](int32_t c) { return c == top; })) return;
  for (int32_t c : counts) trims->push_back(top - c);
}

}  // namespace

std::span<const int32_t> EpisodeCache::PositionsOf(int layer, int head, int num_kv_heads) const {
  int64_t offset = 0;
  for (int l = 0; l < layer; ++l) offset += int64_t{num_kv_heads} * KeptIn(l);
  offset += int64_t{head} * KeptIn(layer);
  return std::span<const int32_t>(positions).subspan(offset, KeptIn(layer));
}

int32_t CompressBlocksNeeded(const CompressOptions& options, int32_t query_tokens,
                             int32_t block_size) {
  int64_t budget = options.budget_tokens;
  if (!options.layer_budget_tokens.empty()) {
    budget =
        *std::max_element(options.layer_budget_tokens.begin(), options.layer_budget_tokens.end());
  }
  const int64_t entries =
      budget + options.block_tokens + (options.method == KeepMethod::kEpisode ? query_tokens : 0);
  return static_cast<int32_t>((entries + block_size - 1) / block_size);
}

Status EpisodeCompressor::ForwardAt(std::span<const int32_t> tokens, int32_t entry,
                                    int32_t first_position, std::span<const int32_t> trims,
                                    int32_t num_scored, std::vector<float>* scores) {
  LayoutBatch(tokens, entry, KvView{entry, first_position}, blocks_,
              backend_->kv_shape().block_size, /*all_rows=*/false, trims, &batch_);
  forwarded_tokens_ += static_cast<int64_t>(tokens.size());
  if (scores != nullptr) return backend_->ForwardScored(batch_, num_scored, &logits_, scores);
  return backend_->Forward(batch_, &logits_);
}

Result<EpisodeCache> EpisodeCompressor::Build(std::span<const int32_t> history,
                                              std::span<const int32_t> query,
                                              const CompressOptions& options,
                                              std::vector<int32_t> blocks, EpisodeCacheId id) {
  RETURN_IF_ERROR(Start(history, query, options, std::move(blocks), id));
  while (!done()) RETURN_IF_ERROR(Advance());
  return TakeCache();
}

Status EpisodeCompressor::Start(std::span<const int32_t> history, std::span<const int32_t> query,
                                const CompressOptions& options, std::vector<int32_t> blocks,
                                EpisodeCacheId id) {
  const KvPoolShape& shape = backend_->kv_shape();
  const bool episodic = options.method == KeepMethod::kEpisode;
  const int32_t q = episodic ? static_cast<int32_t>(query.size()) : 0;
  const int32_t layers = shape.num_layers, heads = shape.num_kv_heads;
  if (history.empty()) return Status::InvalidArgument("compress: empty history");
  if (episodic && query.empty()) return Status::InvalidArgument("compress: empty episode prompt");
  std::vector<int32_t> budget = options.layer_budget_tokens;  // M_l
  if (budget.empty()) budget.assign(layers, options.budget_tokens);
  if (static_cast<int32_t>(budget.size()) != layers) {
    return Status::InvalidArgument("compress: " + std::to_string(budget.size()) +
                                   " layer budgets for " + std::to_string(layers) + " layers");
  }
  if (*std::min_element(budget.begin(), budget.end()) < 1 || options.block_tokens < 1 ||
      options.snap_window < 1 || options.sink_tokens < 0 || options.step_tokens < 0 ||
      options.recent_tokens < 0 || options.pool_kernel < 1 || options.pool_kernel % 2 == 0) {
    return Status::InvalidArgument(
        "compress: budget, block and snap window must be positive, the pool kernel odd");
  }
  const int32_t needed = CompressBlocksNeeded(options, q, shape.block_size);
  if (static_cast<int32_t>(blocks.size()) < needed) {
    return Status::InvalidArgument("compress: " + std::to_string(blocks.size()) +
                                   " blocks given, " + std::to_string(needed) + " needed");
  }
  options_ = options;
  history_.assign(history.begin(), history.end());
  query_.assign(query.begin(), query.begin() + q);
  blocks_ = std::move(blocks);
  budget_ = std::move(budget);
  cap_ = needed * shape.block_size;
  pos_.assign(static_cast<size_t>(layers) * heads * cap_, 0);
  count_.assign(layers, 0);
  totals_.assign(layers, 0);
  kept_.assign(layers, 0);
  cache_ = EpisodeCache{};
  cache_.id = id;
  next_block_ = 0;
  in_block_ = false;
  steps_ = 0;
  return Status::OK();
}

void EpisodeCompressor::BeginBlock() {
  const KvPoolShape& shape = backend_->kv_shape();
  const int32_t layers = shape.num_layers, heads = shape.num_kv_heads;
  const int32_t s = next_block_;
  const int32_t b = std::min(options_.block_tokens, static_cast<int32_t>(history_.size()) - s);
  top_ = *std::max_element(count_.begin(), count_.end());
  total_ = top_ + b;  // entries of the fullest layer: the block's layout
  evict_ = false;
  for (int32_t l = 0; l < layers; ++l) {
    totals_[l] = count_[l] + b;
    evict_ = evict_ || totals_[l] > budget_[l];
    for (int32_t h = 0; h < heads; ++h) {
      int32_t* p = pos_.data() + int64_t{l * heads + h} * cap_;
      std::iota(p + count_[l], p + totals_[l], s);
    }
  }
  TrimsOf(count_, &trims_);
  const int32_t q = static_cast<int32_t>(query_.size());
  cache_.peak_entries = std::max<int64_t>(cache_.peak_entries, total_ + (evict_ ? q : 0));
  // kSnapKv scores with the block's last window, forwarded in the scoring step.
  const int32_t w = std::min(options_.snap_window, b);
  plain_ = evict_ && options_.method == KeepMethod::kSnapKv ? b - w : b;
  block_start_ = s;
  block_len_ = b;
  prefilled_ = 0;
  scored_ = 0;
  in_block_ = true;
  next_block_ = s + b;
}

int32_t EpisodeCompressor::NextStepTokens() const {
  int32_t plain = plain_, prefilled = prefilled_, block = block_len_;
  if (!in_block_) {  // as BeginBlock will lay it out
    block = std::min(options_.block_tokens, static_cast<int32_t>(history_.size()) - next_block_);
    bool evict = false;
    for (size_t l = 0; l < count_.size(); ++l) evict = evict || count_[l] + block > budget_[l];
    plain = evict && options_.method == KeepMethod::kSnapKv
                ? block - std::min(options_.snap_window, block)
                : block;
    prefilled = 0;
  }
  if (prefilled < plain) {
    return options_.step_tokens > 0 ? std::min(options_.step_tokens, plain - prefilled)
                                    : plain - prefilled;
  }
  switch (options_.method) {
    case KeepMethod::kEpisode:
      return static_cast<int32_t>(query_.size()) - (in_block_ ? scored_ : 0);
    case KeepMethod::kSnapKv:
      return block - plain;
    case KeepMethod::kStreaming:
      return 0;
  }
  return 0;
}

Status EpisodeCompressor::Advance(int32_t max_tokens) {
  ++steps_;
  if (!in_block_) BeginBlock();
  max_tokens = std::max(max_tokens, 1);
  if (prefilled_ < plain_) {  // a prefill run of the block
    const int32_t step = options_.step_tokens > 0 ? options_.step_tokens : plain_ - prefilled_;
    const int32_t n = std::min({step, max_tokens, plain_ - prefilled_});
    std::span<const int32_t> run(history_.data() + block_start_ + prefilled_, n);
    RETURN_IF_ERROR(
        ForwardAt(run, top_ + prefilled_, block_start_ + prefilled_, trims_, 0, nullptr));
    prefilled_ += n;
    if (prefilled_ < plain_ || evict_) return Status::OK();  // scoring is a step of its own
    EndBlock(totals_);
    return Status::OK();
  }
  bool scored = false;
  RETURN_IF_ERROR(ScoreAndCompact(max_tokens, &scored));
  if (scored) EndBlock(kept_);
  return Status::OK();
}

Status EpisodeCompressor::ScoreAndCompact(int32_t max_tokens, bool* done) {
  const KvPoolShape& shape = backend_->kv_shape();
  const int32_t layers = shape.num_layers, heads = shape.num_kv_heads;
  const int32_t s = block_start_, b = block_len_, total = total_;
  std::span<const int32_t> block(history_.data() + s, b);
  *done = false;
  if (options_.method == KeepMethod::kEpisode) {  // P_e in runs; each entry's largest score
    const int32_t q = static_cast<int32_t>(query_.size());
    const int32_t n = std::min(max_tokens, q - scored_);
    std::span<const int32_t> run(query_.data() + scored_, n);
    RETURN_IF_ERROR(ForwardAt(run, total + scored_, s + b + scored_, trims_, total,
                              scored_ == 0 ? &scores_ : &run_scores_));
    if (scored_ > 0) {
      for (size_t i = 0; i < scores_.size(); ++i) scores_[i] = std::max(scores_[i], run_scores_[i]);
    }
    scored_ += n;
    if (scored_ < q) return Status::OK();               // the next run is a step of its own
  } else if (options_.method == KeepMethod::kSnapKv) {  // the window is always kept
    const int32_t w = b - plain_;
    RETURN_IF_ERROR(ForwardAt(block.last(w), total - w, s + b - w, trims_, total, &scores_));
  } else {  // kStreaming: the sinks, then the most recent
    scores_.assign(static_cast<size_t>(layers) * heads * total, 0.0f);
    for (int32_t l = 0; l < layers; ++l) {
      for (int32_t h = 0; h < heads; ++h) {
        float* row = scores_.data() + int64_t{l * heads + h} * total;
        for (int32_t j = 0; j < totals_[l]; ++j) {
          row[j] = j < options_.sink_tokens ? 2.0f : static_cast<float>(j) / totals_[l];
        }
      }
    }
  }
  if (options_.method != KeepMethod::kStreaming) ReserveAndPool();
  keep_.clear();
  for (int32_t l = 0; l < layers; ++l) {  // layer l's rows of scores: stride `total`
    kept_[l] = std::min(budget_[l], totals_[l]);
    SelectTop(scores_.data() + int64_t{l} * heads * total, heads, total, totals_[l], kept_[l],
              &keep_);
  }
  RETURN_IF_ERROR(backend_->CompactKvLayers(blocks_, totals_, keep_, kept_));
  *done = true;
  const int32_t* k = keep_.data();
  for (int32_t l = 0; l < layers; ++l) {
    for (int32_t h = 0; h < heads; ++h, k += kept_[l]) {
      int32_t* p = pos_.data() + int64_t{l * heads + h} * cap_;
      for (int32_t i = 0; i < kept_[l]; ++i) p[i] = p[k[i]];  // k[i] >= i: safe in place
    }
  }
  return Status::OK();
}

void EpisodeCompressor::ReserveAndPool() {
  const KvPoolShape& shape = backend_->kv_shape();
  const int32_t layers = shape.num_layers, heads = shape.num_kv_heads, total = total_;
  const bool episodic = options_.method == KeepMethod::kEpisode;
  // Kept whatever the score: SnapKV's window; kEpisode's sinks and recent entries.
  const int32_t recent = episodic ? options_.recent_tokens : block_len_ - plain_;
  const int32_t sinks = episodic && options_.reserve_sinks ? options_.sink_tokens : 0;
  for (int32_t l = 0; l < layers; ++l) {
    const int32_t n = totals_[l];
    for (int32_t h = 0; h < heads; ++h) {
      float* row = scores_.data() + int64_t{l * heads + h} * total;
      if (options_.pool_kernel > 1) MaxPool(row, n, options_.pool_kernel, &pooled_);
      std::fill(row + std::max(0, n - recent), row + n, 2.0f);
      std::fill(row, row + std::min(sinks, n), 2.0f);
    }
  }
}

void EpisodeCompressor::EndBlock(const std::vector<int32_t>& counts) {
  count_ = counts;
  in_block_ = false;
}

EpisodeCache EpisodeCompressor::TakeCache() {
  const KvPoolShape& shape = backend_->kv_shape();
  const int32_t layers = shape.num_layers, heads = shape.num_kv_heads;
  EpisodeCache cache = std::move(cache_);
  cache.num_kept = *std::max_element(count_.begin(), count_.end());
  TrimsOf(count_, &trims_);
  if (!trims_.empty()) cache.layer_kept = count_;
  cache.history_tokens = static_cast<int32_t>(history_.size());
  for (int32_t l = 0; l < layers; ++l) {
    for (int32_t h = 0; h < heads; ++h) {
      const int32_t* p = pos_.data() + int64_t{l * heads + h} * cap_;
      cache.positions.insert(cache.positions.end(), p, p + count_[l]);
    }
  }
  cache.blocks = std::move(blocks_);
  return cache;
}

EpisodeDecoder::EpisodeDecoder(Backend* backend, const EpisodeCache& cache)
    : backend_(backend), cache_(cache), num_entries_(cache.num_kept) {
  for (size_t l = 0; l < cache.layer_kept.size(); ++l) {
    trims_.push_back(cache.num_kept - cache.layer_kept[l]);
  }
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
  LayoutBatch(tokens, num_entries_, cache_.view(), cache_.blocks, bs, !last_only, trims_, &batch_);
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
