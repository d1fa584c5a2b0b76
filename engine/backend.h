// Backend: runs the transformer over a batch on one device and owns that device's KV
// pool. The CPU backend is the exact reference; the CUDA backend implements the same
// interface and must match it within bf16 tolerance. Block ids come from cache/BlockPool,
// which only does bookkeeping; the bytes live here.
//
// Thread-safety: owned and called by the engine thread only.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "base/status.h"
#include "engine/model_config.h"
#include "kernels/paged_kv.h"

namespace kvkeep {

class ModelWeights;

// One forward step over a varlen batch that mixes prefill chunks and decode tokens.
// Sequence i owns tokens [q_start[i], q_start[i+1]); see kernels/paged_kv.h.
struct ForwardBatch {
  std::vector<int32_t> token_ids;     // [num_tokens]
  std::vector<int32_t> positions;     // [num_tokens]
  std::vector<int32_t> slot_mapping;  // [num_tokens] block_id * block_size + offset
  std::vector<int32_t> q_start;       // [num_seqs + 1]
  std::vector<int32_t> kv_len;        // [num_seqs] context incl. this step's tokens
  std::vector<int32_t> block_tables;  // [num_seqs][max_blocks_per_seq]
  int32_t max_blocks_per_seq = 0;
  // Token indexes whose logits are returned, in order (usually each sequence's last).
  std::vector<int32_t> logit_rows;
  // Per-layer budgets of a compressed cache (engine/episode_cache.h): empty, or
  // [num_layers][num_seqs]. Layer l of sequence i holds layer_kv_trim[l * num_seqs + i]
  // fewer restored entries than kv_len counts, so in that layer its context is
  // kv_len[i] - trim and its new tokens sit at KV index kv_len[i] - trim - n_new + j of the
  // same block table (their slots shift by trim; positions are unchanged). Each trim is
  // >= 0 and <= kv_len[i] - n_new. The layers' pools are apart, so one table serves all.
  std::vector<int32_t> layer_kv_trim;

  int32_t num_tokens() const { return static_cast<int32_t>(token_ids.size()); }
  int32_t num_seqs() const { return static_cast<int32_t>(kv_len.size()); }
};

// Layer `layer` of a batch with layer_kv_trim: each sequence's context length there
// (kv_len[num_seqs]) and its new tokens' slots (slots[num_tokens]), which the backends'
// attention of that layer uses instead of the batch's. REQUIRES: a validated batch with
// layer_kv_trim.
void LayerKvLayout(const ForwardBatch& batch, int layer, int32_t block_size, int32_t* kv_len,
                   int32_t* slots);

// The pool blocks a forward of `batch` reads or writes: each sequence's first
// ceil(kv_len / block_size) block-table entries. A swap of any of them must finish before
// that forward runs.
std::vector<int32_t> BlocksTouched(const ForwardBatch& batch, int32_t block_size);

enum class KvDType { kF32, kBF16 };

// Marks the completion of a batch of transfers (Backend::SwapOut / SwapIn). 0 is a fence
// that is already complete.
struct TransferFence {
  uint64_t id = 0;
};

struct BackendOptions {
  int32_t num_kv_blocks = 0;  // pool size in blocks; 0 = derive from kv_memory_bytes
  size_t kv_memory_bytes = 0;
  int32_t block_size = 16;
  KvDType kv_dtype = KvDType::kF32;  // CPU default; CUDA requires kBF16
  int32_t num_threads = 0;           // CPU: 0 = all cores
  // CPU: run GGUF Q8_0/Q4_1 matrices on their quantised blocks with Q8 activations
  // (kernels/cpu/quant_matmul.h); false: every weight in fp32, the exact reference.
  bool cpu_quantized_weights = true;
  double gpu_memory_fraction = 0.9;  // CUDA: fraction of free memory for weights + KV
};

class Backend {
 public:
  virtual ~Backend() = default;
  virtual std::string name() const = 0;  // "cpu", "cuda:0"
  virtual const ModelConfig& config() const = 0;
  virtual const KvPoolShape& kv_shape() const = 0;

  // Writes the batch's K/V into their slots, runs every layer, and returns fp32 logits
  // [logit_rows.size()][vocab_size] in *logits. Validates the batch (ids in vocab, slots and
  // block ids in the pool) and returns InvalidArgument rather than touching bad memory.
  virtual Status Forward(const ForwardBatch& batch, std::vector<float>* logits) = 0;

  // Copy-on-write: copies whole blocks (all layers, K and V) src -> dst.
  virtual Status CopyBlocks(const std::vector<std::pair<int32_t, int32_t>>& src_dst) = 0;

  // Raw bytes of one block (all layers), for the host and disk tiers and for tests.
  virtual size_t block_bytes() const = 0;
  virtual Status ReadBlock(int32_t block_id, void* dst) = 0;
  virtual Status WriteBlock(int32_t block_id, const void* src) = 0;

