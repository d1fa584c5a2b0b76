// End to end, issue 15: 8 real mini-swe-agent (deepseek) traces replayed concurrently on
// kvkeepd with the tiny model, tool times scaled down, under a device pool too small for
// every agent at once, once per policy (`kvkeep replay run --spawn`). `--time-scale`
// scales the policies' time knobs with the tool waits (fixed-ttl's 2 s pin and 2 s mean
// threshold, the TTL rule's 30 s cap and 5 s prior), so both rules see the same workload
// in the same units. Asserts that the learned TTL policy recomputes fewer tokens than lru
// and lru fewer than none (docs/policy.md, "End to end"). Issue 15 also asks for ttl <
// fixed-ttl: it held in 10 of the 14 runs docs/policy.md records (ratios 0.81-1.23), so
// it is printed, not asserted. The rules part mainly on `pip` calls (mean over 2 s); a
// 12-turn setup that reaches them (`--max-message-tokens`) gave ratios 0.94-1.81 over
// seven pool sizes and knobs: what ttl saves by pinning them, the other agents lose
// while the blocks are held (docs/policy.md, "Looking for a workload"). Skips without
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

TEST(PolicyEndToEnd, TtlRecomputesLessThanLruAndLruLessThanNone) {
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
  // the pool has 250, about four agents' worth. Recorded tool waits are scaled by 0.1, and
  // with them the policies' time knobs. Five runs on the 2-core dev machine (load 12-15,
  // 2026-12-06), recomputed tokens ttl / fixed-ttl / lru / none: see docs/policy.md.
  const std::string cmd = kvkeep + " replay run " + dir.File("trace.jsonl") + " --out " + out +
                          " --spawn --model " + dir.File("model") +
                          " --policy ttl,fixed-ttl,lru,none --agents 8 --max-turns 4"
                          " --max-prompt-tokens 1500 --time-scale 0.1 --seed 1 --no-plots"
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
  std::printf(
      "ttl / fixed-ttl recomputed: %.3f (not asserted; see the header), ttl / lru: %.3f, "
      "lru / none: %.3f\n",
      double(recomputed["ttl"]) / double(recomputed["fixed-ttl"]),
      double(recomputed["ttl"]) / double(recomputed["lru"]),
      double(recomputed["lru"]) / double(recomputed["none"]));
  EXPECT_LT(recomputed["ttl"], recomputed["lru"]);
  EXPECT_LT(recomputed["lru"], recomputed["none"]);
}

}  // namespace
}  // namespace kvkeep::replay
