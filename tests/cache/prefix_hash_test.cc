// Tests of the persistent block hash (cache/prefix_hash.h).
//
// Known answers: computed once with an independent one-shot Python implementation of
// XXH64 written from the xxHash specification (not a port of the streaming C++ code):
//
//   import struct
//   M=(1<<64)-1; P1,P2,P3=0x9E3779B185EBCA87,0xC2B2AE3D27D4EB4F,0x165667B19E3779F9
//   P4,P5=0x85EBCA77C2B2AE63,0x27D4EB2F165667C5
//   rotl=lambda x,r:((x<<r)|(x>>(64-r)))&M
//   def rnd(a,i): return (rotl((a+i*P2)&M,31)*P1)&M
//   def merge(a,v): return (((a^rnd(0,v))*P1)+P4)&M
//   def xxh64(b,seed=0):
//     n=len(b); p=0
//     if n>=32:
//       v=[(seed+P1+P2)&M,(seed+P2)&M,seed,(seed-P1)&M]
//       while p+32<=n:
//         for k in range(4): v[k]=rnd(v[k],struct.unpack_from('<Q',b,p+8*k)[0])
//         p+=32
//       a=(rotl(v[0],1)+rotl(v[1],7)+rotl(v[2],12)+rotl(v[3],18))&M
//       for x in v: a=merge(a,x)
//     else: a=(seed+P5)&M
//     a=(a+n)&M
//     while p+8<=n: a=(rotl(a^rnd(0,struct.unpack_from('<Q',b,p)[0]),27)*P1+P4)&M; p+=8
//     if p+4<=n: a=(rotl(a^((struct.unpack_from('<I',b,p)[0]*P1)&M),23)*P2+P3)&M; p+=4
//     while p<n: a=(rotl(a^((b[p]*P5)&M),11)*P1)&M; p+=1
//     a^=a>>33; a=(a*P2)&M; a^=a>>29; a=(a*P3)&M; a^=a>>32
//     return a
//   def hash_block(parent,tokens,model,salt):
//     return xxh64(struct.pack('<QQQ',parent,model,salt)+
//                  b''.join(struct.pack('<i',t) for t in tokens))
//
// That implementation reproduces the published XXH64 vectors for "", "a" and "abc"
// (0xef46db3751d8e999, 0xd24ec4f1a98c6e5b, 0x44bc2cf5ad770999), which are also checked
// below against the C++ code.
#include "cache/prefix_hash.h"

#include <gtest/gtest.h>

#include <cstring>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "tests/testlib/test_util.h"