  // --- Host tier ------------------------------------------------------------------------
  // The host tier's arena: num_blocks slots of block_bytes(), allocated once (pinned on
  // CUDA; a second arena on the CPU, so CI runs the same code). InvalidArgument if called
  // twice or with num_blocks < 0.
  virtual Status AllocateHostTier(int32_t num_blocks);
  int32_t num_host_blocks() const { return num_host_blocks_; }
  // The bytes of one host slot. The disk worker reads and writes them; a slot is touched
  // by one party at a time (cache/block_pool.h reserves slots for pending transfers).
  // REQUIRES: 0 <= host_slot < num_host_blocks(), and any SwapOut into it waited for.
  uint8_t* host_block(int32_t host_slot) {
    return host_arena_ + static_cast<size_t>(host_slot) * block_bytes();
  }
  // Batched whole-block copies (all layers, K and V): device -> host and host -> device.
  // A batch runs after every earlier batch that touches one of its device blocks or host
  // slots (batches over other memory may run beside each other: CUDA has a stream per
  // direction), and the next Forward sees swapped-in blocks (it is ordered after them), so
  // the engine waits on a fence only before the host touches a slot a swap may still use. The
  // default copies through ReadBlock/WriteBlock and completes before returning.
  virtual Result<TransferFence> SwapOut(std::span<const std::pair<int32_t, int32_t>> device_host);
  virtual Result<TransferFence> SwapIn(std::span<const std::pair<int32_t, int32_t>> host_device);
  // Blocks until the fence's transfers are complete.
  virtual Status WaitFence(TransferFence fence);
  // Whether swaps run beside the forward passes queued after them that do not touch their
  // blocks (CUDA's swap streams; the simulator's host link). The engine then lets a
  // turn whose prefix comes up from the host tier compute one step after its admission,
  // so that the promotion overlaps the other sequences' step instead of stalling it.
  // The default's swaps complete before they return: false.
  virtual bool SwapsOverlapCompute() const { return false; }

  // --- Compressed caches (engine/episode_cache.h) ----------------------------------------
  // Forward, and also the attention scores of a one-sequence batch's new tokens over its
  // first num_scored KV entries, in *scores as [num_layers][num_kv_heads][num_scored]
  // (kernels/cpu/attention_scores.h defines a score). The default: NotSupported.
  virtual Status ForwardScored(const ForwardBatch& batch, int32_t num_scored,
                               std::vector<float>* logits, std::vector<float>* scores);
  // Compaction of one sequence's KV (blocks `block_table`, num_entries entries): for each
  // layer l and KV head h, entry keep[(l * num_kv_heads + h) * num_keep + i] moves to entry
  // i. Each list strictly increasing. The default: NotSupported.
  virtual Status CompactKv(std::span<const int32_t> block_table, int32_t num_entries,
                           std::span<const int32_t> keep, int32_t num_keep);
  // The same with per-layer counts: layer l has num_entries[l] entries and keeps
  // num_keep[l] per KV head; keep holds, layer after layer, [num_kv_heads][num_keep[l]].
  // The default: NotSupported.
  virtual Status CompactKvLayers(std::span<const int32_t> block_table,
                                 std::span<const int32_t> num_entries,
                                 std::span<const int32_t> keep, std::span<const int32_t> num_keep);

 protected:
  // Set by AllocateHostTier (or a backend's own pinned allocation).
  uint8_t* host_arena_ = nullptr;
  int32_t num_host_blocks_ = 0;

 private:
  std::vector<uint8_t> default_host_arena_;  // the default AllocateHostTier's storage
};

// InvalidArgument unless 0 <= block_id < shape.num_blocks (Read/WriteBlock, CopyBlocks).
inline Status CheckBlockId(const KvPoolShape& shape, int32_t block_id) {
  if (block_id < 0 || block_id >= shape.num_blocks) {
    return Status::InvalidArgument("block id " + std::to_string(block_id) +
                                   " outside the pool of " + std::to_string(shape.num_blocks));
  }
  return Status::OK();
}

// Validates CompactKvLayers' arguments against a pool of `shape`: one count per layer,
// keep of the right size, each head's list strictly increasing below its layer's entries,
// and the block table long enough with ids in the pool. InvalidArgument otherwise.
Status CheckCompactKvLayers(const KvPoolShape& shape, std::span<const int32_t> block_table,
                            std::span<const int32_t> num_entries, std::span<const int32_t> keep,
                            std::span<const int32_t> num_keep);

Result<std::unique_ptr<Backend>> CreateCpuBackend(const ModelWeights& weights,
                                                  const BackendOptions& options);

}  // namespace kvkeep
