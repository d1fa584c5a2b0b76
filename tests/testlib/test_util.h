// Helpers shared by the test suites: seeds, temp dirs, paths of fixtures and tools.
#pragma once

#include <cstdint>
#include <string>

namespace kvkeep::testing {

// A fresh random seed per run, printed so a failure can be replayed; KVKEEP_TEST_SEED
// overrides it.
uint64_t TestSeed();

// timeout_ms times KVKEEP_TEST_TIMEOUT_SCALE (default 1): sanitizer builds run the daemon
// several times slower (`make tsan` sets it), and a reply timeout is not what they check.
int ScaledTimeoutMs(int timeout_ms);

// A new empty directory under $TMPDIR, removed (recursively) by the destructor.
class TempDir {
 public:
  TempDir();
  ~TempDir();
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  const std::string& path() const { return path_; }
  std::string File(const std::string& name) const { return path_ + "/" + name; }

 private:
  std::string path_;
};

// ../shared/data, or empty when absent (tests then GTEST_SKIP with a clear message).
std::string SharedDataDir();
std::string SourceDir();    // the repository root
std::string BinaryDir();    // the build directory (kvkeep and kvkeepd live here)
std::string FixturesDir();  // tests/fixtures

// Runs cmd through /bin/sh; its exit status, or -1 when it did not exit normally.
int Shell(const std::string& cmd);
// The whole file, or "" when it cannot be read.
std::string Slurp(const std::string& path);

}  // namespace kvkeep::testing

// Skips the current test when ../shared/data is missing.
#define KVKEEP_REQUIRE_SHARED_DATA()                                                 \
  do {                                                                               \
    if (::kvkeep::testing::SharedDataDir().empty())                                  \
      GTEST_SKIP() << "../shared/data is absent (a user's clone has no ../shared); " \
                      "this test needs the shared third-party traces";               \
  } while (0)
