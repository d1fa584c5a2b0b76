#include "kernels/cpu/attention.h"

#include <fmt/format.h>
#include <omp.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <type_traits>
#include <vector>

#include "kernels/softmax_state.h"

namespace kvkeep::cpu {
namespace {

// How the work is cut. A tile is the query rows of a few new tokens of one sequence for
// every query head of one KV head, so each K/V row is read (and converted from bf16) once
// for the whole GQA group and for every token of the tile.
constexpr int kTargetRowsPerTile = 32;
// When there are fewer tiles than threads (decode with a small batch), a tile's context
// is split into chunks of at least this many positions, merged afterwards (flash-decoding).
constexpr int kMinSplitPositions = 256;

struct Tile {
  int32_t seq = 0;
  int32_t kv_head = 0;
  int32_t tok_begin = 0;  // new tokens [tok_begin, tok_end) of the sequence
  int32_t tok_end = 0;
  int32_t num_blocks = 0;  // context blocks visible to the tile's last token
  int32_t num_splits = 1;
  int64_t partial_row = -1;  // first row in the partials buffer when num_splits > 1
};

// One unit of parallel work: a tile over the context blocks [blk_begin, blk_end).
struct WorkItem {
  int32_t tile = 0;
  int32_t split = 0;
  int32_t blk_begin = 0;
  int32_t blk_end = 0;
};

template <typename KvT>
struct Problem {
  const AttentionParams* params;
  const AttentionBatch* batch;
  const PagedKv<KvT>* kv;
  const float* q;
  float* out;
  int32_t group;       // query heads per KV head
  int64_t row_floats;  // head_dim + 2: a partial row holds o, m and d
};

// Per-thread scratch, reused across calls (OpenMP threads persist).
struct Scratch {
  std::vector<float> q;             // [rows][head_dim], scaled queries
  std::vector<float> o;             // [rows][head_dim], unnormalised outputs
  std::vector<SoftmaxState> state;  // [rows]
  std::vector<float> scores;        // [block_size]
  std::vector<float> k;             // [block_size][head_dim], fp32 copy of a bf16 block
  std::vector<float> v;
};

// Validation is O(num_seqs + blocks): it checks every index the kernel will follow, so
// a bad batch is an InvalidArgument and never an out-of-bounds read. Block ids are checked
// against the pool's size when PagedKv carries it (num_blocks > 0).
template <typename KvT>
Status ValidateKv(const PagedKv<KvT>& kv) {
  if (kv.head_dim < 1 || kv.head_dim > kMaxHeadDim) {
    return Status::InvalidArgument(
        fmt::format("attention: head_dim {} not in [1, {}]", kv.head_dim, kMaxHeadDim));
  }
  if (kv.num_kv_heads < 1 || kv.block_size < 1) {
    return Status::InvalidArgument(
        fmt::format("attention: num_kv_heads {} and block_size {} must be positive",
                    kv.num_kv_heads, kv.block_size));
  }
  if (kv.block_stride < int64_t{kv.num_kv_heads} * kv.block_size * kv.head_dim) {
    return Status::InvalidArgument(
        fmt::format("attention: block_stride {} is smaller than one block's K", kv.block_stride));
  }
  if (kv.k == nullptr || kv.v == nullptr)
    return Status::InvalidArgument("attention: null K/V pool");
  return Status::OK();
}

Status ValidateBatch(const AttentionParams& params, const AttentionBatch& batch,
                     int32_t num_kv_heads, int32_t block_size, int32_t pool_blocks,
                     bool is_decode) {
  if (params.num_q_heads < 1 || params.num_q_heads % num_kv_heads != 0) {
    return Status::InvalidArgument(
        fmt::format("attention: num_q_heads {} is not a positive multiple of num_kv_heads {}",
                    params.num_q_heads, num_kv_heads));
  }
  if (batch.num_seqs < 0) return Status::InvalidArgument("attention: negative num_seqs");
  if (batch.num_seqs == 0) return Status::OK();
  if (batch.q_start == nullptr || batch.kv_len == nullptr || batch.block_tables == nullptr) {
    return Status::InvalidArgument("attention: null q_start, kv_len or block_tables");
  }
  if (batch.q_start[0] != 0) return Status::InvalidArgument("attention: q_start[0] != 0");
  if (batch.max_blocks_per_seq < 0) {
    return Status::InvalidArgument("attention: negative max_blocks_per_seq");
  }
  const int64_t max_context = int64_t{batch.max_blocks_per_seq} * block_size;
  for (int32_t i = 0; i < batch.num_seqs; ++i) {
    const int32_t n_new = batch.q_start[i + 1] - batch.q_start[i];
    if (n_new < 0) {
      return Status::InvalidArgument(fmt::format("attention: q_start decreases at sequence {}", i));
    }
    if (is_decode && n_new != 1) {
      return Status::InvalidArgument(
          fmt::format("decode attention: sequence {} has {} query tokens, not 1", i, n_new));
    }
    const int32_t kv_len = batch.kv_len[i];
    if (kv_len < n_new || kv_len > max_context) {
      return Status::InvalidArgument(
          fmt::format("attention: sequence {} has kv_len {} outside [n_new {}, {}]", i, kv_len,
                      n_new, max_context));
    }
    const int32_t* table = batch.block_tables + int64_t{i} * batch.max_blocks_per_seq;
    const int32_t num_blocks = (kv_len + block_size - 1) / block_size;
    for (int32_t b = 0; b < num_blocks; ++b) {
      if (table[b] < 0 || (pool_blocks > 0 && table[b] >= pool_blocks)) {
        return Status::InvalidArgument(
            fmt::format("attention: sequence {} block {} has id {}", i, b, table[b]));
      }
    }
  }
  return Status::OK();
}

// Cloned per ISA, except under TSan: its instrumentation of the ifunc resolver runs while
// the dynamic loader relocates, before TSan's runtime starts, and crashes every binary.
#if defined(__SANITIZE_THREAD__)
#define KVKEEP_CLONE_PER_ISA
#else
#define KVKEEP_CLONE_PER_ISA __attribute__((target_clones("avx512f", "avx2", "default")))
#endif

inline const float* RowsAsFloat(const float* src, int64_t n, float* /*buf*/) { return src; }

// Widens a block of bf16 rows once; every query row of the tile then reads fp32.
KVKEEP_CLONE_PER_ISA const float* RowsAsFloat(const bf16* src, int64_t n, float* buf) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) buf[i] = std::bit_cast<float>(uint32_t{src[i].bits} << 16);
  return buf;
}

