#include "engine/model_runner.h"

#include <algorithm>

namespace kvkeep {

void BuildForwardBatch(const ScheduledBatch& batch, ForwardBatch* out) {
  out->token_ids.clear();
  out->positions.clear();
  out->slot_mapping.clear();
  out->q_start.assign(1, 0);
  out->kv_len.clear();
  out->logit_rows.clear();
  int32_t max_blocks = 1;
  for (const ScheduledSeq& s : batch.seqs) {
    max_blocks = std::max(max_blocks, s.seq->table.num_blocks());
  }
  out->max_blocks_per_seq = max_blocks;
  out->block_tables.assign(batch.seqs.size() * max_blocks, 0);
  for (size_t i = 0; i < batch.seqs.size(); ++i) {
    const Sequence& seq = *batch.seqs[i].seq;
    const int64_t start = seq.num_computed();
    const int64_t end = start + batch.seqs[i].num_new_tokens;
    for (int64_t p = start; p < end; ++p) {
      out->token_ids.push_back(seq.tokens[p]);
      out->positions.push_back(seq.kv_view.PositionOf(p));
      out->slot_mapping.push_back(seq.table.Slot(p));
    }
    out->q_start.push_back(static_cast<int32_t>(out->token_ids.size()));
    out->kv_len.push_back(static_cast<int32_t>(end));
    std::span<const int32_t> ids = seq.table.block_ids();
    std::copy(ids.begin(), ids.end(), out->block_tables.begin() + i * max_blocks);
    if (batch.seqs[i].sample) out->logit_rows.push_back(out->q_start.back() - 1);
  }
  // Per-layer kept counts (a cache built with per-layer budgets): each layer's trim.
  out->layer_kv_trim.clear();
  size_t num_layers = 0;
  for (const ScheduledSeq& s : batch.seqs) {
    num_layers = std::max(num_layers, s.seq->kv_view.layer_kept.size());
  }
  if (num_layers == 0) return;
  const size_t n = batch.seqs.size();
  out->layer_kv_trim.assign(num_layers * n, 0);
  for (size_t i = 0; i < n; ++i) {
    const KvView& view = batch.seqs[i].seq->kv_view;
    if (view.layer_kept.empty()) continue;
    for (size_t l = 0; l < num_layers; ++l) {
      out->layer_kv_trim[l * n + i] = view.LayerTrim(static_cast<int>(l));
    }
  }
}

Status ModelRunner::Run(const ScheduledBatch& batch) {
  if (!batch.copies.empty()) RETURN_IF_ERROR(backend_->CopyBlocks(batch.copies));
  BuildForwardBatch(batch, &forward_);
  return backend_->Forward(forward_, &logits_);
}

}  // namespace kvkeep
