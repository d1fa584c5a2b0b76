// The TTL policy's learning survives a restart: tool-duration samples and fitted per-key
// statistics in a real SQLite file (migration 4), reloaded into fresh ToolLatencyStats.
#include <gtest/gtest.h>
#include <sqlite3.h>

#include <random>

#include "daemon/store.h"
#include "policy/tool_key.h"
#include "policy/tool_stats.h"
#include "tests/testlib/test_util.h"

namespace kvkeep {
namespace {

constexpr int64_t kSecond = 1'000'000;

void ExpectSameSummaries(const std::vector<ToolKeySummary>& a,
                         const std::vector<ToolKeySummary>& b) {
  ASSERT_EQ(a.size(), b.size());
  for (size_t i = 0; i < a.size(); ++i) {
    EXPECT_EQ(a[i].key, b[i].key);
    EXPECT_EQ(a[i].num_samples, b[i].num_samples) << a[i].key;
    EXPECT_NEAR(a[i].effective_samples, b[i].effective_samples, 1e-9) << a[i].key;
    EXPECT_DOUBLE_EQ(a[i].mean_s, b[i].mean_s) << a[i].key;
    EXPECT_DOUBLE_EQ(a[i].p50_s, b[i].p50_s) << a[i].key;
    EXPECT_DOUBLE_EQ(a[i].p90_s, b[i].p90_s) << a[i].key;
    EXPECT_DOUBLE_EQ(a[i].p99_s, b[i].p99_s) << a[i].key;
  }
}

TEST(ToolStatsStore, LearnedStatisticsSurviveARestart) {
  testing::TempDir dir;
  const std::string path = dir.File("kvkeep.db");
  const uint64_t seed = testing::TestSeed();
  std::mt19937_64 rng(seed);
  std::exponential_distribution<double> fast(1 / 0.2), slow(1 / 25.0);
  FakeClock clock;
  ToolStatsOptions options;
  options.ageing = ToolStatsOptions::Ageing::kDecay;  // weights depend on sample times too
  options.half_life_s = 600;
  options.window_samples = 64;
  std::vector<ToolKeySummary> before;
  std::string before_source;
  {
    auto store = Store::Open(path);
    ASSERT_TRUE(store.ok()) << store.status().ToString();
    EXPECT_EQ(*(*store)->JournalMode(), "wal");
    ToolLatencyStats stats(options, &clock);
    for (int i = 0; i < 150; ++i) {
      const bool is_test = i % 3 == 0;
      const std::string command = is_test ? "cd /testbed && python -m pytest -x" : "cat a.py";
      const std::string key = ToolKey("bash", command);
      const int64_t us = static_cast<int64_t>((is_test ? slow(rng) : fast(rng)) * 1e6);
      stats.AddSample(key, us);
      ASSERT_TRUE((*store)->AddToolSample({key, us, clock.WallMicros()}, "bash").ok());
      clock.AdvanceMicros(10 * kSecond);
    }
    before = stats.Summaries();
    ASSERT_EQ(before.size(), 2u);
    EXPECT_EQ(before[0].key, "cat");
    EXPECT_EQ(before[1].key, "pytest");
    ASSERT_TRUE((*store)->SaveToolStats(before, clock.WallMicros()).ok());
  }  // the daemon stops
  {
    auto store = Store::Open(path);
    ASSERT_TRUE(store.ok()) << store.status().ToString();
    // The fitted figures as saved.
    auto saved = (*store)->LoadToolStats();
    ASSERT_TRUE(saved.ok()) << saved.status().ToString();
    ExpectSameSummaries(before, *saved);
    // The samples rebuild the same statistics in a fresh policy (same clock reading).
    // Decay ageing keeps every sample above min_weight: load them all.
    auto samples = (*store)->ToolSamples(1 << 20);
    ASSERT_TRUE(samples.ok()) << samples.status().ToString();
    ToolLatencyStats restarted(options, &clock);
    restarted.Load(*samples);
    ExpectSameSummaries(before, restarted.Summaries());
    EXPECT_EQ(restarted.ForKey("pytest").source(), DistributionSource::kKey);
  }
}

TEST(ToolStatsStore, KeepsOnlyTheNewestSamplesPerKeyAndFallsBackToToolNames) {
  testing::TempDir dir;
  auto store = Store::Open(dir.File("kvkeep.db"));
  ASSERT_TRUE(store.ok());
  for (int i = 0; i < 10; ++i) {
    ASSERT_TRUE((*store)->AddToolSample({"pytest", 1000 + i, 100 + i}).ok());
  }
  // A sample recorded by EndToolEvent (no key): counted under its tool name.
  ASSERT_TRUE((*store)->CreateSession({7, "s", 1, 1, "m", false, {}}).ok());
  auto ev = (*store)->BeginToolEvent(7, "s", "str_replace_editor", "", 50);
  ASSERT_TRUE(ev.ok());
  ASSERT_TRUE((*store)->EndToolEvent(7, "s", *ev, "str_replace_editor", 105, 55, {}).ok());
  auto samples = (*store)->ToolSamples(3);
  ASSERT_TRUE(samples.ok()) << samples.status().ToString();
  ASSERT_EQ(samples->size(), 4u);
  EXPECT_EQ((*samples)[0].key, "str_replace_editor");
  EXPECT_EQ((*samples)[0].duration_us, 55);
  for (int i = 1; i < 4; ++i) {
    EXPECT_EQ((*samples)[i].key, "pytest");
    EXPECT_EQ((*samples)[i].duration_us, 1006 + i);  // the newest three, oldest first
  }
}

}  // namespace
}  // namespace kvkeep