// Scores of four keys at once: four independent accumulator chains keep the FMA units
// busy where one dot product would wait on its own latency.
inline void Dot4(const float* q, const float* k, int d, float* out) {
  const float* k0 = k;
  const float* k1 = k + d;
  const float* k2 = k + 2 * d;
  const float* k3 = k + 3 * d;
  float s0 = 0.0f, s1 = 0.0f, s2 = 0.0f, s3 = 0.0f;
#pragma omp simd reduction(+ : s0, s1, s2, s3)
  for (int x = 0; x < d; ++x) {
    s0 += q[x] * k0[x];
    s1 += q[x] * k1[x];
    s2 += q[x] * k2[x];
    s3 += q[x] * k3[x];
  }
  out[0] = s0;
  out[1] = s1;
  out[2] = s2;
  out[3] = s3;
}

inline float Dot(const float* a, const float* b, int n) {
  float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
  for (int i = 0; i < n; ++i) sum += a[i] * b[i];
  return sum;
}

// Folds keys k[0..n) and values v[0..n) (rows of d floats) into one query row's state.
// Cloned per ISA: the dot products and axpys over head_dim are the whole cost.
KVKEEP_CLONE_PER_ISA void AttendBlock(const float* q, const float* k, const float* v, int n, int d,
                                      SoftmaxState* state, float* o, float* scores) {
  int j = 0;
  for (; j + 4 <= n; j += 4) Dot4(q, k + int64_t{j} * d, d, scores + j);
  for (; j < n; ++j) scores[j] = Dot(q, k + int64_t{j} * d, d);
  float block_max = -INFINITY;
  for (j = 0; j < n; ++j) block_max = std::max(block_max, scores[j]);
  const float alpha = state->Rescale(block_max);
  if (alpha != 1.0f) {
#pragma omp simd
    for (int x = 0; x < d; ++x) o[x] *= alpha;
  }
  for (j = 0; j < n; ++j) scores[j] = state->Add(scores[j]);  // now the weights p_j
  // o += sum_j p_j v_j, four value rows per pass over o.
  for (j = 0; j + 4 <= n; j += 4) {
    const float* v0 = v + int64_t{j} * d;
    const float p0 = scores[j], p1 = scores[j + 1], p2 = scores[j + 2], p3 = scores[j + 3];
#pragma omp simd
    for (int x = 0; x < d; ++x) {
      o[x] += p0 * v0[x] + p1 * v0[d + x] + p2 * v0[2 * d + x] + p3 * v0[3 * d + x];
    }
  }
  for (; j < n; ++j) {
    const float p = scores[j];
    const float* vj = v + int64_t{j} * d;
#pragma omp simd
    for (int x = 0; x < d; ++x) o[x] += p * vj[x];
  }
}

