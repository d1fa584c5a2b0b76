// CostModel: how long this engine and model take to rebuild or extend a session's KV.
// The TTL policy prices a cache hit with it.
//
//   prefill_s(n, c)      = prefill_per_token_s * n + prefill_attention_s * n * (c + n / 2)
//                          (n new tokens after c cached ones: linear layers, plus causal
//                           attention over the context each new token sees; the same
//                           whether the engine runs it in chunks or in one pass. A
//                           separate rate for pairs across chunks cannot be fitted: with
//                           fixed-size chunks those pairs are n * (c + n / 2) - chunk / 2 *
//                           n, in the span of the two terms)
//   decode_step_s(ctx, B) = decode_fixed_s + decode_per_context_token_s * ctx
//                           + decode_per_sequence_s * B
//                          (weights read once per step, plus the KV of all ctx tokens of
//                           the batch's B sequences, plus per-sequence work: a logits row,
//                           sampling, per-sequence launches)
//   step_s(B, ctx, runs) = max(decode_fixed_s, prefill_per_token_s * (B + sum n))
//                          + sum over prefill runs (n, c) of their attention terms
//                          + (decode_per_context_token_s + mixed_decode_extra_per_context_token_s)
//                            * ctx + decode_per_sequence_s * B
//                          (one engine step: B decoding sequences reading ctx KV tokens
//                           beside prefill chunks; a decode that shares its step with a
//                           prefill chunk runs through the prefill kernel on CUDA, hence
//                           its own extra per-context cost; no runs: decode_step_s)
//   reload_s(tier, n)    = n * kv_bytes_per_token / <tier>_to_device_bytes_per_s
//
// FitCostModel fits the coefficients by least squares from timing samples. A sample may
// time a whole step (kPrefill, kDecode, kMixedStep) or only its attention part
// (kPrefillAttention, kDecodeAttention: a kernel benchmark), which constrains only the
// attention coefficients. Coefficients are kept non-negative (a negative one is fixed at 0
// and the rest refitted). decode_per_sequence_s is fitted only when the whole-step decode
// samples have at least two batch sizes, not proportional to their contexts (else it stays
// 0: such samples cannot separate it from decode_fixed_s and decode_per_context_token_s).
// mixed_decode_extra_per_context_token_s is fitted (last, on what the other terms leave)
// only from kMixedStep samples, else it stays 0: a model without it prices as before it
// existed, and an older cost_model.json loads with it at 0.
//
// Thread-safety: values and pure functions.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "base/file.h"
#include "base/status.h"

namespace kvkeep {

// How a step's runs are priced. A run of one new token after a context is a decode; any
// other run is a prefill run (SimStepSeconds and the engine's step log count them alike).
inline bool IsDecodeRun(int64_t new_tokens, int64_t cached_tokens) {
  return new_tokens == 1 && cached_tokens > 0;
}
// Pairs of n new tokens attending causally after c cached ones: n * (c + n / 2).
double AttentionPairs(int64_t new_tokens, int64_t cached_tokens);

// Where a session's KV would be rebuilt from after it leaves the device.
enum class RebuildSource { kHost, kDisk, kPrefill };
const char* RebuildSourceName(RebuildSource s);

struct CostModel {
  double prefill_per_token_s = 0;
  double prefill_attention_s = 0;  // per (new token x context token)
  double decode_fixed_s = 0;
  double decode_per_context_token_s = 0;
  double decode_per_sequence_s = 0;  // absent from older cost_model.json files: 0
  // Per KV token a decoding sequence reads in a step that also carries a prefill run, on
  // top of decode_per_context_token_s. Absent from older files: 0.
  double mixed_decode_extra_per_context_token_s = 0;
  // Bandwidths of a reload into device memory; 0: not measured (that tier is not used
  // to price a hit).
  double host_to_device_bytes_per_s = 0;
  double disk_to_device_bytes_per_s = 0;
  // Each direction's rate while swaps move both ways at once, as a fraction of its rate
  // alone (bench/gpu/tiers_swap_bench's "duplex share"); 0: not measured. Only the
  // simulator's host link uses it (engine/sim_host_link.h).
  double host_duplex_share = 0;
  int64_t kv_bytes_per_token = 0;  // all layers, K and V
  std::string source;              // what it was fitted from

