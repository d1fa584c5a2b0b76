// The one reclaim order (OrderByClass): exactly unpinned (by retention priority, GDSF
// priority, recency), then expired pins (oldest deadline), then live pins last (least
// benefit per block per second left to the deadline), stopping at the shortfall; GDSF
// aging.
#include "policy/reclaim_policy.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <random>

#include "tests/testlib/test_util.h"

namespace kvkeep {
namespace {

constexpr int64_t kNow = 100'000'000;

SessionReclaimInfo Candidate(uint64_t id, int64_t blocks) {
  SessionReclaimInfo c{};
  c.session = id;
  c.blocks_on_tier[0] = static_cast<int32_t>(blocks);
  c.blocks_on_tier[1] = c.blocks_on_tier[2] = 0;
  return c;
}

SessionReclaimInfo Unpinned(uint64_t id, int64_t blocks, double gdsf, int64_t last_use,
                            double retention = 0) {
  SessionReclaimInfo c = Candidate(id, blocks);
  c.gdsf_priority = gdsf;
  c.last_use_us = last_use;
  c.retention_priority = retention;
  return c;
}

SessionReclaimInfo Pinned(uint64_t id, int64_t blocks, int64_t deadline, double benefit) {
  SessionReclaimInfo c = Candidate(id, blocks);
  c.pinned = true;
  c.pin_deadline_us = deadline;
  c.pin_benefit_s = benefit;
  return c;
}

std::vector<ReclaimVictim> Order(int64_t shortfall, std::span<const SessionReclaimInfo> c) {
  std::vector<ReclaimVictim> v;
  OrderByClass({Tier::kDevice, static_cast<int32_t>(shortfall), kNow}, c, &v);
  return v;
}

std::vector<uint64_t> Ids(const std::vector<ReclaimVictim>& v) {
  std::vector<uint64_t> out;
  for (const ReclaimVictim& c : v) out.push_back(c.session);
  return out;
}

TEST(ReclaimOrder, ExactlyTheDocumentedOrder) {
  std::vector<SessionReclaimInfo> c = {
      Pinned(1, 10, kNow + 5'000'000, 2.0),        // live, 0.2 s/block over 5 s: 0.04, first
      Unpinned(2, 10, 0.5, 10),                    // unpinned, GDSF 0.5
      Pinned(3, 10, kNow - 1'000'000, 9.0),        // expired 1 s ago
      Unpinned(4, 10, 0.1, 99),                    // unpinned, lowest GDSF
      Pinned(5, 40, kNow + 1'000'000, 2.0),        // live, 0.05 s/block over 1 s: 0.05
      Unpinned(6, 10, 0.1, 50),                    // same GDSF as 4, used earlier: before 4
      Pinned(7, 10, kNow - 9'000'000, 0.0),        // expired 9 s ago: first expired
      Unpinned(8, 10, 0.0, 0, /*retention=*/5.0),  // hinted priority 5: last unpinned
      Pinned(9, 10, kNow, 1.0),                    // deadline == now counts as expired
  };
  SessionReclaimInfo running = Unpinned(10, 99, 0, 0);
  running.running = true;
  c.push_back(running);
  c.push_back(Unpinned(11, 0, 0, 0));  // nothing on this tier

  auto all = Order(1'000'000, c);
  EXPECT_EQ(Ids(all), (std::vector<uint64_t>{6, 4, 2, 8, 7, 3, 9, 1, 5}));
  for (const ReclaimVictim& v : all) {
    const bool live = v.session == 5 || v.session == 1;
    EXPECT_EQ(v.victim_class == VictimClass::kLivePin, live) << v.session;
  }
  EXPECT_EQ(all[4].victim_class, VictimClass::kExpiredPin);

  // Live pins come only after every other candidate: a shortfall the others cover never
  // reaches them.
  EXPECT_EQ(Ids(Order(70, c)), (std::vector<uint64_t>{6, 4, 2, 8, 7, 3, 9}));

  // The list stops as soon as it covers the shortfall.
  EXPECT_EQ(Ids(Order(15, c)), (std::vector<uint64_t>{6, 4}));
  EXPECT_EQ(Ids(Order(10, c)), (std::vector<uint64_t>{6}));
  EXPECT_TRUE(Order(0, c).empty());
}

// An independent reference: rank every candidate by a key tuple and sort once.
TEST(ReclaimOrder, MatchesAReferenceOnRandomCandidates) {
  const uint64_t seed = testing::TestSeed();
  std::mt19937_64 rng(seed);
  for (int round = 0; round < 200; ++round) {
    std::vector<SessionReclaimInfo> c;
    const int n = 1 + static_cast<int>(rng() % 30);
    for (int i = 0; i < n; ++i) {
      SessionReclaimInfo x = Candidate(rng() % 1000, static_cast<int64_t>(rng() % 20));
      x.running = rng() % 7 == 0;
      x.last_use_us = static_cast<int64_t>(rng() % 50);
      x.pinned = rng() % 2;
      x.pin_deadline_us = kNow + (static_cast<int64_t>(rng() % 21) - 10) * 500'000;  // +-5 s
      x.retention_priority = static_cast<double>(rng() % 3);
      x.gdsf_priority = static_cast<double>(rng() % 5) / 4;
      x.pin_benefit_s = static_cast<double>(rng() % 8);
      x.session = static_cast<uint64_t>(i) * 1000 + x.session;  // unique ids
      c.push_back(x);
    }
    const int64_t shortfall = static_cast<int64_t>(rng() % 150);
    struct Ranked {
      std::tuple<int, double, double, int64_t, uint64_t> key;
      const SessionReclaimInfo* c;
    };
    std::vector<Ranked> ranked;
    for (const SessionReclaimInfo& x : c) {
      const int64_t blocks = x.blocks_on_tier[0];
      if (x.running || blocks == 0) continue;
      if (!x.pinned) {
        ranked.push_back(
            {{0, x.retention_priority, x.gdsf_priority, x.last_use_us, x.session}, &x});
      } else if (x.pin_deadline_us <= kNow) {
        ranked.push_back({{1, 0, 0, x.pin_deadline_us, x.session}, &x});
      } else {
        const double remaining_s =
            std::max(1e-3, static_cast<double>(x.pin_deadline_us - kNow) / 1e6);
        ranked.push_back(
            {{2, x.pin_benefit_s / blocks / remaining_s, 0, x.pin_deadline_us, x.session}, &x});
      }
    }
    std::sort(ranked.begin(), ranked.end(),
              [](const Ranked& a, const Ranked& b) { return a.key < b.key; });
    std::vector<uint64_t> want;
    int64_t covered = 0;
    for (const Ranked& r : ranked) {
      if (covered >= shortfall) break;
      want.push_back(r.c->session);
      covered += r.c->blocks_on_tier[0];
    }
    EXPECT_EQ(Ids(Order(shortfall, c)), want) << "seed " << seed << " round " << round;
  }
}

TEST(ReclaimOrder, GdsfKeepsExpensiveBlocksAndAgesIdleOnes) {
  GdsfClock clock;
  // A: 1000 blocks, 2 s to rebuild (0.002 s/block), used long ago.
  // B: 10 blocks, 0.001 s to rebuild (0.0001 s/block), used just now.
  const double a = clock.PriorityOnUse(1, 2.0, 1000);
  const double b = clock.PriorityOnUse(1, 0.001, 10);
  std::vector<SessionReclaimInfo> c = {Unpinned(1, 1000, a, 0), Unpinned(2, 10, b, 99)};
  // Plain recency would take A first; GDSF takes the cheap-per-block B.
  EXPECT_EQ(Order(1, c)[0].session, 2u);
  // Frequency counts: B used 30 times outranks A.
  c[1].gdsf_priority = clock.PriorityOnUse(30, 0.001, 10);
  EXPECT_EQ(Order(1, c)[0].session, 1u);
  // Aging: after victims with priority 0.01 were reclaimed, a fresh use of B outranks A's
  // stale priority, so A goes first.
  c[1].gdsf_priority = b;
  clock.OnReclaim(0.01);
  clock.OnReclaim(0.005);  // the clock never falls
  EXPECT_DOUBLE_EQ(clock.value(), 0.01);
  c[1].gdsf_priority = clock.PriorityOnUse(1, 0.001, 10);
  EXPECT_EQ(Order(1, c)[0].session, 1u);
}

}  // namespace
}  // namespace kvkeep
