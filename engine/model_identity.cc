#include "engine/model_identity.h"

#include <fmt/format.h>

#include <algorithm>
#include <cstring>

#include "cache/prefix_hash.h"
#include "engine/model_weights.h"

namespace kvkeep {
namespace {

constexpr size_t kWindowBytes = 4096;
constexpr size_t kNumWindows = 16;

// Appends fixed-width little-endian fields and length-prefixed strings (injective).
class Message {
 public:
  void U64(uint64_t v) {
    for (int i = 0; i < 8; ++i) bytes_.push_back(static_cast<char>((v >> (8 * i)) & 0xff));
  }
  void I64(int64_t v) { U64(static_cast<uint64_t>(v)); }
  void F32(float f) {
    uint32_t bits;
    std::memcpy(&bits, &f, sizeof(bits));
    U64(bits);
  }
  void Str(std::string_view s) {
    U64(s.size());
    bytes_.append(s);
  }
  const std::string& bytes() const { return bytes_; }

 private:
  std::string bytes_;
};

uint64_t ContentSample(const TensorView& t) {
  if (t.num_bytes <= kWindowBytes * kNumWindows) return Xxh64(t.data, t.num_bytes, 0);
  uint64_t h = 0;
  const size_t stride = (t.num_bytes - kWindowBytes) / (kNumWindows - 1);
  for (size_t w = 0; w < kNumWindows; ++w) h = Xxh64(t.data + w * stride, kWindowBytes, h);
  return h;
}

}  // namespace

std::string ModelIdentity(const ModelConfig& c, const ModelWeights& weights) {
  Message m;
  m.Str("kvkeep-model/1");
  m.Str(c.architecture);
  m.Str(c.model_type);
  for (int64_t v :
       {int64_t{c.vocab_size}, int64_t{c.hidden_size}, int64_t{c.intermediate_size},
        int64_t{c.num_layers}, int64_t{c.num_q_heads}, int64_t{c.num_kv_heads}, int64_t{c.head_dim},
        int64_t{c.max_position_embeddings}, int64_t{c.sliding_window},
        int64_t{c.tie_word_embeddings}, int64_t{c.attention_bias}, int64_t{c.qk_norm}}) {
    m.I64(v);
  }
  m.F32(c.rms_norm_eps);
  m.F32(c.rope.theta);
  m.F32(c.rope.factor);
  m.F32(c.rope.low_freq_factor);
  m.F32(c.rope.high_freq_factor);
  m.I64(c.rope.original_max_position);
  m.I64(c.rope.rotary_dim);
  m.U64(weights.tensors().size());
  for (const auto& [name, tensor] : weights.tensors()) {  // std::map: name order
    m.Str(name);
    m.Str(DTypeName(tensor->dtype));
    m.U64(tensor->shape.size());
    for (int64_t d : tensor->shape) m.I64(d);
    m.U64(ContentSample(*tensor));
  }
  return fmt::format("{:016x}", Xxh64(m.bytes().data(), m.bytes().size(), 0));
}

}  // namespace kvkeep
