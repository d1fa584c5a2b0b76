// Dequantisation of ggml blocks. Each formula is written exactly as the `gguf` Python
// package's numpy code evaluates it (same operations, same order, fp32 throughout, no
// fused multiply-add: the build uses ISO C++ mode, where GCC does not contract), so the
// results are equal bit for bit.
#include "engine/gguf_types.h"

#include <cstring>

#include "base/bf16.h"

namespace kvkeep {
namespace {

constexpr GgmlTypeInfo kTypes[] = {
    {GgmlType::kF32, "F32", 1, 4},       {GgmlType::kF16, "F16", 1, 2},
    {GgmlType::kQ4_0, "Q4_0", 32, 18},   {GgmlType::kQ4_1, "Q4_1", 32, 20},
    {GgmlType::kQ5_0, "Q5_0", 32, 22},   {GgmlType::kQ5_1, "Q5_1", 32, 24},
    {GgmlType::kQ8_0, "Q8_0", 32, 34},   {GgmlType::kQ4_K, "Q4_K", 256, 144},
    {GgmlType::kQ5_K, "Q5_K", 256, 176}, {GgmlType::kQ6_K, "Q6_K", 256, 210},
    {GgmlType::kBF16, "BF16", 1, 2},
};

float Half(const uint8_t* p) {
  uint16_t h;
  std::memcpy(&h, p, 2);
  return Fp16ToFloat(h);
}

void DequantQ4_0(const uint8_t* b, float* y) {  // d f16, qs[16]
  const float d = Half(b);
  for (int j = 0; j < 16; ++j) {
    y[j] = d * static_cast<float>((b[2 + j] & 0x0F) - 8);
    y[j + 16] = d * static_cast<float>((b[2 + j] >> 4) - 8);
  }
}

void DequantQ4_1(const uint8_t* b, float* y) {  // d f16, m f16, qs[16]
  const float d = Half(b), m = Half(b + 2);
  for (int j = 0; j < 16; ++j) {
    y[j] = d * static_cast<float>(b[4 + j] & 0x0F) + m;
    y[j + 16] = d * static_cast<float>(b[4 + j] >> 4) + m;
  }
}

// Q5_0 / Q5_1: the fifth bit of element j is bit j of the u32 qh.
void DequantQ5_0(const uint8_t* b, float* y) {  // d f16, qh[4], qs[16]
  const float d = Half(b);
  uint32_t qh;
  std::memcpy(&qh, b + 2, 4);
  for (int j = 0; j < 32; ++j) {
    const int ql = j < 16 ? (b[6 + j] & 0x0F) : (b[6 + j - 16] >> 4);
    const int q = ql | static_cast<int>(((qh >> j) & 1u) << 4);
    y[j] = d * static_cast<float>(q - 16);
  }
}

void DequantQ5_1(const uint8_t* b, float* y) {  // d f16, m f16, qh[4], qs[16]
  const float d = Half(b), m = Half(b + 2);
  uint32_t qh;
  std::memcpy(&qh, b + 4, 4);
  for (int j = 0; j < 32; ++j) {
    const int ql = j < 16 ? (b[8 + j] & 0x0F) : (b[8 + j - 16] >> 4);
    const int q = ql | static_cast<int>(((qh >> j) & 1u) << 4);
    y[j] = d * static_cast<float>(q) + m;
  }
}

void DequantQ8_0(const uint8_t* b, float* y) {  // d f16, qs int8[32]
  const float d = Half(b);
  for (int j = 0; j < 32; ++j) y[j] = d * static_cast<float>(static_cast<int8_t>(b[2 + j]));
}

// The 6-bit scales and mins of Q4_K and Q5_K, packed in 12 bytes.
void ScaleMinK4(const uint8_t* s, int j, int* sc, int* m) {
  if (j < 4) {
    *sc = s[j] & 63;
    *m = s[j + 4] & 63;
  } else {
    *sc = (s[j + 4] & 0x0F) | ((s[j - 4] >> 6) << 4);
    *m = (s[j + 4] >> 4) | ((s[j] >> 6) << 4);
  }
}

void DequantQ4_K(const uint8_t* b, float* y) {  // d, dmin f16, scales[12], qs[128]
  const float d = Half(b), dmin = Half(b + 2);
  const uint8_t* scales = b + 4;
  const uint8_t* qs = b + 16;
  for (int s = 0; s < 8; ++s) {
    int sc, m;
    ScaleMinK4(scales, s, &sc, &m);
    const float ds = d * static_cast<float>(sc), dm = dmin * static_cast<float>(m);
    const uint8_t* q = qs + (s / 2) * 32;
    const int shift = (s % 2) * 4;
    for (int l = 0; l < 32; ++l) {
      y[s * 32 + l] = ds * static_cast<float>((q[l] >> shift) & 0x0F) - dm;
    }
  }
}

void DequantQ5_K(const uint8_t* b, float* y) {  // d, dmin, scales[12], qh[32], qs[128]
  const float d = Half(b), dmin = Half(b + 2);
  const uint8_t* scales = b + 4;
  const uint8_t* qh = b + 16;
  const uint8_t* qs = b + 48;
  for (int s = 0; s < 8; ++s) {
    int sc, m;
    ScaleMinK4(scales, s, &sc, &m);
    const float ds = d * static_cast<float>(sc), dm = dmin * static_cast<float>(m);
    const uint8_t* q = qs + (s / 2) * 32;
    const int shift = (s % 2) * 4;
    for (int l = 0; l < 32; ++l) {
      const int v = ((q[l] >> shift) & 0x0F) | (((qh[l] >> s) & 1) << 4);
      y[s * 32 + l] = ds * static_cast<float>(v) - dm;
    }
  }
}

void DequantQ6_K(const uint8_t* b, float* y) {  // ql[128], qh[64], scales int8[16], d f16
  const uint8_t* ql = b;
  const uint8_t* qh = b + 128;
  const auto* scales = reinterpret_cast<const int8_t*>(b + 192);
  const float d = Half(b + 208);
  for (int g = 0; g < 8; ++g) {  // groups of 32 elements
    const int h = g / 4, k = (g / 2) % 2, p0 = (g % 2) * 32, hk = g % 4;
    for (int l = 0; l < 32; ++l) {
      const int e = g * 32 + l;
      const int lo = (ql[h * 64 + p0 + l] >> (4 * k)) & 0x0F;
      const int hi = (qh[h * 32 + l] >> (2 * hk)) & 0x03;
      const float ds = d * static_cast<float>(scales[e / 16]);
      y[e] = ds * static_cast<float>((lo | (hi << 4)) - 32);
    }
  }
}

}  // namespace

std::optional<GgmlTypeInfo> FindGgmlType(uint32_t id) {
  for (const GgmlTypeInfo& t : kTypes) {
    if (static_cast<uint32_t>(t.type) == id) return t;
  }
  return std::nullopt;
}

std::string_view GgmlTypeName(GgmlType type) {
  std::optional<GgmlTypeInfo> t = FindGgmlType(static_cast<uint32_t>(type));
  return t ? t->name : "unknown";
}

void DequantizeGgml(GgmlType type, const uint8_t* data, int64_t num_elements, float* out) {
  const GgmlTypeInfo info = *FindGgmlType(static_cast<uint32_t>(type));
  const int64_t num_blocks = num_elements / info.block_elements;
  void (*block_fn)(const uint8_t*, float*) = nullptr;
  switch (type) {
    case GgmlType::kF32:
      std::memcpy(out, data, static_cast<size_t>(num_elements) * 4);
      return;
    case GgmlType::kF16:
#pragma omp parallel for schedule(static) if (num_elements >= (1 << 20))
      for (int64_t i = 0; i < num_elements; ++i) out[i] = Half(data + 2 * i);
      return;
    case GgmlType::kBF16:
#pragma omp parallel for schedule(static) if (num_elements >= (1 << 20))
      for (int64_t i = 0; i < num_elements; ++i) {
        bf16 v;
        std::memcpy(&v.bits, data + 2 * i, 2);
        out[i] = Bf16ToFloat(v);
      }
      return;
    case GgmlType::kQ4_0:
      block_fn = DequantQ4_0;
      break;
    case GgmlType::kQ4_1:
      block_fn = DequantQ4_1;
      break;
    case GgmlType::kQ5_0:
      block_fn = DequantQ5_0;
      break;
    case GgmlType::kQ5_1:
      block_fn = DequantQ5_1;
      break;
    case GgmlType::kQ8_0:
      block_fn = DequantQ8_0;
      break;
    case GgmlType::kQ4_K:
      block_fn = DequantQ4_K;
      break;
    case GgmlType::kQ5_K:
      block_fn = DequantQ5_K;
      break;
    case GgmlType::kQ6_K:
      block_fn = DequantQ6_K;
      break;
  }
#pragma omp parallel for schedule(static) if (num_blocks >= 4096)
  for (int64_t i = 0; i < num_blocks; ++i) {
    block_fn(data + i * info.block_bytes, out + i * info.block_elements);
  }
}

}  // namespace kvkeep
