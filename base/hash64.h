// Small, well-known 64-bit hashes shared across modules. Values derived from them persist
// or are replayed (tenant KV salts, synthetic weights, replay timing draws and synthetic
// token content): never change the constants.
#pragma once

#include <cstdint>
#include <string_view>

namespace kvkeep {

inline constexpr uint64_t kGoldenGamma = 0x9e3779b97f4a7c15ull;

// The SplitMix64 finaliser (Steele, Lea and Flood, 2014): spreads 64 bits into 64.
constexpr uint64_t Mix64(uint64_t z) {
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

// One SplitMix64 step from state x: Mix64(x + golden gamma).
constexpr uint64_t SplitMix64(uint64_t x) { return Mix64(x + kGoldenGamma); }

// FNV-1a over the bytes of s.
constexpr uint64_t Fnv1a64(std::string_view s) {
  uint64_t h = 0xcbf29ce484222325ull;
  for (char c : s) h = (h ^ static_cast<uint8_t>(c)) * 0x100000001b3ull;
  return h;
}

}  // namespace kvkeep