// Offset of (token, query head) in q/out.
inline int64_t RowOffset(int32_t token, int32_t q_head, int32_t num_q_heads, int32_t head_dim) {
  return (int64_t{token} * num_q_heads + q_head) * head_dim;
}

template <typename KvT>
void RunItem(const Problem<KvT>& p, const Tile& tile, const WorkItem& item, Scratch& s,
             float* partials) {
  const PagedKv<KvT>& kv = *p.kv;
  const AttentionBatch& batch = *p.batch;
  const int32_t d = kv.head_dim;
  const int32_t bs = kv.block_size;
  const int32_t nq = p.params->num_q_heads;
  const int32_t group = p.group;
  const int32_t q0 = batch.q_start[tile.seq];
  const int32_t n_new = batch.q_start[tile.seq + 1] - q0;
  const int32_t first_pos = batch.kv_len[tile.seq] - n_new;  // position of new token 0
  const int32_t num_tok = tile.tok_end - tile.tok_begin;
  const int32_t rows = num_tok * group;
  const int32_t head0 = tile.kv_head * group;

  s.q.resize(int64_t{rows} * d);
  s.o.assign(int64_t{rows} * d, 0.0f);
  s.state.assign(rows, SoftmaxState{});
  s.scores.resize(bs);
  if constexpr (!std::is_same_v<KvT, float>) {
    s.k.resize(int64_t{bs} * d);
    s.v.resize(int64_t{bs} * d);
  }
  const float scale = p.params->scale;
  for (int32_t t = 0; t < num_tok; ++t) {
    for (int32_t j = 0; j < group; ++j) {
      const float* src = p.q + RowOffset(q0 + tile.tok_begin + t, head0 + j, nq, d);
      float* dst = s.q.data() + int64_t{t * group + j} * d;
      for (int32_t x = 0; x < d; ++x) dst[x] = src[x] * scale;
    }
  }

  const int32_t* table = batch.block_tables + int64_t{tile.seq} * batch.max_blocks_per_seq;
  const int64_t head_offset = int64_t{tile.kv_head} * bs * d;
  for (int32_t blk = item.blk_begin; blk < item.blk_end; ++blk) {
    const int32_t j0 = blk * bs;
    const int32_t n = std::min(bs, first_pos + tile.tok_end - j0);
    if (n <= 0) break;
    const int64_t base = int64_t{table[blk]} * kv.block_stride + head_offset;
    const float* k = RowsAsFloat(kv.k + base, int64_t{n} * d, s.k.data());
    const float* v = RowsAsFloat(kv.v + base, int64_t{n} * d, s.v.data());
    for (int32_t t = 0; t < num_tok; ++t) {
      // Causal: token t sits at first_pos + tok_begin + t and sees keys up to it.
      const int32_t visible = std::min(n, first_pos + tile.tok_begin + t + 1 - j0);
      if (visible <= 0) continue;
      for (int32_t j = 0; j < group; ++j) {
        const int32_t r = t * group + j;
        AttendBlock(s.q.data() + int64_t{r} * d, k, v, visible, d, &s.state[r],
                    s.o.data() + int64_t{r} * d, s.scores.data());
      }
    }
  }

  for (int32_t r = 0; r < rows; ++r) {
    const float* o = s.o.data() + int64_t{r} * d;
    if (tile.num_splits == 1) {
      const int32_t t = r / group;
      float* dst = p.out + RowOffset(q0 + tile.tok_begin + t, head0 + r % group, nq, d);
      const float inv = s.state[r].OutputScale();
      for (int32_t x = 0; x < d; ++x) dst[x] = o[x] * inv;
    } else {
      float* dst = partials + (tile.partial_row + int64_t{item.split} * rows + r) * p.row_floats;
      std::copy(o, o + d, dst);
      dst[d] = s.state[r].m;
      dst[d + 1] = s.state[r].d;
    }
  }
}