namespace kvkeep {
namespace {

uint64_t Xxh64Str(const std::string& s, uint64_t seed = 0) {
  return Xxh64(s.data(), s.size(), seed);
}

TEST(Xxh64Test, PublishedVectors) {
  EXPECT_EQ(Xxh64Str(""), 0xef46db3751d8e999ULL);
  EXPECT_EQ(Xxh64Str("a"), 0xd24ec4f1a98c6e5bULL);
  EXPECT_EQ(Xxh64Str("abc"), 0x44bc2cf5ad770999ULL);
}

TEST(Xxh64Test, IndependentPythonVectors) {
  EXPECT_EQ(Xxh64Str("abc", 1), 0xbea9ca8199328908ULL);  // xxh64(b'abc', 1)
  std::vector<uint8_t> bytes(64);
  std::iota(bytes.begin(), bytes.end(), 0);  // xxh64(bytes(range(64)))
  EXPECT_EQ(Xxh64(bytes.data(), bytes.size(), 0), 0xf7c67301db6713f0ULL);
  bytes.resize(100);  // xxh64(bytes((i*7)&255 for i in range(100)), 0x9E3779B97F4A7C15)
  for (int i = 0; i < 100; ++i) bytes[i] = static_cast<uint8_t>(i * 7);
  EXPECT_EQ(Xxh64(bytes.data(), bytes.size(), 0x9E3779B97F4A7C15ULL), 0x783447aa4f00d046ULL);
}

TEST(PrefixHashTest, RootConstantIsDocumentedAscii) {
  const char text[] = "kvkeep/0";
  uint64_t le = 0;
  for (int i = 7; i >= 0; --i) le = (le << 8) | static_cast<uint8_t>(text[i]);
  EXPECT_EQ(kRootParentHash.value, le);
}

TEST(PrefixHashTest, KnownAnswers) {
  // hash_block(...) and xxh64(b'kvkeep-test-model') from the Python above.
  const uint64_t model = HashModelId("kvkeep-test-model");
  EXPECT_EQ(model, 0x422231e5759c26c1ULL);
  std::vector<int32_t> t0(16);
  std::iota(t0.begin(), t0.end(), 0);
  const BlockHash b0 = HashBlock(kRootParentHash, t0, model, 42);
  EXPECT_EQ(b0.value, 0x62d6cf73dcc1e5f4ULL);
  const std::vector<int32_t> t1 = {-1, 0,  2147483647, -2147483648, 5,  6,  7,  8,
                                   9,  10, 11,         12,          13, 14, 15, 16};
  EXPECT_EQ(HashBlock(b0, t1, model, 42).value, 0x5ec5f1a606ffb587ULL);
  EXPECT_EQ(HashBlock(kRootParentHash, {}, 0, 0).value, 0x34c8675df22921fULL);
}

TEST(PrefixHashTest, MatchesXxh64OfSerializedMessage) {
  // The documented framing, serialized by hand and hashed with the one-shot function.
  std::mt19937_64 rng(testing::TestSeed());
  for (int len : {0, 1, 3, 5, 16, 17, 64, 100}) {
    std::vector<int32_t> tokens(len);
    for (int32_t& t : tokens) t = static_cast<int32_t>(rng());
    const uint64_t parent = rng(), model = rng(), salt = rng();
    std::vector<uint8_t> msg;
    auto put = [&msg](uint64_t v, int n) {
      for (int i = 0; i < n; ++i) msg.push_back(static_cast<uint8_t>(v >> (8 * i)));
    };
    put(parent, 8);
    put(model, 8);
    put(salt, 8);
    for (int32_t t : tokens) put(static_cast<uint32_t>(t), 4);
    EXPECT_EQ(HashBlock(BlockHash{parent}, tokens, model, salt).value,
              Xxh64(msg.data(), msg.size(), 0))
        << "len " << len;
  }
}

TEST(PrefixHashTest, DeterministicAndSensitiveToEveryInput) {
  std::mt19937_64 rng(testing::TestSeed());
  std::vector<int32_t> tokens(16);
  for (int32_t& t : tokens) t = static_cast<int32_t>(rng() % 50000);
  const BlockHash parent{rng()};
  const uint64_t model = HashModelId("m"), salt = 7;
  const BlockHash base = HashBlock(parent, tokens, model, salt);
  EXPECT_EQ(base, HashBlock(parent, tokens, model, salt));
  EXPECT_EQ(base, HashBlock(parent, tokens, HashScope{model, salt}));

  EXPECT_NE(base, HashBlock(BlockHash{parent.value ^ 1}, tokens, model, salt));
  EXPECT_NE(base, HashBlock(parent, tokens, model ^ (1ULL << 63), salt));
  EXPECT_NE(base, HashBlock(parent, tokens, HashModelId("m2"), salt));
  EXPECT_NE(base, HashBlock(parent, tokens, model, salt + 1));
  for (size_t i = 0; i < tokens.size(); ++i) {
    std::vector<int32_t> changed = tokens;
    changed[i] += 1;
    EXPECT_NE(base, HashBlock(parent, changed, model, salt)) << "token " << i;
  }
  // Order matters, and a shorter block is a different message.
  std::vector<int32_t> swapped = tokens;
  std::swap(swapped[0], swapped[1]);
  if (swapped != tokens) {
    EXPECT_NE(base, HashBlock(parent, swapped, model, salt));
  }
  EXPECT_NE(base, HashBlock(parent, std::span(tokens).first(15), model, salt));
  EXPECT_NE(HashModelId("a"), HashModelId("b"));
  EXPECT_NE(HashModelId(""), HashModelId(std::string_view("\0", 1)));
}

}  // namespace
}  // namespace kvkeep