  double PrefillSeconds(int64_t new_tokens, int64_t cached_tokens) const;
  // The attention part of one prefill run of n tokens after c in the pool (one step).
  double PrefillRunAttentionSeconds(int64_t new_tokens, int64_t cached_tokens) const;
  // One decode step of `sequences` sequences reading `context_tokens` KV tokens in all.
  double DecodeStepSeconds(int64_t context_tokens, int64_t sequences = 1) const;
  // One engine step: `decode_sequences` decoding sequences reading `decode_context_tokens`
  // KV tokens in all, beside prefill runs {new tokens, cached tokens} (step_s above).
  struct PrefillRun {
    int64_t new_tokens = 0;
    int64_t cached_tokens = 0;
  };
  double StepSeconds(int64_t decode_sequences, int64_t decode_context_tokens,
                     const std::vector<PrefillRun>& prefills) const;
  // Seconds to bring `tokens` of KV back from `from`; kPrefill recomputes them.
  // +infinity for a tier whose bandwidth is not measured.
  double RebuildSeconds(RebuildSource from, int64_t tokens) const;
};

// kMixedStep: one step of `sequences` decoding sequences (context_tokens in all) beside
// one prefill run of new_tokens after cached_tokens (a chunk, not a whole prefill).
// kStep: one step of a real run (policy/step_log.h): `sequences` decodes reading
// context_tokens, beside prefill runs of new_tokens in all with attention_pairs in all
// (each run's n * (c + n / 2)); priced by step_s. In the fit, a step without prefill
// counts as a decode sample; a step without decodes as a prefill sample when its tokens
// price it past decode_fixed_s (step_s's max; the prefill terms cannot see a step below
// it): first those of at least kMinFittedPrefillStepTokens, then, refitted once
// decode_fixed_s is known, those the fit prices past it; a step with both as a mixed one.
struct TimingSample {
  enum class Kind { kPrefill, kPrefillAttention, kDecode, kDecodeAttention, kMixedStep, kStep };
  Kind kind = Kind::kPrefill;
  int64_t new_tokens = 0;      // prefill: tokens computed
  int64_t cached_tokens = 0;   // prefill: context before them
  int64_t context_tokens = 0;  // decode: KV tokens read by the step (all sequences)
  double seconds = 0;
  std::string note;            // where the figure comes from
  int64_t sequences = 0;       // decode: sequences in the step (0: not recorded, counts as 1)
  double attention_pairs = 0;  // kStep only
};
inline constexpr int64_t kMinFittedPrefillStepTokens = 128;
const char* TimingSampleKindName(TimingSample::Kind k);

struct CostFitRow {
  TimingSample sample;
  double predicted_s = 0;
};

struct CostFit {
  CostModel model;
  std::vector<CostFitRow> rows;   // every fitted sample with the fitted model's prediction
  double max_relative_error = 0;  // over rows
  // Logged steps (kStep) left out: measured at under a third of their fitted price, their
  // GPU work billed to the next step (FitCostModel).
  int64_t num_trimmed = 0;
};

// Fits the prefill and decode coefficients to `samples`; bandwidths and kv_bytes_per_token
// are copied from `base`. Logged steps measured at under a third of their fitted price are
// left out (CostFit::num_trimmed). InvalidArgument when a coefficient has no sample to fit
// it.
Result<CostFit> FitCostModel(const std::vector<TimingSample>& samples, const CostModel& base);
// A table of the fit (kind, sizes, measured, predicted, error) for logs and docs.
std::string FormatCostFit(const CostFit& fit);

// Persistence (JSON) in the state directory.
Status SaveCostModel(Env* env, const std::string& path, const CostModel& model);
Result<CostModel> LoadCostModel(Env* env, const std::string& path);
// A timing-sample file: {"kv_bytes_per_token": .., "host_to_device_bytes_per_s": ..,
// "disk_to_device_bytes_per_s": .., "samples": [{"kind", "new_tokens", "cached_tokens",
// "context_tokens", "sequences", "seconds", "note"}]} ("sequences" optional; kind prefill,
// prefill_attention, decode, decode_attention or mixed). Returns the samples and the base
// model.
Result<std::pair<std::vector<TimingSample>, CostModel>> LoadTimingSamples(Env* env,
                                                                          const std::string& path);

}  // namespace kvkeep
