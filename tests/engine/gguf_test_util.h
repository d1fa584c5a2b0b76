// Helpers of the GGUF tests: where the installed SmolLM2 file is, and the fixture hash.
#pragma once

#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "base/file.h"
#include "engine/default_model.h"

namespace kvkeep::testing {

inline constexpr const char* kNoSmolLM2Message =
    "the SmolLM2 model is not installed: run scripts/setup (it fetches and verifies it)";

// The installed default model file, or empty when absent.
inline std::string InstalledSmolLM2() {
  Env* env = DefaultEnv();
  std::string path = DefaultModelPath(env);
  return env->FileExists(path) ? path : std::string();
}

// sum_i bits(v[i]) * (2654435761 * i + 1) mod 2^64 (gen_gguf.py weighted_bits_hash).
inline uint64_t WeightedBitsHash(const std::vector<float>& v) {
  uint64_t h = 0;
  for (size_t i = 0; i < v.size(); ++i) {
    uint32_t bits;
    std::memcpy(&bits, &v[i], 4);
    h += uint64_t{bits} * (uint64_t{2654435761} * i + 1);
  }
  return h;
}

}  // namespace kvkeep::testing
