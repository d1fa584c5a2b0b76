// Cost-model calibration: times a few prefills and decode steps of this engine and model
// and fits the TTL policy's CostModel to them (policy/cost_model.h, docs/policy.md "The
// cost model"). Decode is timed at several batch sizes and context lengths, so the fit
// has a per-context-token (and per-sequence) term: a step reading 100k KV tokens of the
// 8B shape costs about twice one reading 1k. Prefills of 256 and 1,024 new tokens are
// timed over cached prefixes of up to 32k tokens (the shape of a turn after a cache hit),
// and one decode batch is timed beside a prefill chunk (a mixed step), so the fit prices
// the chunks and mixed steps a serving engine runs. Run once at start-up on request
// (kvkeepd --calibrate-cost-model), before the engine thread starts; the daemon saves the
// fit in the state directory.
//
// Thread-safety: drives the engine with RunUntilIdle, so the engine must not be started.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "base/clock.h"
#include "base/file.h"
#include "base/status.h"
#include "engine/backend.h"
#include "engine/engine.h"
#include "policy/cost_model.h"

namespace kvkeep {

struct CalibrationOptions {
  int64_t max_prompt_tokens = 1024;  // largest prefill timed (clamped to the pool / model)
  int32_t decode_tokens = 17;        // tokens per decode sample (16 timed steps)
  // Decode samples: batches of 1, max_decode_batch / 4 and max_decode_batch sequences at
  // two context lengths (L/8 and L), reading at most max_decode_context_tokens KV tokens
  // in all (clamped to half the pool). The B * L prompt tokens are prefilled first and the
  // samples decode after prefix hits on them, so every timed step is a pure decode step.
  // REQUIRES: max_decode_batch <= the engine's max_running. A batch whose sequences do not
  // start decoding in the same step (no prefix reuse: policy "none") is not used.
  int32_t max_decode_batch = 16;
  int64_t max_decode_context_tokens = 131072;
  // The prefixes of L tokens are timed only if those of L/8 took at most this long (on
  // the engine's clock): a slow device (a loaded CPU) keeps its start-up short.
  double max_decode_seconds = 2;
  // Prefills of 256 and 1,024 new tokens after cached prefixes of these lengths (clamped
  // to the pool), one prompt grown through them; a longer prefix is timed only while the
  // ones before took at most max_context_seconds. Empty: none.
  std::vector<int64_t> context_prefix_tokens = {4096, 16384, 32768};
  double max_context_seconds = 4;
  // The engine's EngineOptions::prefill_chunk_tokens (the mixed-step sample runs one
  // chunk beside each decode step).
  int32_t prefill_chunk_tokens = 256;
  // Bandwidths and kv_bytes_per_token kept in the fit (MeasureTierBandwidths).
  CostModel base;
};

// REQUIRES: engine not started; its pool empty enough for one max_prompt_tokens request.
// The calibration prompts stay in the prefix cache under a salt no tenant uses.
Result<CostFit> CalibrateCostModel(Engine* engine, int64_t max_context_tokens,
                                   const CalibrationOptions& options = {});

// The reload bandwidths of the tiers below the device pool, timed on `clock`:
//   host: with host_blocks, the probe allocates the host tier (Engine::Create then keeps
//         it) and times the backend's own swaps, the copies promotions and demotions make:
//         n = max(blocks, min_swap_bytes / block_bytes) blocks (at most half the pool and
//         half the tier) swapped out, n others swapped in, and both queued together, each
//         to its fence, the fastest of three each. No two blocks of a batch are adjacent
//         (the directions take alternate blocks and slots), as in a churned pool, so a
//         backend that merges adjacent copies times one copy per block. The host figure
//         is the swap-in's rate.
//         Without a host tier (nothing to promote from) it is Backend::WriteBlock of
//         `blocks` blocks from pageable memory, which on CUDA is an order of magnitude
//         slower than a swap-in from the pinned tier (bench/RESULTS.md).
//   duplex share: with the host tier, (out + in) / 2 / together, clamped to [0.5, 1]:
//         each direction's share of its rate while both move. The simulator's host link
//         takes it (CostModel::host_duplex_share); a backend whose swaps complete before
//         they return gives 0.5.
//   disk: `blocks` blocks read back block by block (RandomRWFile::ReadAt, as the disk tier
//         reads) from a file written in scratch_dir, then copied to the device:
//         1 / (1 / disk_read + 1 / host). A file just written may be read from the page
//         cache, so this is an upper bound for a cold disk.
// A figure whose timed interval is 0 us is left at 0 ("not measured"; CostModel never
// prices a reload from it).
struct TierBandwidthOptions {
  int32_t blocks = 64;      // blocks timed (clamped to the pool)
  std::string scratch_dir;  // where the disk probe file goes; empty: disk not measured
  int32_t host_blocks = 0;  // the engine's host tier, slots; 0: swaps not timed
  // Bytes each swap timing moves at least (a few ms at tens of GB/s, well above the
  // clock's and a fence's overhead; small models' blocks are small).
  int64_t min_swap_bytes = int64_t{256} << 20;
};
struct TierBandwidths {
  double host_to_device_bytes_per_s = 0;
  double disk_to_device_bytes_per_s = 0;
  double host_duplex_share = 0;
  int64_t kv_bytes_per_token = 0;  // block_bytes / block_size
  int64_t bytes_timed = 0;         // by the disk probe, and WriteBlock without swaps
  int64_t swap_bytes_timed = 0;    // by each swap timing; 0: swaps not timed
};
// REQUIRES: backend's device pool not yet in use (its first blocks are overwritten), as
// before Engine::Create, and with host_blocks no host tier allocated yet; env and clock
// outlive the call. The probe file is removed.
Result<TierBandwidths> MeasureTierBandwidths(Backend* backend, Env* env, const Clock* clock,
                                             const TierBandwidthOptions& options);

}  // namespace kvkeep
