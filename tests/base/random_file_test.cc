#include <gtest/gtest.h>

#include <cstring>
#include <string>

#include "base/file.h"
#include "tests/testlib/test_util.h"

namespace kvkeep {
namespace {

TEST(RandomRWFile, PositionedWritesAndReadsRoundTrip) {
  testing::TempDir dir;
  const std::string path = JoinPath(dir.path(), "blocks");
  Env* env = DefaultEnv();
  EXPECT_EQ(env->OpenRandomRWFile(path, false).status().code(), StatusCode::kNotFound);
  auto file = env->OpenRandomRWFile(path, true);
  ASSERT_TRUE(file.ok()) << file.status().ToString();
  const std::string a = "hello", b = "world";
  ASSERT_TRUE((*file)->WriteAt(100, b.data(), b.size()).ok());
  ASSERT_TRUE((*file)->WriteAt(0, a.data(), a.size()).ok());
  EXPECT_EQ(*(*file)->Size(), 105u);
  char got[6] = {};
  ASSERT_TRUE((*file)->ReadAt(100, got, 5).ok());
  EXPECT_EQ(std::string(got), "world");
  ASSERT_TRUE((*file)->ReadAt(0, got, 5).ok());
  EXPECT_EQ(std::string(got), "hello");
  // Reading past the end is a short read, reported as corruption.
  EXPECT_EQ((*file)->ReadAt(102, got, 5).code(), StatusCode::kCorruption);
  // Rename replaces the target.
  const std::string moved = JoinPath(dir.path(), "moved");
  ASSERT_TRUE(env->RenameFile(path, moved).ok());
  EXPECT_FALSE(env->FileExists(path));
  EXPECT_TRUE(env->FileExists(moved));
}

TEST(RandomRWFile, FaultInjectionCountsEveryPositionedCall) {
  testing::TempDir dir;
  FaultInjectionEnv env(DefaultEnv());
  env.FailAfter(3);  // open = 1, write = 2, read = 3 fails
  auto file = env.OpenRandomRWFile(JoinPath(dir.path(), "f"), true);
  ASSERT_TRUE(file.ok());
  const char data[4] = {1, 2, 3, 4};
  ASSERT_TRUE((*file)->WriteAt(0, data, 4).ok());
  char got[4];
  EXPECT_EQ((*file)->ReadAt(0, got, 4).code(), StatusCode::kIOError);
  ASSERT_TRUE((*file)->ReadAt(0, got, 4).ok());  // not sticky
  EXPECT_EQ(std::memcmp(got, data, 4), 0);
}

}  // namespace
}  // namespace kvkeep
