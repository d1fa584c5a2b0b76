#include "base/hash64.h"

#include <gtest/gtest.h>

namespace kvkeep {
namespace {

// Published reference values: the first output of a SplitMix64 generator seeded with 0
// (Vigna's splitmix64.c), and FNV-1a 64 of "" and "a" (the FNV reference test vectors).
TEST(Hash64, KnownAnswers) {
  EXPECT_EQ(SplitMix64(0), 0xe220a8397b1dcdafull);
  EXPECT_EQ(SplitMix64(0), Mix64(kGoldenGamma));
  EXPECT_EQ(Fnv1a64(""), 0xcbf29ce484222325ull);
  EXPECT_EQ(Fnv1a64("a"), 0xaf63dc4c8601ec8cull);
  EXPECT_NE(Mix64(1), Mix64(2));
}

}  // namespace
}  // namespace kvkeep
