// Helpers of the GGUF tests: where the installed SmolLM2 file is, a GGUF image writer, and
// the fixture hash.
#pragma once

#include <cstdint>
#include <cstring>
#include <string>
#include <string_view>
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

// Writes a little-endian GGUF image.
class GgufBuilder {
 public:
  GgufBuilder& U32(uint32_t v) { return Raw(&v, 4); }
  GgufBuilder& U64(uint64_t v) { return Raw(&v, 8); }
  GgufBuilder& F32(float v) { return Raw(&v, 4); }
  GgufBuilder& Str(std::string_view s) {
    U64(s.size());
    bytes_.append(s);
    return *this;
  }
  GgufBuilder& Header(uint32_t version, uint64_t num_tensors, uint64_t num_kv) {
    bytes_.append("GGUF");
    return U32(version).U64(num_tensors).U64(num_kv);
  }
  // A 2-D tensor info.
  GgufBuilder& Tensor(std::string_view name, uint64_t d0, uint64_t d1, uint32_t type,
                      uint64_t offset) {
    return Str(name).U32(2).U64(d0).U64(d1).U32(type).U64(offset);
  }
  GgufBuilder& StrArray(std::string_view key, const std::vector<std::string>& items) {
    Str(key).U32(9).U32(8).U64(items.size());
    for (const std::string& item : items) Str(item);
    return *this;
  }
  GgufBuilder& I32Array(std::string_view key, const std::vector<int32_t>& items) {
    Str(key).U32(9).U32(5).U64(items.size());
    for (int32_t item : items) Raw(&item, 4);
    return *this;
  }
  GgufBuilder& PadTo(size_t alignment) {
    while (bytes_.size() % alignment != 0) bytes_.push_back('\0');
    return *this;
  }
  GgufBuilder& Zeros(size_t n) {
    bytes_.append(n, '\0');
    return *this;
  }
  const std::string& bytes() const { return bytes_; }

 private:
  GgufBuilder& Raw(const void* p, size_t n) {
    bytes_.append(static_cast<const char*>(p), n);
    return *this;
  }
  std::string bytes_;
};

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
