#include "base/status.h"

#include <gtest/gtest.h>

#include "base/clock.h"
#include "base/file.h"
#include "tests/testlib/test_util.h"

namespace kvkeep {
namespace {

Result<int> Half(int x) {
  if (x % 2 != 0) return Status::InvalidArgument("odd");
  return x / 2;
}

Result<int> Quarter(int x) {
  ASSIGN_OR_RETURN(int h, Half(x));
  ASSIGN_OR_RETURN(int q, Half(h));
  return q;
}

TEST(Status, OkIsCheapAndNamed) {
  Status ok;
  EXPECT_TRUE(ok.ok());
  EXPECT_EQ(ok.ToString(), "OK");
  Status bad = Status::NotFound("session s1");
  EXPECT_FALSE(bad.ok());
  EXPECT_TRUE(bad.IsNotFound());
  EXPECT_EQ(bad.ToString(), "not_found: session s1");
  EXPECT_EQ(bad.WithContext("open").message(), "open: session s1");
  Status copy = bad;
  EXPECT_EQ(copy.code(), StatusCode::kNotFound);
}

TEST(Result, PropagatesErrors) {
  EXPECT_EQ(*Quarter(8), 2);
  Result<int> r = Quarter(6);
  ASSERT_FALSE(r.ok());
  EXPECT_TRUE(r.status().IsInvalidArgument());
  Result<int> from_ok = Status::OK();
  EXPECT_EQ(from_ok.status().code(), StatusCode::kInternal);
}

TEST(FakeClock, MovesOnlyWhenTold) {
  FakeClock clock(5);
  EXPECT_EQ(clock.NowMicros(), 5);
  clock.AdvanceMicros(10);
  EXPECT_EQ(clock.NowMicros(), 15);
  EXPECT_GT(SystemClock()->NowMicros(), 0);
}

TEST(Env, AtomicWriteReadAndFaults) {
  testing::TempDir dir;
  Env* env = DefaultEnv();
  ASSERT_TRUE(env->CreateDirs(dir.File("a/b")).ok());
  ASSERT_TRUE(env->WriteFileAtomic(dir.File("a/b/x"), "hello").ok());
  EXPECT_EQ(*env->ReadFile(dir.File("a/b/x")), "hello");
  EXPECT_TRUE(env->ReadFile(dir.File("missing")).status().IsNotFound());
  auto mapped = env->MapFile(dir.File("a/b/x"));
  ASSERT_TRUE(mapped.ok());
  EXPECT_EQ((*mapped)->size(), 5u);

  FaultInjectionEnv faulty(env);
  faulty.FailAfter(2);
  EXPECT_TRUE(faulty.ReadFile(dir.File("a/b/x")).ok());
  EXPECT_EQ(faulty.ReadFile(dir.File("a/b/x")).status().code(), StatusCode::kIOError);
  EXPECT_TRUE(faulty.ReadFile(dir.File("a/b/x")).ok());
}

}  // namespace
}  // namespace kvkeep
