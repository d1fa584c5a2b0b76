// SimBackend: a Backend whose forward pass computes nothing and instead prices each step
// with a CostModel, so the real Engine (scheduler, BlockPool, tiers, ReclaimPolicy) runs
// in simulated time. bench/policy_bench uses it with teacher-forced turns, where the
// logits are never read: Forward returns zero logits.
//
// Step price (seconds): CostModel::StepSeconds (policy/cost_model.h) of the batch's
// decoding runs (n_i == 1 after existing KV: B sequences reading sum kv_len_i tokens) and
// its prefill runs (n_i tokens after c_i = kv_len_i - n_i in the pool):
//   max(decode_fixed_s, prefill_per_token_s * tokens)   (weights read once per step; a
//                                                        large batch is compute-bound)
//   + the prefill runs' attention (prefill_attention_s * n_i * (c_i + n_i / 2))
//   + the decodes' KV reads and per-sequence work (with the mixed-step extra per KV token
//     when the step also carries a prefill run)
// So a decode-only step of B runs costs CostModel::DecodeStepSeconds(sum kv_len, B), and the
// chunks of a prefill sum to CostModel::PrefillSeconds of the whole run (when every chunk
// has prefill_per_token_s * n >= decode_fixed_s, i.e. n >= 260 tokens for the 8B H100 fit).
// Swaps between the device and the host tier cost blocks * block_bytes / host_bytes_per_s
// each way; copy-on-write copies are free. Without a clock each swap is added to the step
// it is in. With one (SimBackendOptions::clock), swaps run on the host link as on CUDA's
// two swap streams (docs/cuda.md; engine/sim_host_link.h): one after another per
// direction, from when they are issued, beside the steps and beside the other direction
// (each at duplex_share of its rate while both move), and after a pending swap of the
// other direction over the same device block or host slot. A step waits only until the
// swaps of the blocks it touches (each sequence's first ceil(kv_len / block_size) table
// entries) are done, and the engine defers a promoted admission by a step
// (Backend::SwapsOverlapCompute).
//
// The KV pool and the host tier hold no bytes: ReadBlock/WriteBlock do nothing and
// AllocateHostTier allocates nothing, so an 80 GB pool costs only the engine's
// bookkeeping. There is therefore no disk tier (the disk worker reads host slots).
//
// Paced (SimBackendOptions::spend set, kvkeepd --testing-sim-cost-model): each Forward
// hands the price of the step and of the swaps since the last one to `spend`, which sleeps
// it on the engine thread, so a real daemon serves in real time as the simulator prices it.
//
// Thread-safety: owned and called by the engine thread; TakeElapsedSeconds and counters()
// are called by the same thread between steps (the simulator drives steps inline).
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "base/clock.h"
#include "base/file.h"
#include "engine/backend.h"
#include "engine/sim_host_link.h"
#include "policy/cost_model.h"

