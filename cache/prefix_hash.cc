#include "cache/prefix_hash.h"

#include <bit>
#include <cstring>

namespace kvkeep {
namespace {

// XXH64 constants and rounds, as in the xxHash specification.
constexpr uint64_t kPrime1 = 0x9E3779B185EBCA87ULL;
constexpr uint64_t kPrime2 = 0xC2B2AE3D27D4EB4FULL;
constexpr uint64_t kPrime3 = 0x165667B19E3779F9ULL;
constexpr uint64_t kPrime4 = 0x85EBCA77C2B2AE63ULL;
constexpr uint64_t kPrime5 = 0x27D4EB2F165667C5ULL;

uint64_t Rotl(uint64_t x, int r) { return (x << r) | (x >> (64 - r)); }

uint64_t Round(uint64_t acc, uint64_t input) {
  acc += input * kPrime2;
  return Rotl(acc, 31) * kPrime1;
}

uint64_t MergeRound(uint64_t acc, uint64_t val) {
  acc ^= Round(0, val);
  return acc * kPrime1 + kPrime4;
}

// Little-endian loads, independent of host byte order.
uint64_t Load64(const uint8_t* p) {
  uint64_t v;
  std::memcpy(&v, p, sizeof(v));
  if constexpr (std::endian::native == std::endian::big) v = __builtin_bswap64(v);
  return v;
}
uint32_t Load32(const uint8_t* p) {
  uint32_t v;
  std::memcpy(&v, p, sizeof(v));
  if constexpr (std::endian::native == std::endian::big) v = __builtin_bswap32(v);
  return v;
}
void Store64(uint64_t v, uint8_t* p) {
  for (int i = 0; i < 8; ++i) p[i] = static_cast<uint8_t>(v >> (8 * i));
}
void Store32(uint32_t v, uint8_t* p) {
  for (int i = 0; i < 4; ++i) p[i] = static_cast<uint8_t>(v >> (8 * i));
}

// Streaming XXH64, so HashBlock needs no buffer for the whole message.
class Xxh64State {
 public:
  explicit Xxh64State(uint64_t seed)
      : seed_(seed), v_{seed + kPrime1 + kPrime2, seed + kPrime2, seed, seed - kPrime1} {}

  void Update(const uint8_t* p, size_t n) {
    if (n == 0) return;  // p may be null (an empty span); memcpy forbids it even for 0 bytes
    total_ += n;
    if (buffered_ + n < 32) {
      std::memcpy(buf_ + buffered_, p, n);
      buffered_ += n;
      return;
    }
    if (buffered_ > 0) {
      size_t fill = 32 - buffered_;
      std::memcpy(buf_ + buffered_, p, fill);
      Stripe(buf_);
      p += fill;
      n -= fill;
      buffered_ = 0;
    }
    for (; n >= 32; p += 32, n -= 32) Stripe(p);
    std::memcpy(buf_, p, n);
    buffered_ = n;
  }

  uint64_t Digest() const {
    uint64_t acc;
    if (total_ >= 32) {
      acc = Rotl(v_[0], 1) + Rotl(v_[1], 7) + Rotl(v_[2], 12) + Rotl(v_[3], 18);
      for (uint64_t v : v_) acc = MergeRound(acc, v);
    } else {
      acc = seed_ + kPrime5;
    }
    acc += total_;
    const uint8_t* p = buf_;
    size_t n = buffered_;
    for (; n >= 8; p += 8, n -= 8) acc = Rotl(acc ^ Round(0, Load64(p)), 27) * kPrime1 + kPrime4;
    if (n >= 4) {
      acc = Rotl(acc ^ (uint64_t{Load32(p)} * kPrime1), 23) * kPrime2 + kPrime3;
      p += 4;
      n -= 4;
    }
    for (; n > 0; ++p, --n) acc = Rotl(acc ^ (*p * kPrime5), 11) * kPrime1;
    acc ^= acc >> 33;
    acc *= kPrime2;
    acc ^= acc >> 29;
    acc *= kPrime3;
    acc ^= acc >> 32;
    return acc;
  }

 private:
  void Stripe(const uint8_t* p) {
    for (int i = 0; i < 4; ++i) v_[i] = Round(v_[i], Load64(p + 8 * i));
  }

  uint64_t seed_;
  uint64_t v_[4];
  uint8_t buf_[32];
  size_t buffered_ = 0;
  uint64_t total_ = 0;
};

}  // namespace

uint64_t Xxh64(const void* data, size_t num_bytes, uint64_t seed) {
  Xxh64State state(seed);
  state.Update(static_cast<const uint8_t*>(data), num_bytes);
  return state.Digest();
}

uint64_t HashModelId(std::string_view model_id) {
  return Xxh64(model_id.data(), model_id.size(), 0);
}

BlockHash HashBlock(BlockHash parent, std::span<const int32_t> tokens, uint64_t model_id_hash,
                    uint64_t tenant_salt) {
  Xxh64State state(0);
  uint8_t header[24];
  Store64(parent.value, header);
  Store64(model_id_hash, header + 8);
  Store64(tenant_salt, header + 16);
  state.Update(header, sizeof(header));
  if constexpr (std::endian::native == std::endian::little) {
    state.Update(reinterpret_cast<const uint8_t*>(tokens.data()), tokens.size_bytes());
  } else {
    uint8_t token[4];
    for (int32_t t : tokens) {
      Store32(static_cast<uint32_t>(t), token);
      state.Update(token, sizeof(token));
    }
  }
  return BlockHash{state.Digest()};
}

}  // namespace kvkeep