// Merges the partial states of a split tile into out.
template <typename KvT>
void MergeTile(const Problem<KvT>& p, const Tile& tile, const float* partials,
               std::vector<float>& o) {
  const int32_t d = p.kv->head_dim;
  const int32_t nq = p.params->num_q_heads;
  const int32_t rows = (tile.tok_end - tile.tok_begin) * p.group;
  const int32_t q0 = p.batch->q_start[tile.seq];
  o.resize(d);
  for (int32_t r = 0; r < rows; ++r) {
    SoftmaxState state;
    std::fill(o.begin(), o.end(), 0.0f);
    for (int32_t split = 0; split < tile.num_splits; ++split) {
      const float* part = partials + (tile.partial_row + int64_t{split} * rows + r) * p.row_floats;
      const SoftmaxState::MergeScales f = state.Merge(SoftmaxState{part[d], part[d + 1]});
      for (int32_t x = 0; x < d; ++x) o[x] = o[x] * f.self + part[x] * f.other;
    }
    const int32_t t = r / p.group;
    float* dst =
        p.out + RowOffset(q0 + tile.tok_begin + t, tile.kv_head * p.group + r % p.group, nq, d);
    const float inv = state.OutputScale();
    for (int32_t x = 0; x < d; ++x) dst[x] = o[x] * inv;
  }
}

// Cuts the batch into tiles and work items. When there are fewer tiles than about two per
// thread, long contexts are split so that every thread gets work.
void Plan(const AttentionBatch& batch, int32_t num_kv_heads, int32_t group, int32_t block_size,
          int num_threads, std::vector<Tile>* tiles, std::vector<WorkItem>* items,
          int64_t* num_partial_rows) {
  const int32_t tile_tokens = std::max(1, kTargetRowsPerTile / group);
  for (int32_t i = 0; i < batch.num_seqs; ++i) {
    const int32_t n_new = batch.q_start[i + 1] - batch.q_start[i];
    const int32_t first_pos = batch.kv_len[i] - n_new;
    for (int32_t h = 0; h < num_kv_heads; ++h) {
      for (int32_t t = 0; t < n_new; t += tile_tokens) {
        Tile tile{
            .seq = i, .kv_head = h, .tok_begin = t, .tok_end = std::min(n_new, t + tile_tokens)};
        tile.num_blocks = (first_pos + tile.tok_end + block_size - 1) / block_size;
        tiles->push_back(tile);
      }
    }
  }
  const int64_t num_tiles = static_cast<int64_t>(tiles->size());
  const int64_t wanted_splits =
      num_tiles >= num_threads ? 1 : (2 * int64_t{num_threads} + num_tiles - 1) / num_tiles;
  *num_partial_rows = 0;
  for (int32_t ti = 0; ti < num_tiles; ++ti) {
    Tile& tile = (*tiles)[ti];
    const int64_t context = int64_t{tile.num_blocks} * block_size;
    const int64_t splits = std::clamp<int64_t>(
        std::min(wanted_splits, context / kMinSplitPositions), 1, tile.num_blocks);
    const int32_t per_split = static_cast<int32_t>((tile.num_blocks + splits - 1) / splits);
    tile.num_splits = (tile.num_blocks + per_split - 1) / per_split;
    if (tile.num_splits > 1) {
      tile.partial_row = *num_partial_rows;
      *num_partial_rows += int64_t{tile.num_splits} * (tile.tok_end - tile.tok_begin) * group;
    }
    for (int32_t split = 0; split < tile.num_splits; ++split) {
      items->push_back(WorkItem{.tile = ti,
                                .split = split,
                                .blk_begin = split * per_split,
                                .blk_end = std::min(tile.num_blocks, (split + 1) * per_split)});
    }
  }
  // Longest first, so dynamic scheduling ends with the short items (causal prefill tiles
  // and contexts of mixed lengths differ a lot in cost).
  std::stable_sort(items->begin(), items->end(), [&](const WorkItem& a, const WorkItem& b) {
    const Tile& ta = (*tiles)[a.tile];
    const Tile& tb = (*tiles)[b.tile];
    return int64_t{a.blk_end - a.blk_begin} * (ta.tok_end - ta.tok_begin) >
           int64_t{b.blk_end - b.blk_begin} * (tb.tok_end - tb.tok_begin);
  });
}