namespace kvkeep {

struct SimBackendOptions {
  ModelConfig config;              // the engine's view: vocab, positions, layers, KV heads
  int32_t num_kv_blocks = 0;       // device pool, blocks
  int32_t block_size = 16;         // tokens per block
  int64_t kv_bytes_per_token = 0;  // prices swaps; block_bytes() = this * block_size
  CostModel cost;                  // prices forward steps
  double host_bytes_per_s = 0;     // device <-> host bandwidth; 0: swaps are free
  // Each direction's rate while both move, as a fraction of its rate alone (the host
  // link; 0.5: the directions take turns, 1: full duplex). The default is the CUDA
  // backend's own swaps on an H100 (tiers_swap_bench, bench/RESULTS.md); a cost model's
  // host_duplex_share replaces it.
  double duplex_share = 0.87;
  // Now, for the host link: the simulator's clock at the step's start (the seconds
  // priced since are added), or the real clock when paced. nullptr: swaps stall their step.
  const Clock* clock = nullptr;
  // Paced: called with the seconds of every step (and the swaps before it) instead of
  // accumulating them for TakeElapsedSeconds. Empty: not paced.
  std::function<void(double seconds)> spend;
};

// What the backend has priced so far (cumulative).
struct SimBackendCounters {
  int64_t steps = 0;
  int64_t prefill_tokens = 0;  // tokens of runs with n > 1, plus single-token runs that
                               // start a sequence's computation (kv_len == 1)
  int64_t decode_tokens = 0;   // single-token runs after existing KV
  int64_t sampled_rows = 0;    // logit rows returned: one per generated token
  int64_t swapped_in_blocks = 0;
  int64_t swapped_out_blocks = 0;
  double busy_s = 0;       // forward seconds and the waits for transfers
  double swap_s = 0;       // host <-> device transfers, seconds of copying
  double swap_wait_s = 0;  // of busy_s, steps waiting on transfers (swap_s without a clock)
};

// The price of one step (seconds), as above. Exposed for tests.
double SimStepSeconds(const CostModel& cost, const ForwardBatch& batch);

// A paced SimBackend for kvkeepd --testing-sim-cost-model: the model's config, the pool of
// options.num_kv_blocks (or options.kv_memory_bytes / block bytes) blocks, priced by the
// cost model file (its kv_bytes_per_token sizes blocks, its host bandwidth the swaps),
// each price slept. The cost model's error (a bad or missing file) is returned.
Result<std::unique_ptr<Backend>> CreatePacedSimBackend(Env* env, const ModelConfig& config,
                                                       const BackendOptions& options,
                                                       const std::string& cost_model_path);

class SimBackend final : public Backend {
 public:
  // InvalidArgument for a pool of no blocks, a block size < 1, a vocabulary < 1 or
  // kv_bytes_per_token < 1.
  static Result<std::unique_ptr<SimBackend>> Create(const SimBackendOptions& options);

  std::string name() const override { return "sim"; }
  const ModelConfig& config() const override { return options_.config; }
  const KvPoolShape& kv_shape() const override { return shape_; }
  Status Forward(const ForwardBatch& batch, std::vector<float>* logits) override;
  Status CopyBlocks(const std::vector<std::pair<int32_t, int32_t>>& src_dst) override;
  size_t block_bytes() const override { return block_bytes_; }
  Status ReadBlock(int32_t block_id, void* dst) override;
  Status WriteBlock(int32_t block_id, const void* src) override;
  Status AllocateHostTier(int32_t num_blocks) override;
  Result<TransferFence> SwapOut(std::span<const std::pair<int32_t, int32_t>> device_host) override;
  Result<TransferFence> SwapIn(std::span<const std::pair<int32_t, int32_t>> host_device) override;
  Status WaitFence(TransferFence fence) override;
  bool SwapsOverlapCompute() const override { return options_.clock != nullptr; }

  // Seconds priced since the last call; the simulator advances its clock by them.
  double TakeElapsedSeconds();
  const SimBackendCounters& counters() const { return counters_; }

 private:
  explicit SimBackend(const SimBackendOptions& options);
  double SwapSeconds(size_t num_blocks) const;
  // Checks a swap's pairs ((device, host) out, (host, device) in) and prices it: on the
  // host link, or into the step.
  Status QueueSwap(int direction, std::span<const std::pair<int32_t, int32_t>> pairs);
  // Seconds from now until the swaps of the blocks `batch` touches are done.
  double WaitForSwaps(const ForwardBatch& batch);
  double NowSeconds() const;  // the clock plus what is priced but not yet taken
  void Wait(double seconds);

  SimBackendOptions options_;
  KvPoolShape shape_;
  size_t block_bytes_ = 0;
  double pending_s_ = 0;
  std::unique_ptr<SimHostLink> link_;  // with a clock, from AllocateHostTier
  SimBackendCounters counters_;
};

}  // namespace kvkeep
