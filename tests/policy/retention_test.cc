// Retention hints as pure logic: pin, override, release, expiry on a fake clock, and the
// per-uid quota of hint-pinned blocks with an error that names it.
#include "policy/retention.h"

#include <gtest/gtest.h>

#include <cmath>
#include <map>
#include <string>
#include <vector>

namespace kvkeep {
namespace {

constexpr int64_t kSecond = 1'000'000;

TEST(Retention, HintPinsOverridesAndReleases) {
  FakeClock clock;
  RetentionBook book({}, &clock);
  ASSERT_TRUE(book.PinLearned(1000, "a", 2.0, 50));
  EXPECT_EQ(book.Get("a")->source, Pin::Source::kLearned);
  // A hint overrides the learned pin.
  ASSERT_TRUE(book.Retain(1000, "a", 60.0, 7.0, 50).ok());
  EXPECT_EQ(book.Get("a")->source, Pin::Source::kHint);
  EXPECT_EQ(book.Get("a")->deadline_us, clock.NowMicros() + 60 * kSecond);
  EXPECT_EQ(book.Get("a")->priority, 7.0);
  // ... and a learned TTL does not replace a live hint.
  EXPECT_FALSE(book.PinLearned(1000, "a", 1.0, 50));
  EXPECT_EQ(book.Get("a")->source, Pin::Source::kHint);
  clock.AdvanceMicros(59 * kSecond);
  EXPECT_TRUE(book.IsLive("a"));
  clock.AdvanceMicros(1 * kSecond);
  EXPECT_FALSE(book.IsLive("a"));  // expired: still listed, for the reclaimer
  ASSERT_TRUE(book.Get("a").has_value());
  EXPECT_TRUE(book.PinLearned(1000, "a", 3.0, 50));  // an expired hint gives way
  // ttl_s 0 releases whatever pin there is.
  ASSERT_TRUE(book.Retain(1000, "a", 0.0, 0.0, 50).ok());
  EXPECT_FALSE(book.Get("a").has_value());
  EXPECT_TRUE(book.Retain(1000, "never-pinned", 0.0, 0.0, 1).ok());
}

TEST(Retention, QuotaIsPerUidAndNamedInTheError) {
  FakeClock clock;
  RetentionOptions o;
  o.max_hint_pinned_blocks_per_uid = 100;
  RetentionBook book(o, &clock);
  ASSERT_TRUE(book.Retain(1000, "a", 10, 0, 60).ok());
  ASSERT_TRUE(book.Retain(1000, "b", 10, 0, 40).ok());
  Status over = book.Retain(1000, "c", 10, 0, 1);
  ASSERT_TRUE(over.IsResourceExhausted());
  EXPECT_NE(over.message().find("quota of 100 pinned blocks"), std::string::npos) << over.message();
  EXPECT_FALSE(book.Get("c").has_value());  // nothing changed
  EXPECT_EQ(book.HintPinnedBlocks(1000), 100);
  // Another uid has its own quota.
  ASSERT_TRUE(book.Retain(2000, "d", 10, 0, 100).ok());
  // Re-pinning a session replaces its own blocks rather than adding to them.
  ASSERT_TRUE(book.Retain(1000, "a", 20, 0, 60).ok());
  // Learned pins do not count against the quota.
  ASSERT_TRUE(book.PinLearned(1000, "e", 5, 500));
  EXPECT_EQ(book.HintPinnedBlocks(1000), 100);
  EXPECT_EQ(book.PinnedBlocks(), 700);  // a 60 + b 40 + d 100 + e 500
  // Expired hints free their quota.
  clock.AdvanceMicros(10 * kSecond);
  ASSERT_TRUE(book.Retain(1000, "c", 10, 0, 40).ok());
  EXPECT_EQ(book.HintPinnedBlocks(1000), 100);  // a (60, live to 20 s) + c (40)
}

TEST(Retention, RefreshedBlocksAreWhatTheQuotaCounts) {
  FakeClock clock;
  RetentionOptions o;
  o.max_hint_pinned_blocks_per_uid = 10;
  RetentionBook book(o, &clock);
  ASSERT_TRUE(book.Retain(1000, "a", 10, 0, 3).ok());
  ASSERT_TRUE(book.Retain(1000, "b", 1, 0, 3).ok());
  ASSERT_TRUE(book.Retain(2000, "other", 10, 0, 3).ok());
  ASSERT_TRUE(book.PinLearned(1000, "learned", 10, 3));
  // "a" grew to 8 real blocks; only uid 1000's live hint pins are asked.
  std::map<std::string, int64_t> held = {{"a", 8}, {"b", 1}, {"other", 9}, {"learned", 9}};
  std::vector<std::string> asked;
  book.RefreshHintBlocks(1000, [&](const std::string& s) {
    asked.push_back(s);
    return held[s];
  });
  EXPECT_EQ(asked, (std::vector<std::string>{"a", "b"}));
  EXPECT_EQ(book.HintPinnedBlocks(1000), 9);
  EXPECT_TRUE(book.Retain(1000, "c", 10, 0, 2).IsResourceExhausted());  // 9 + 2 > 10
  ASSERT_TRUE(book.Retain(1000, "c", 10, 0, 1).ok());                   // 9 + 1 = 10
  // "b" expires: not asked, not counted.
  clock.AdvanceMicros(2 * kSecond);
  asked.clear();
  book.RefreshHintBlocks(1000, [&](const std::string& s) {
    asked.push_back(s);
    return held[s];
  });
  EXPECT_EQ(asked, (std::vector<std::string>{"a", "c"}));
  EXPECT_EQ(book.HintPinnedBlocks(1000), 8);  // a 8 + c (held[c] = 0)
}

TEST(Retention, AnotherUidsSessionIsNotFoundAndBadTtlsAreRefused) {
  FakeClock clock;
  RetentionBook book({}, &clock);
  ASSERT_TRUE(book.Retain(1000, "mine", 10, 0, 5).ok());
  EXPECT_TRUE(book.Retain(2000, "mine", 10, 0, 5).IsNotFound());
  EXPECT_TRUE(book.Retain(2000, "mine", 0, 0, 5).IsNotFound());  // cannot release it either
  EXPECT_EQ(book.Get("mine")->owner_uid, 1000u);
  EXPECT_TRUE(book.Retain(1000, "x", -1, 0, 5).IsInvalidArgument());
  EXPECT_TRUE(book.Retain(1000, "x", NAN, 0, 5).IsInvalidArgument());
  EXPECT_TRUE(book.Retain(1000, "x", 1e9, 0, 5).IsInvalidArgument());
  EXPECT_TRUE(book.Retain(1000, "x", 1, INFINITY, 5).IsInvalidArgument());
  EXPECT_FALSE(book.Get("x").has_value());
}

}  // namespace
}  // namespace kvkeep
