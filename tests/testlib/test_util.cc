#include "tests/testlib/test_util.h"

#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <random>
#include <sstream>

namespace kvkeep::testing {

uint64_t TestSeed() {
  static const uint64_t seed = [] {
    const char* env = std::getenv("KVKEEP_TEST_SEED");
    uint64_t s = env ? std::strtoull(env, nullptr, 10) : std::random_device{}();
    std::fprintf(stderr, "[kvkeep] test seed %llu (set KVKEEP_TEST_SEED to replay)\n",
                 static_cast<unsigned long long>(s));
    return s;
  }();
  return seed;
}

int ScaledTimeoutMs(int timeout_ms) {
  static const double scale = [] {
    const char* env = std::getenv("KVKEEP_TEST_TIMEOUT_SCALE");
    const double s = env ? std::strtod(env, nullptr) : 1.0;
    return s >= 1.0 ? s : 1.0;
  }();
  return static_cast<int>(timeout_ms * scale);
}

TempDir::TempDir() {
  const char* tmp = std::getenv("TMPDIR");
  std::string templ = std::string(tmp && *tmp ? tmp : "/tmp") + "/kvkeep-test-XXXXXX";
  char* made = mkdtemp(templ.data());
  if (made == nullptr) std::abort();
  path_ = made;
}

TempDir::~TempDir() {
  std::error_code ec;
  std::filesystem::remove_all(path_, ec);
}

std::string SharedDataDir() {
  std::string dir = KVKEEP_SHARED_DATA_DIR;
  if (const char* env = std::getenv("KVKEEP_SHARED_DATA")) dir = env;
  return std::filesystem::is_directory(dir) ? dir : std::string();
}

std::string SourceDir() { return KVKEEP_SOURCE_DIR; }
std::string BinaryDir() { return KVKEEP_BINARY_DIR; }
std::string FixturesDir() { return std::string(KVKEEP_SOURCE_DIR) + "/tests/fixtures"; }

int Shell(const std::string& cmd) {
  const int rc = std::system(cmd.c_str());
  return WIFEXITED(rc) ? WEXITSTATUS(rc) : -1;
}

std::string Slurp(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

}  // namespace kvkeep::testing
