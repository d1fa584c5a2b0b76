// The ggml tensor types kvkeep reads from GGUF files, their block geometry, and
// dequantisation to fp32. Layouts follow ggml (ggml-common.h); values equal the `gguf`
// Python package's dequantize() bit for bit (tests/fixtures/gguf, gen_gguf.py).
//
// Thread-safety: pure functions.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string_view>

#include "base/status.h"

namespace kvkeep {

// Values are ggml's type ids as stored in GGUF.
enum class GgmlType : uint32_t {
  kF32 = 0,
  kF16 = 1,
  kQ4_0 = 2,
  kQ4_1 = 3,
  kQ5_0 = 6,
  kQ5_1 = 7,
  kQ8_0 = 8,
  kQ4_K = 12,
  kQ5_K = 13,
  kQ6_K = 14,
  kBF16 = 30,
};

struct GgmlTypeInfo {
  GgmlType type;
  std::string_view name;   // "Q4_1"
  int64_t block_elements;  // elements per block (1 for float types)
  int64_t block_bytes;     // bytes per block
};

// nullopt for ids kvkeep does not read (the other quantisations, I-quants, ...).
std::optional<GgmlTypeInfo> FindGgmlType(uint32_t id);
std::string_view GgmlTypeName(GgmlType type);

// Dequantises `num_elements` values (a multiple of the block size) from `data`, which holds
// exactly num_elements / block_elements * block_bytes bytes, into `out`.
// REQUIRES: the sizes agree (GgufFile::Open checks them for every tensor).
void DequantizeGgml(GgmlType type, const uint8_t* data, int64_t num_elements, float* out);

}  // namespace kvkeep
