// Sampler: picks the next token from one row of logits, per request.
//
// Greedy (temperature <= 0 or top_k == 1): argmax, the lowest index on ties.
// Otherwise: logits / temperature -> keep the top_k largest (0: all) -> softmax ->
// keep the smallest set of most likely tokens whose mass reaches top_p (the nucleus;
// always at least one token) -> renormalise -> draw. Ties in the ordering are broken by
// the lower token id, so the kept set is deterministic.
//
// PRNG: std::mt19937_64 seeded with SamplingParams::seed; one uniform double in [0, 1)
// per draw, built from the top 53 bits of one 64-bit output (not std::uniform_real_distribution,
// whose algorithm differs between standard libraries). The same seed and the same logits
// give the same tokens on every platform.
//
// Thread-safety: not thread-safe; one Sampler per request, used by the engine thread.
#pragma once

#include <cstdint>
#include <random>
#include <utility>
#include <vector>

#include "engine/engine.h"

namespace kvkeep {

class Sampler {
 public:
  explicit Sampler(const SamplingParams& params);

  bool is_greedy() const { return params_.temperature <= 0.0f || params_.top_k == 1; }
  // REQUIRES: vocab_size > 0; logits has vocab_size entries.
  int32_t Sample(const float* logits, int32_t vocab_size);

  // The argmax with the lowest index on ties; NaNs never win.
  static int32_t Argmax(const float* logits, int32_t vocab_size);
  // The candidates the sampler draws from (token, probability), most likely first, after
  // temperature, top-k and top-p; probabilities sum to 1. Exposed for tests.
  static std::vector<std::pair<int32_t, float>> Candidates(const SamplingParams& params,
                                                           const float* logits, int32_t vocab_size);

 private:
  double NextUniform();  // [0, 1)

  SamplingParams params_;
  std::mt19937_64 rng_;
};

}  // namespace kvkeep
