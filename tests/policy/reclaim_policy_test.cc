#include "policy/reclaim_policy.h"

#include <gtest/gtest.h>

#include "base/clock.h"

namespace kvkeep {
namespace {

SessionReclaimInfo Session(SessionId id, int32_t device_blocks, int64_t last_use_us) {
  SessionReclaimInfo s{};
  s.session = id;
  s.blocks_on_tier[0] = device_blocks;
  s.blocks_on_tier[1] = 0;
  s.blocks_on_tier[2] = 0;
  s.last_use_us = last_use_us;
  return s;
}

std::vector<SessionId> Ids(const std::vector<ReclaimVictim>& v) {
  std::vector<SessionId> ids;
  for (const ReclaimVictim& x : v) ids.push_back(x.session);
  return ids;
}

TEST(OrderByClass, UnpinnedByPriorityThenExpiredThenLivePins) {
  FakeClock clock;
  const int64_t now = clock.NowMicros();
  std::vector<SessionReclaimInfo> c = {Session(1, 4, now - 10), Session(2, 4, now - 50),
                                       Session(3, 4, now - 99), Session(4, 4, now - 5),
                                       Session(5, 4, now - 1),  Session(6, 4, now - 7)};
  c[0].retention_priority = 2.0;  // unpinned, kept longer than 2
  c[1].retention_priority = 1.0;
  c[2].pinned = true;  // live pin, later deadline
  c[2].pin_deadline_us = now + 500;
  c[3].pinned = true;  // expired pin
  c[3].pin_deadline_us = now - 1;
  c[4].pinned = true;  // live pin, earlier deadline
  c[4].pin_deadline_us = now + 100;
  c[5].running = true;  // never a victim
  ReclaimRequest req{Tier::kDevice, 1000, now};
  std::vector<ReclaimVictim> v;
  OrderByClass(req, c, &v);
  EXPECT_EQ(Ids(v), (std::vector<SessionId>{2, 1, 4, 5, 3}));
  EXPECT_EQ(v[0].victim_class, VictimClass::kUnpinned);
  EXPECT_EQ(v[2].victim_class, VictimClass::kExpiredPin);
  EXPECT_EQ(v[3].victim_class, VictimClass::kLivePin);
  EXPECT_EQ(v[4].victim_class, VictimClass::kLivePin);
}

TEST(OrderByClass, StopsOnceShortfallIsCoveredAndSkipsOtherTiers) {
  std::vector<SessionReclaimInfo> c = {Session(1, 3, 10), Session(2, 0, 5), Session(3, 3, 20),
                                       Session(4, 3, 30)};
  c[1].blocks_on_tier[1] = 8;  // only host blocks: not a device victim
  std::vector<ReclaimVictim> v;
  OrderByClass({Tier::kDevice, 4, 100}, c, &v);
  EXPECT_EQ(Ids(v), (std::vector<SessionId>{1, 3}));
  v.clear();
  OrderByClass({Tier::kHost, 1, 100}, c, &v);
  EXPECT_EQ(Ids(v), (std::vector<SessionId>{2}));
  v.clear();
  OrderByClass({Tier::kDevice, 0, 100}, c, &v);
  EXPECT_TRUE(v.empty());
}

TEST(LruReclaimPolicy, IgnoresPinsAndOrdersByLastUse) {
  auto lru = NewLruReclaimPolicy();
  EXPECT_EQ(lru->name(), "lru");
  EXPECT_TRUE(lru->reuses_across_requests());
  std::vector<SessionReclaimInfo> c = {Session(1, 2, 300), Session(2, 2, 100), Session(3, 2, 200)};
  c[1].pinned = true;
  c[1].pin_deadline_us = 1'000'000;
  // A tool_end counts as a use: session 3 becomes the most recent.
  SessionHint hint{SessionHint::Kind::kToolEnd, 3, 400, 0, 0};
  lru->OnHint(hint, EngineLoad{}, &c[2]);
  EXPECT_EQ(c[2].last_use_us, 400);
  std::vector<ReclaimVictim> v;
  lru->Order({Tier::kDevice, 6, 500}, c, &v);
  EXPECT_EQ(Ids(v), (std::vector<SessionId>{2, 1, 3}));
  for (const ReclaimVictim& x : v) EXPECT_EQ(x.victim_class, VictimClass::kUnpinned);
}

TEST(NoneReclaimPolicy, RetainsNothing) {
  auto none = NewNoneReclaimPolicy();
  EXPECT_FALSE(none->reuses_across_requests());
  EXPECT_FALSE(none->retains_sessions());
  std::vector<SessionReclaimInfo> c = {Session(1, 2, 1)};
  std::vector<ReclaimVictim> v;
  none->Order({Tier::kDevice, 2, 5}, c, &v);
  EXPECT_TRUE(v.empty());
}

TEST(TierName, Names) {
  EXPECT_EQ(TierName(Tier::kDevice), "device");
  EXPECT_EQ(TierName(Tier::kDisk), "disk");
}

}  // namespace
}  // namespace kvkeep
