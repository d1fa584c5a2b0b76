// Backend: runs the transformer over a batch on one device and owns that device's KV
// pool. The CPU backend is the exact reference; the CUDA backend implements the same
// interface and must match it within bf16 tolerance. Block ids come from cache/BlockPool,
// which only does bookkeeping; the bytes live here.
//
// Thread-safety: owned and called by the engine thread only.
#pragma once

#include <cstdint>
#include <memory>
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

  int32_t num_tokens() const { return static_cast<int32_t>(token_ids.size()); }
  int32_t num_seqs() const { return static_cast<int32_t>(kv_len.size()); }
};

enum class KvDType { kF32, kBF16 };

struct BackendOptions {
  int32_t num_kv_blocks = 0;  // pool size in blocks; 0 = derive from kv_memory_bytes
  size_t kv_memory_bytes = 0;
  int32_t block_size = 16;
  KvDType kv_dtype = KvDType::kF32;  // CPU default; CUDA requires kBF16
  int32_t num_threads = 0;           // CPU: 0 = all cores
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
};

// InvalidArgument unless 0 <= block_id < shape.num_blocks (Read/WriteBlock, CopyBlocks).
inline Status CheckBlockId(const KvPoolShape& shape, int32_t block_id) {
  if (block_id < 0 || block_id >= shape.num_blocks) {
    return Status::InvalidArgument("block id " + std::to_string(block_id) +
                                   " outside the pool of " + std::to_string(shape.num_blocks));
  }
  return Status::OK();
}

Result<std::unique_ptr<Backend>> CreateCpuBackend(const ModelWeights& weights,
                                                  const BackendOptions& options);

}  // namespace kvkeep
