// End to end, issue 15: 8 real mini-swe-agent (deepseek) traces replayed concurrently on
// kvkeepd with the tiny model, under a device pool too small for every agent at once,
// once per policy (`kvkeep replay run --spawn`): the same traces, pool and flags for every
// policy of a test, each policy on a fresh daemon over its real socket. docs/policy.md
// ("End to end") has every setup measured. Skips without ../shared/data.
//
// TtlRecomputesLessThanLruAndLruLessThanNone: 4 model turns of 8 traces, contexts clipped
// at 1,500 tokens, tool waits scaled by 0.1, 250 blocks: nearly every tool is short, so
// both pinning rules pin nearly everything and part only by noise; ttl < lru < none.
//
// DISABLED_TtlRecomputesLessThanFixedTtlWhereTheRulesPart (issue 15's ttl < fixed-ttl; not in
// CI: it held in 12 of 16 runs, ratios 0.75-1.19, and in 3 of 4 with reclaim victims
// evicted first, 0.82-1.02; docs/policy.md and bench/RESULTS.md; run it with
// --gtest_also_run_disabled_tests): the workload where the two rules part.
// The eight traces that call `pip` (recorded 1.4-13.5 s) by their 11th model turn, 12
// turns each, messages clipped to 64 tokens so the turns fit the tiny model, tool times
// unscaled, 600 blocks. Every daemon starts with the tool times of the other 17 deepseek
// traces in its store (`--tool-history`: what it would have learned serving them), so
// `fixed-ttl` knows from the first call that `pip`'s mean is over its 2 s threshold and
// never pins it, while `ttl` pins it up to the quantile its rule picks; every daemon prices
// a hit with the tiny model's CPU cost model (`--cost-model`, tests/fixtures/policy).
#include <gtest/gtest.h>

#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <map>
#include <nlohmann/json.hpp>
#include <set>

#include "base/file.h"
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

TEST(PolicyEndToEnd, DISABLED_TtlRecomputesLessThanFixedTtlWhereTheRulesPart) {
  KVKEEP_REQUIRE_SHARED_DATA();
  const std::string bin = testing::BinaryDir();
  if (access((bin + "/kvkeepd").c_str(), X_OK) != 0) GTEST_SKIP() << "kvkeepd is not built";
  testing::TempDir dir;
  const std::string kvkeep = bin + "/kvkeep";
  ASSERT_EQ(Shell(kvkeep + " make-model --preset tiny --seed 7 --out " + dir.File("model") +
                  " > /dev/null"),
            0);
  const std::string d = testing::SharedDataDir() + "/traces/mini-swe-agent-v2-deepseek";
  const std::set<std::string> replayed = {"django__django-11099", "django__django-11133",
                                          "django__django-11179", "django__django-12125",
                                          "django__django-13033", "django__django-13401",
                                          "django__django-13590", "astropy__astropy-14365"};
  std::string files, history;
  Result<std::vector<std::string>> names = DefaultEnv()->ListDir(d);
  ASSERT_TRUE(names.ok()) << names.status().ToString();
  std::sort(names->begin(), names->end());
  for (const std::string& name : *names) {
    const size_t dot = name.find(".traj.json");
    if (dot == std::string::npos) continue;
    (replayed.count(name.substr(0, dot)) ? files : history) += " " + d + "/" + name;
  }
  ASSERT_EQ(std::count(files.begin(), files.end(), ' '), 8) << files;
  ASSERT_FALSE(history.empty());
  for (const auto& [list, out] : {std::pair{files, "trace.jsonl"}, {history, "history.jsonl"}}) {
    ASSERT_EQ(Shell(kvkeep + " replay import --quiet --from mini-swe-agent" + list + " > " +
                    dir.File(out)),
              0);
  }
  const std::string out = dir.File("out");
  // 8 agents reach 1.0-1.8k tokens by turn 12, 65-115 blocks each (about 800 in all); the
  // pool has 600.
  const std::string cmd =
      kvkeep + " replay run " + dir.File("trace.jsonl") + " --out " + out + " --spawn --model " +
      dir.File("model") +
      " --policy ttl,fixed-ttl --agents 8 --max-turns 12 --max-prompt-tokens 2400"
      " --max-message-tokens 64 --time-scale 1 --seed 1 --no-plots --tool-history " +
      dir.File("history.jsonl") + " --cost-model " + testing::FixturesDir() +
      "/policy/cost_model_tiny_cpu.json -- --num-kv-blocks 600";
  ASSERT_EQ(Shell(cmd + " > " + dir.File("stdout.txt") + " 2> " + dir.File("stderr.txt")), 0)
      << Slurp(dir.File("stderr.txt"));
  const json report = json::parse(Slurp(out + "/report.json"));
  std::map<std::string, int64_t> recomputed;
  std::printf("%-10s %12s %12s %10s %18s\n", "policy", "recomputed", "cached", "hit_ratio",
              "pins used/exp/vio");
  for (const char* p : {"ttl", "fixed-ttl"}) {
    ASSERT_TRUE(report["policies"].contains(p)) << report.dump();
    const json& s = report["policies"][p];
    EXPECT_EQ(s["failed_sessions"].get<int>(), 0) << p << Slurp(out + "/sessions.csv");
    recomputed[p] = s["recomputed_tokens"].get<int64_t>();
    std::printf("%-10s %12lld %12lld %10.3f %8lld/%lld/%lld\n", p,
                static_cast<long long>(recomputed[p]),
                static_cast<long long>(s["cached_tokens"].get<int64_t>()),
                s["hit_ratio"].get<double>(), static_cast<long long>(s["pins_used"].get<int64_t>()),
                static_cast<long long>(s["pins_expired"].get<int64_t>()),
                static_cast<long long>(s["pins_violated"].get<int64_t>()));
  }
  std::printf("ttl / fixed-ttl recomputed: %.3f\n",
              double(recomputed["ttl"]) / double(recomputed["fixed-ttl"]));
  EXPECT_LT(recomputed["ttl"], recomputed["fixed-ttl"]);
}

}  // namespace
}  // namespace kvkeep::replay
