// Attention scoring on the CPU reference: how much attention a block of query tokens pays
// each cached token, the signal EpiCache and SnapKV use to choose which KV to keep.
//
// For one sequence whose new tokens (the queries, e.g. an episode's medoid prompt) sit at
// the end of its context and attend causally as in PagedAttention, the output is, per KV
// head h and cached entry j < num_scored,
//   score[h][j] = max over query tokens t and query heads g of h's GQA group of
//                 softmax_j(scale * q[t][g] . k[j])
// where the softmax runs over everything query t sees (the whole causal context, queries
// included), so a score is a probability in [0, 1].
//
// Thread-safety: calls share no state; each call uses the calling thread's OpenMP team.
#pragma once

#include <cstdint>

#include "base/bf16.h"
#include "base/status.h"
#include "kernels/paged_kv.h"

namespace kvkeep::cpu {

// q: [n_new][num_q_heads][head_dim] (as PagedAttention takes it, before scaling);
// scores: [num_kv_heads][num_scored]. InvalidArgument unless batch.num_seqs == 1,
// 0 <= num_scored <= kv_len and the batch is valid for PagedAttention.
template <typename KvT>
Status AttentionScores(const AttentionParams& params, const AttentionBatch& batch,
                       const PagedKv<KvT>& kv, const float* q, int32_t num_scored, float* scores);

}  // namespace kvkeep::cpu