template <typename KvT>
Status Attention(const AttentionParams& params, const AttentionBatch& batch, const PagedKv<KvT>& kv,
                 const float* q, float* out, bool is_decode) {
  RETURN_IF_ERROR(ValidateKv(kv));
  RETURN_IF_ERROR(
      ValidateBatch(params, batch, kv.num_kv_heads, kv.block_size, kv.num_blocks, is_decode));
  if (batch.num_seqs == 0 || batch.q_start[batch.num_seqs] == 0) return Status::OK();
  if (q == nullptr || out == nullptr) return Status::InvalidArgument("attention: null q or out");

  Problem<KvT> p{.params = &params,
                 .batch = &batch,
                 .kv = &kv,
                 .q = q,
                 .out = out,
                 .group = params.num_q_heads / kv.num_kv_heads,
                 .row_floats = int64_t{kv.head_dim} + 2};
  std::vector<Tile> tiles;
  std::vector<WorkItem> items;
  int64_t num_partial_rows = 0;
  Plan(batch, kv.num_kv_heads, p.group, kv.block_size, omp_get_max_threads(), &tiles, &items,
       &num_partial_rows);
  std::vector<float> partials(num_partial_rows * p.row_floats);
  const int64_t num_items = static_cast<int64_t>(items.size());
#pragma omp parallel
  {
    thread_local Scratch scratch;
#pragma omp for schedule(dynamic, 1)
    for (int64_t i = 0; i < num_items; ++i) {
      RunItem(p, tiles[items[i].tile], items[i], scratch, partials.data());
    }
    if (num_partial_rows > 0) {
#pragma omp for schedule(dynamic, 1)
      for (int64_t t = 0; t < static_cast<int64_t>(tiles.size()); ++t) {
        if (tiles[t].num_splits > 1) MergeTile(p, tiles[t], partials.data(), scratch.o);
      }
    }
  }
  return Status::OK();
}

inline void StoreRow(const float* src, int32_t n, float* dst) { std::copy(src, src + n, dst); }

inline void StoreRow(const float* src, int32_t n, bf16* dst) {
  for (int32_t i = 0; i < n; ++i) dst[i] = FloatToBf16(src[i]);
}

}  // namespace

template <typename KvT>
Status PagedAttention(const AttentionParams& params, const AttentionBatch& batch,
                      const PagedKv<KvT>& kv, const float* q, float* out) {
  return Attention(params, batch, kv, q, out, /*is_decode=*/false);
}

template <typename KvT>
Status PagedDecodeAttention(const AttentionParams& params, const AttentionBatch& batch,
                            const PagedKv<KvT>& kv, const float* q, float* out) {
  return Attention(params, batch, kv, q, out, /*is_decode=*/true);
}

template <typename KvT>
Status WriteKv(const PagedKv<KvT>& kv, const float* k, const float* v, const int32_t* slot_mapping,
               int32_t num_tokens) {
  RETURN_IF_ERROR(ValidateKv(kv));
  if (num_tokens < 0) return Status::InvalidArgument("write_kv: negative num_tokens");
  if (num_tokens == 0) return Status::OK();
  if (k == nullptr || v == nullptr || slot_mapping == nullptr) {
    return Status::InvalidArgument("write_kv: null k, v or slot_mapping");
  }
  const int32_t d = kv.head_dim;
  const int32_t bs = kv.block_size;
  const int64_t token_floats = int64_t{kv.num_kv_heads} * d;
  if (kv.num_blocks > 0) {
    for (int32_t t = 0; t < num_tokens; ++t) {
      if (slot_mapping[t] >= int64_t{kv.num_blocks} * bs) {
        return Status::InvalidArgument(
            fmt::format("write_kv: token {} has slot {} beyond the pool", t, slot_mapping[t]));
      }
    }
  }
#pragma omp parallel for schedule(static) if (num_tokens * token_floats >= (1 << 16))
  for (int32_t t = 0; t < num_tokens; ++t) {
    const int32_t slot = slot_mapping[t];
    if (slot < 0) continue;
    const int64_t base = int64_t{slot / bs} * kv.block_stride + int64_t{slot % bs} * d;
    for (int32_t h = 0; h < kv.num_kv_heads; ++h) {
      const int64_t dst = base + int64_t{h} * bs * d;
      StoreRow(k + t * token_floats + int64_t{h} * d, d, kv.k + dst);
      StoreRow(v + t * token_floats + int64_t{h} * d, d, kv.v + dst);
    }
  }
  return Status::OK();
}

#define KVKEEP_INSTANTIATE_ATTENTION(T)                                                     \
  template Status PagedAttention<T>(const AttentionParams&, const AttentionBatch&,          \
                                    const PagedKv<T>&, const float*, float*);               \
  template Status PagedDecodeAttention<T>(const AttentionParams&, const AttentionBatch&,    \
                                          const PagedKv<T>&, const float*, float*);         \
  template Status WriteKv<T>(const PagedKv<T>&, const float*, const float*, const int32_t*, \
                             int32_t);
KVKEEP_INSTANTIATE_ATTENTION(float)
KVKEEP_INSTANTIATE_ATTENTION(bf16)
#undef KVKEEP_INSTANTIATE_ATTENTION

}  // namespace kvkeep::cpu
