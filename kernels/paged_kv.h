// The paged KV layout and the batch description shared by every attention kernel,
// CPU and CUDA alike. docs/kv_layout.md has the picture. Kernels know nothing about
// sessions or pools: they take raw pointers and these plain structs.
//
// Pool layout (one allocation per device, allocated once at start-up):
//   pool[num_blocks][num_layers][2 /*K,V*/][num_kv_heads][block_size][head_dim]
// Keys are stored after RoPE, so moving a block never re-rotates it.
// A "slot" is block_id * block_size + offset_in_block.
#pragma once

#include <cstdint>

namespace kvkeep {

struct KvPoolShape {
  int32_t num_blocks = 0;
  int32_t num_layers = 0;
  int32_t num_kv_heads = 0;
  int32_t block_size = 16;
  int32_t head_dim = 0;

  // Strides in elements.
  int64_t head_stride() const { return int64_t{block_size} * head_dim; }
  int64_t kv_stride() const { return num_kv_heads * head_stride(); }    // K -> V
  int64_t layer_stride() const { return 2 * kv_stride(); }              // layer l -> l+1
  int64_t block_stride() const { return num_layers * layer_stride(); }  // block b -> b+1
  int64_t total_elements() const { return int64_t{num_blocks} * block_stride(); }
};

// One layer's view of the pool. Element (block b, kv head h, slot s, dim d) of K is
//   k[b * block_stride + (h * block_size + s) * head_dim + d]
// and likewise for V. T is float or bf16 on the CPU, __nv_bfloat16 on CUDA.
template <typename T>
struct PagedKv {
  T* k = nullptr;  // K of block 0 of this layer: pool + layer * layer_stride
  T* v = nullptr;  // V of block 0 of this layer: k + kv_stride
  int64_t block_stride = 0;
  int32_t num_blocks = 0;  // blocks in the pool; kernels reject ids >= it (0: unchecked)
  int32_t num_kv_heads = 0;
  int32_t block_size = 16;
  int32_t head_dim = 0;
};

template <typename T>
PagedKv<T> LayerView(T* pool, const KvPoolShape& shape, int layer) {
  PagedKv<T> kv;
  kv.k = pool + layer * shape.layer_stride();
  kv.v = kv.k + shape.kv_stride();
  kv.block_stride = shape.block_stride();
  kv.num_blocks = shape.num_blocks;
  kv.num_kv_heads = shape.num_kv_heads;
  kv.block_size = shape.block_size;
  kv.head_dim = shape.head_dim;
  return kv;
}

// A varlen batch of sequences. Sequence i contributes the new query tokens
// [q_start[i], q_start[i+1]) of q/out; they sit at the end of its context, at positions
// kv_len[i] - n_new .. kv_len[i] - 1, and attend causally to all positions up to their own.
// Decode is the case n_new == 1; a prefill chunk has n_new > 1 over a cached prefix.
// The new tokens' K/V must already be in the pool (written by the KV-write kernel).
struct AttentionBatch {
  int32_t num_seqs = 0;
  const int32_t* q_start = nullptr;       // [num_seqs + 1], q_start[0] == 0
  const int32_t* kv_len = nullptr;        // [num_seqs], context incl. the new tokens
  const int32_t* block_tables = nullptr;  // [num_seqs][max_blocks_per_seq] physical block ids
  int32_t max_blocks_per_seq = 0;
};

// Queries and outputs of one layer, row-major fp32 on the CPU (bf16 on CUDA):
//   q[num_tokens][num_q_heads][head_dim], out the same. num_q_heads % num_kv_heads == 0;
//   query head h reads KV head h / (num_q_heads / num_kv_heads) (GQA).
struct AttentionParams {
  int32_t num_q_heads = 0;
  float scale = 1.0f;  // usually 1/sqrt(head_dim)
};

}  // namespace kvkeep
