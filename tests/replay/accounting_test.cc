// Per-turn accounting that is comparable across policies: the context is the same under
// every policy, re-prefills are split from first-time prefill, and the hit ratio is
// cached / context.
#include "tools/replay/accounting.h"

#include <gtest/gtest.h>

#include "tools/replay/report.h"

namespace kvkeep::replay {
namespace {

using nlohmann::json;

TEST(Accounting, SplitsFirstTimeFromRepeatedPrefill) {
  // Turn 1: 1000 tokens in the session, all new. The engine prefilled 1003: the chat
  // template's generation prompt adds 3 tokens the session does not hold yet, which this
  // estimate counts as prefilled again (docs/policy.md says so).
  TurnTokens t1 = AccountTurn({{"cached_tokens", 0}, {"recomputed_tokens", 1003}}, 1000, 0);
  EXPECT_EQ(t1.context_tokens, 1000);
  EXPECT_EQ(t1.first_prefill_tokens, 1000);
  EXPECT_EQ(t1.reprefill_tokens, 3);
  EXPECT_FALSE(t1.from_engine);
  // Turn 2 under lru: 1100 after the reply, 1300 after a tool result; 1088 cached.
  TurnTokens lru = AccountTurn({{"cached_tokens", 1088}, {"recomputed_tokens", 215}}, 1300, 1100);
  EXPECT_EQ(lru.context_tokens, 1300);
  EXPECT_EQ(lru.cached_tokens, 1088);
  EXPECT_EQ(lru.first_prefill_tokens, 200);
  EXPECT_EQ(lru.reprefill_tokens, 15);  // the partial last block of the old context
  // The same turn under none: everything recomputed.
  TurnTokens none = AccountTurn({{"cached_tokens", 0}, {"recomputed_tokens", 1303}}, 1300, 1100);
  EXPECT_EQ(none.context_tokens, lru.context_tokens);
  EXPECT_EQ(none.first_prefill_tokens, 200);
  EXPECT_EQ(none.reprefill_tokens, 1103);
  // Preempted twice: recomputed counts the re-prefills again, cached is double-counted by
  // the engine; the context stays 1300 and cached is capped at it.
  TurnTokens pre = AccountTurn({{"cached_tokens", 2400}, {"recomputed_tokens", 3900}}, 1300, 1100);
  EXPECT_EQ(pre.context_tokens, 1300);
  EXPECT_EQ(pre.cached_tokens, 1300);
  EXPECT_EQ(pre.first_prefill_tokens, 200);
  EXPECT_EQ(pre.reprefill_tokens, 3700);
}

TEST(Accounting, UsesTheEnginesSplitWhenItHasOne) {
  json usage = {{"cached_tokens", 64},
                {"recomputed_tokens", 500},
                {"context_tokens", 560},
                {"first_prefill_tokens", 100},
                {"reprefill_tokens", 400}};
  TurnTokens t = AccountTurn(usage, 999, 0);
  EXPECT_TRUE(t.from_engine);
  EXPECT_EQ(t.context_tokens, 560);
  EXPECT_EQ(t.first_prefill_tokens, 100);
  EXPECT_EQ(t.reprefill_tokens, 400);
  // Garbage usage never throws.
  TurnTokens bad = AccountTurn(json::array(), 10, 20);
  EXPECT_EQ(bad.context_tokens, 10);
  EXPECT_EQ(bad.first_prefill_tokens, 0);
  EXPECT_EQ(bad.cached_tokens, 0);
}

TEST(Accounting, SummaryHitRatioIsCachedOverContext) {
  ReplayResult lru, none;
  auto turn = [](int64_t ctx, int64_t cached, int64_t recomputed, int64_t first) {
    TurnRecord t;
    t.context_tokens = ctx;
    t.cached_tokens = cached;
    t.recomputed_tokens = recomputed;
    t.prompt_tokens = cached + recomputed;
    t.first_prefill_tokens = first;
    t.reprefill_tokens = recomputed - first;
    return t;
  };
  lru.turns = {turn(1000, 0, 1003, 1000), turn(1300, 1088, 215, 200)};
  none.turns = {turn(1000, 0, 1003, 1000), turn(1300, 2400, 3900, 200)};  // preempted
  PolicySummary a = Summarize(lru), b = Summarize(none);
  EXPECT_EQ(a.context_tokens, 2300);
  EXPECT_EQ(b.context_tokens, a.context_tokens);  // comparable across policies
  EXPECT_NE(a.prompt_tokens, b.prompt_tokens);    // the engine's figure is not
  EXPECT_DOUBLE_EQ(a.hit_ratio, 1088.0 / 2300);
  EXPECT_DOUBLE_EQ(b.hit_ratio, 1300.0 / 2300);  // capped per turn
  EXPECT_EQ(a.first_prefill_tokens, 1200);
  EXPECT_EQ(b.reprefill_tokens, 3 + 3700);
}

// The report's pin columns are the daemon's counters over the run: the last occupancy
// sample minus the first (a daemon that served earlier runs starts above zero).
TEST(Accounting, SummaryPinsAreTheRunsShareOfTheCounters) {
  ReplayResult r;
  OccupancySample first, mid, last;
  first.pins_granted = 10, first.pins_used = 7, first.pins_expired = 2, first.pins_violated = 1;
  mid = first;
  mid.pins_granted = 15;
  last.pins_granted = 30, last.pins_used = 20, last.pins_expired = 5, last.pins_violated = 1;
  r.occupancy = {first, mid, last};
  const PolicySummary s = Summarize(r);
  EXPECT_EQ(s.pins_granted, 20);
  EXPECT_EQ(s.pins_used, 13);
  EXPECT_EQ(s.pins_expired, 3);
  EXPECT_EQ(s.pins_violated, 0);
  EXPECT_EQ(Summarize(ReplayResult{}).pins_granted, 0);  // no sample: nothing known
}

}  // namespace
}  // namespace kvkeep::replay
