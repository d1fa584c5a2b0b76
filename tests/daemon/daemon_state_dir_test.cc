// The state directory: one daemon at a time (flock), private modes for the directory and
// everything the daemon creates in it, and a loose pre-existing directory tightened.
#include <sys/stat.h>

#include <csignal>

#include "daemon/state_dir.h"
#include "tests/daemon/daemon_harness.h"

namespace kvkeep::testing {
namespace {

mode_t ModeOf(const std::string& path) {
  struct stat st;
  if (::stat(path.c_str(), &st) != 0) return 07777;  // absent: fails every private check
  return st.st_mode & 07777;
}

TEST(StateDirTest, SecondOpenOfTheSameDirectoryIsRefusedUntilTheFirstCloses) {
  TempDir dir;
  const std::string path = dir.File("state");
  auto first = StateDir::Open(path);
  ASSERT_TRUE(first.ok()) << first.status().ToString();
  auto second = StateDir::Open(path);  // flock is per open file: conflicts in-process too
  ASSERT_FALSE(second.ok());
  EXPECT_EQ(second.status().code(), StatusCode::kUnavailable);
  EXPECT_NE(second.status().message().find("pid " + std::to_string(getpid())), std::string::npos)
      << second.status().ToString();
  first->reset();
  auto third = StateDir::Open(path);
  EXPECT_TRUE(third.ok()) << third.status().ToString();
  EXPECT_EQ(ModeOf(path), 0700u);
  EXPECT_EQ(ModeOf(path + "/" + StateDir::kLockFileName), 0600u);
}

TEST(StateDirTest, LooseDirectoryAndFilesAreTightened) {
  TempDir dir;
  const std::string path = dir.File("state");
  ASSERT_EQ(::mkdir(path.c_str(), 0755), 0);
  ASSERT_EQ(::chmod(path.c_str(), 0755), 0);
  ASSERT_TRUE(DefaultEnv()->WriteFileAtomic(path + "/kvkeep.db", "").ok());
  ASSERT_EQ(::chmod((path + "/kvkeep.db").c_str(), 0644), 0);
  auto sd = StateDir::Open(path);
  ASSERT_TRUE(sd.ok()) << sd.status().ToString();
  EXPECT_EQ(ModeOf(path), 0700u);
  EXPECT_EQ(ModeOf(path + "/kvkeep.db"), 0600u);
}

TEST(StateDirTest, DirectoryOfAnotherUidIsRefused) {
  if (::geteuid() != 0) GTEST_SKIP() << "needs root to chown a directory to another uid";
  TempDir dir;
  const std::string path = dir.File("state");
  ASSERT_EQ(::mkdir(path.c_str(), 0700), 0);
  ASSERT_EQ(::chown(path.c_str(), 65534, 65534), 0);
  auto sd = StateDir::Open(path);
  ASSERT_FALSE(sd.ok());
  EXPECT_EQ(sd.status().code(), StatusCode::kPermissionDenied) << sd.status().ToString();
}

TEST(DaemonStateDirTest, SecondDaemonOnTheSameStateDirRefusesAndTheFirstKeepsServing) {
  TempDir dir;
  const std::string state = dir.File("state");
  DaemonProcess first(dir.File("a.sock"), state);
  ASSERT_TRUE(first.Start()) << first.Log();
  {
    LineClient c(first.socket_path());
    c.Ok({{"id", 1}, {"verb", "session.open"}, {"session", "s"}, {"system", "kept"}});
  }
  DaemonProcess second(dir.File("b.sock"), state);
  EXPECT_FALSE(second.Start());
  EXPECT_NE(second.Log().find("in use by another kvkeepd"), std::string::npos) << second.Log();
  LineClient c(first.socket_path());
  json info = c.Ok({{"id", 2}, {"verb", "session.info"}, {"session", "s"}});
  ASSERT_TRUE(info.is_object());
  EXPECT_EQ(info["messages"][0]["content"], "kept");
}

TEST(DaemonStateDirTest, EverythingTheDaemonCreatesIsPrivate) {
  TempDir dir;
  const std::string state = dir.File("state");
  ASSERT_EQ(::mkdir(state.c_str(), 0755), 0);
  ASSERT_EQ(::chmod(state.c_str(), 0755), 0);  // as a careless operator left it
  DaemonProcess d(dir.File("s.sock"), state);
  ASSERT_TRUE(d.Start()) << d.Log();
  LineClient c(d.socket_path());
  c.Ok({{"id", 1}, {"verb", "session.open"}, {"session", "s"}, {"system", "secret"}});
  EXPECT_EQ(ModeOf(state), 0700u);
  for (const char* f : {"kvkeep.db", "kvkeep.db-wal", "kvkeep.db-shm"}) {
    EXPECT_EQ(ModeOf(state + "/" + f), 0600u) << f;
  }
  EXPECT_NE(d.Log().find("changed to 0700"), std::string::npos) << d.Log();
  EXPECT_EQ(d.Kill(SIGTERM), 0);
}

// Issue 11, defect 9: a 0-byte database started empty in silence (every session gone).
TEST(DaemonStateDirTest, AZeroByteDatabaseStartsEmptyWithAWarning) {
  TempDir dir;
  const std::string state = dir.File("state");
  {  // control: a fresh state directory says nothing of the kind
    DaemonProcess fresh(dir.File("f.sock"), dir.File("fresh"));
    ASSERT_TRUE(fresh.Start()) << fresh.Log();
    fresh.Kill(SIGTERM);
    EXPECT_EQ(fresh.Log().find("is empty (0 bytes)"), std::string::npos) << fresh.Log();
  }
  ASSERT_EQ(::mkdir(state.c_str(), 0700), 0);
  ASSERT_TRUE(DefaultEnv()->WriteFileAtomic(state + "/kvkeep.db", "").ok());
  ASSERT_EQ(::chmod((state + "/kvkeep.db").c_str(), 0600), 0);
  DaemonProcess d(dir.File("s.sock"), state);
  ASSERT_TRUE(d.Start()) << d.Log();
  EXPECT_NE(d.Log().find("kvkeep.db is empty (0 bytes): starting with no sessions"),
            std::string::npos)
      << d.Log();
  LineClient c(d.socket_path());
  EXPECT_TRUE(c.Ok({{"id", 1}, {"verb", "sessions.list"}})["sessions"].empty());
}

}  // namespace
}  // namespace kvkeep::testing
