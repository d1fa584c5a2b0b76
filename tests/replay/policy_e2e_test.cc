// End to end, issue 15: 8 real mini-swe-agent (deepseek) traces replayed concurrently on
// kvkeepd with the tiny model, tool times scaled down, under a device pool too small for
// every agent at once, once per policy (`kvkeep replay run --spawn`). Every policy that
// reuses KV must recompute far fewer tokens than none. The learned TTL policy's figures
// against lru and Continuum's fixed-ttl rule are printed, not asserted: on this workload
// the three differ by a few percent either way from run to run (ttl lost to lru in 1 of 5
// runs and to fixed-ttl in 3 of 5). Issue 15 asks for ttl < fixed-ttl and ttl < lru; that
// target is missed, and bench/RESULTS.md's policy benchmark shows why. Skips without
// ../shared/data.
#include <gtest/gtest.h>

#include <unistd.h>

#include <cstdio>
#include <map>
#include <nlohmann/json.hpp>

#include "tests/testlib/test_util.h"

namespace kvkeep::replay {
namespace {

using nlohmann::json;

using testing::Shell;
using testing::Slurp;

TEST(PolicyEndToEnd, EveryReusingPolicyRecomputesFarLessThanNone) {
  KVKEEP_REQUIRE_SHARED_DATA();
  const std::string bin = testing::BinaryDir();
  if (access((bin + "/kvkeepd").c_str(), X_OK) != 0) GTEST_SKIP() << "kvkeepd is not built";
  testing::TempDir dir;
  const std::string kvkeep = bin + "/kvkeep";
  ASSERT_EQ(Shell(kvkeep + " make-model --preset tiny --seed 7 --out " + dir.File("model") +
                  " > /dev/null"),
            0);
  const std::string d = testing::SharedDataDir() + "/traces/mini-swe-agent-v2-deepseek/";
  std::string files;
  for (const char* t : {"astropy__astropy-12907", "astropy__astropy-14182",
                        "astropy__astropy-14365", "astropy__astropy-14995", "django__django-10914",
                        "django__django-11099", "django__django-13658", "django__django-11133"}) {
    files += " " + d + t + ".traj.json";
  }
  ASSERT_EQ(Shell(kvkeep + " replay import --quiet --from mini-swe-agent" + files + " > " +
                  dir.File("trace.jsonl")),
            0);
  const std::string out = dir.File("out");
  // 8 agents of up to 1500 context tokens each need about 8 * 1500 / 16 = 750 blocks;
  // the pool has 250. Recorded tool waits are scaled by 0.1. (2-core dev machine,
  // 2026-12-05, shared with three builds: ttl 22,198 recomputed tokens, fixed-ttl 24,408,
  // lru 23,667, none 143,965; 14.5 minutes in all.)
  const std::string cmd = kvkeep + " replay run " + dir.File("trace.jsonl") + " --out " + out +
                          " --spawn --model " + dir.File("model") +
                          " --policy ttl,fixed-ttl,lru,none --agents 8 --max-turns 4"
                          " --max-prompt-tokens 1500 --time-scale 0.1 --no-plots"
                          " -- --num-kv-blocks 250";
  ASSERT_EQ(Shell(cmd + " > " + dir.File("stdout.txt") + " 2> " + dir.File("stderr.txt")), 0)
      << Slurp(dir.File("stderr.txt"));
  const json report = json::parse(Slurp(out + "/report.json"));
  std::map<std::string, int64_t> recomputed;
  std::printf("%-10s %12s %12s %10s\n", "policy", "recomputed", "cached", "hit_ratio");
  for (const char* p : {"ttl", "fixed-ttl", "lru", "none"}) {
    ASSERT_TRUE(report["policies"].contains(p)) << report.dump();
    const json& s = report["policies"][p];
    EXPECT_EQ(s["failed_sessions"].get<int>(), 0) << p << Slurp(out + "/sessions.csv");
    recomputed[p] = s["recomputed_tokens"].get<int64_t>();
    std::printf("%-10s %12lld %12lld %10.3f\n", p, static_cast<long long>(recomputed[p]),
                static_cast<long long>(s["cached_tokens"].get<int64_t>()),
                s["hit_ratio"].get<double>());
  }
  std::printf("ttl / fixed-ttl recomputed: %.3f, ttl / lru: %.3f (not asserted; see the header)\n",
              double(recomputed["ttl"]) / double(recomputed["fixed-ttl"]),
              double(recomputed["ttl"]) / double(recomputed["lru"]));
  for (const char* p : {"ttl", "fixed-ttl", "lru"}) {
    EXPECT_LT(2 * recomputed[p], recomputed["none"]) << p;
  }
}

}  // namespace
}  // namespace kvkeep::replay
