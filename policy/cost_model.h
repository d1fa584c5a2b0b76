// CostModel: how long this engine and model take to rebuild or extend a session's KV.
// The TTL policy prices a cache hit with it.
//
//   prefill_s(n, c)      = prefill_per_token_s * n + prefill_attention_s * n * (c + n / 2)
//                          (n new tokens after c cached ones: linear layers, plus causal
//                           attention over the context each new token sees)
//   decode_step_s(ctx, B) = decode_fixed_s + decode_per_context_token_s * ctx
//                           + decode_per_sequence_s * B
//                          (weights read once per step, plus the KV of all ctx tokens of
//                           the batch's B sequences, plus per-sequence work: a logits row,
//                           sampling, per-sequence launches)
//   reload_s(tier, n)    = n * kv_bytes_per_token / <tier>_to_device_bytes_per_s
//
// FitCostModel fits the coefficients by least squares from timing samples. A sample may
// time a whole step (kPrefill, kDecode) or only its attention part (kPrefillAttention,
// kDecodeAttention: a kernel benchmark), which constrains only the attention coefficient.
// Coefficients are kept non-negative (a negative one is fixed at 0 and the rest refitted).
// decode_per_sequence_s is fitted only when the whole-step decode samples have at least two
// batch sizes, not proportional to their contexts (else it stays 0: such samples cannot
// separate it from decode_fixed_s and decode_per_context_token_s).
//
// Thread-safety: values and pure functions.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "base/file.h"
#include "base/status.h"

namespace kvkeep {

// Where a session's KV would be rebuilt from after it leaves the device.
enum class RebuildSource { kHost, kDisk, kPrefill };
const char* RebuildSourceName(RebuildSource s);

struct CostModel {
  double prefill_per_token_s = 0;
  double prefill_attention_s = 0;  // per (new token x context token)
  double decode_fixed_s = 0;
  double decode_per_context_token_s = 0;
  double decode_per_sequence_s = 0;  // absent from older cost_model.json files: 0
  // Bandwidths of a reload into device memory; 0: not measured (that tier is not used
  // to price a hit).
  double host_to_device_bytes_per_s = 0;
  double disk_to_device_bytes_per_s = 0;
  int64_t kv_bytes_per_token = 0;  // all layers, K and V
  std::string source;              // what it was fitted from

  double PrefillSeconds(int64_t new_tokens, int64_t cached_tokens) const;
  // One decode step of `sequences` sequences reading `context_tokens` KV tokens in all.
  double DecodeStepSeconds(int64_t context_tokens, int64_t sequences = 1) const;
  // Seconds to bring `tokens` of KV back from `from`; kPrefill recomputes them.
  // +infinity for a tier whose bandwidth is not measured.
  double RebuildSeconds(RebuildSource from, int64_t tokens) const;
};

struct TimingSample {
  enum class Kind { kPrefill, kPrefillAttention, kDecode, kDecodeAttention };
  Kind kind = Kind::kPrefill;
  int64_t new_tokens = 0;      // prefill: tokens computed
  int64_t cached_tokens = 0;   // prefill: context before them
  int64_t context_tokens = 0;  // decode: KV tokens read by the step (all sequences)
  double seconds = 0;
  std::string note;       // where the figure comes from
  int64_t sequences = 0;  // decode: sequences in the step (0: not recorded, counts as 1)
};
const char* TimingSampleKindName(TimingSample::Kind k);

struct CostFitRow {
  TimingSample sample;
  double predicted_s = 0;
};

struct CostFit {
  CostModel model;
  std::vector<CostFitRow> rows;  // every sample with the fitted model's prediction
  double max_relative_error = 0;
};

// Fits the prefill and decode coefficients to `samples`; bandwidths and kv_bytes_per_token
// are copied from `base`. InvalidArgument when a coefficient has no sample to fit it.
Result<CostFit> FitCostModel(const std::vector<TimingSample>& samples, const CostModel& base);
// A table of the fit (kind, sizes, measured, predicted, error) for logs and docs.
std::string FormatCostFit(const CostFit& fit);

// Persistence (JSON) in the state directory.
Status SaveCostModel(Env* env, const std::string& path, const CostModel& model);
Result<CostModel> LoadCostModel(Env* env, const std::string& path);
// A timing-sample file: {"kv_bytes_per_token": .., "host_to_device_bytes_per_s": ..,
// "disk_to_device_bytes_per_s": .., "samples": [{"kind", "new_tokens", "cached_tokens",
// "context_tokens", "sequences", "seconds", "note"}]} ("sequences" optional). Returns the samples
// and the base model.
Result<std::pair<std::vector<TimingSample>, CostModel>> LoadTimingSamples(Env* env,
                                                                          const std::string& path);

}  // namespace kvkeep
