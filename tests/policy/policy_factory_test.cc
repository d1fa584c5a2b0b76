// The policy factory and the pinning policies (ttl, ttl-fcfs, fixed-ttl) as the engine
// drives them through ReclaimPolicy::OnHint, with a fake clock.
#include "policy/policy_factory.h"

#include <gtest/gtest.h>

#include "base/clock.h"

namespace kvkeep {
namespace {

constexpr int64_t kSecond = 1'000'000;

SessionReclaimInfo Session(SessionId id, int32_t blocks, int64_t tokens) {
  SessionReclaimInfo s{};
  s.session = id;
  s.blocks_on_tier[0] = blocks;
  s.blocks_on_tier[1] = s.blocks_on_tier[2] = 0;
  s.context_tokens = tokens;
  return s;
}

SessionHint ToolBegin(SessionId id, int64_t now_us, const std::string& key) {
  SessionHint h;
  h.kind = SessionHint::Kind::kToolBegin;
  h.session = id;
  h.at_us = now_us;
  h.tool_key = key;
  return h;
}

EngineLoad Load(int64_t total, int64_t free_blocks) {
  EngineLoad l;
  l.device_total_blocks = total;
  l.device_free_blocks = free_blocks;
  return l;
}

struct Fixture {
  FakeClock clock;
  ToolLatencyStats stats{ToolStatsOptions{}, &clock};
  PolicyOptions options;
  std::unique_ptr<ReclaimPolicy> Make(const std::string& name) {
    options.name = name;
    options.cost_model = DefaultCostModel();
    auto p = NewReclaimPolicy(options, &stats);
    EXPECT_TRUE(p.ok()) << p.status().ToString();
    return std::move(*p);
  }
};

TEST(PolicyFactory, BuildsEveryNameAndRefusesOthers) {
  Fixture f;
  for (std::string_view name : PolicyNames()) {
    EXPECT_EQ(f.Make(std::string(name))->name(), name);
    EXPECT_EQ(f.Make(std::string(name))->reuses_across_requests(), PolicyReusesKv(name));
  }
  EXPECT_TRUE(f.Make("ttl")->program_aware_admission());
  EXPECT_TRUE(f.Make("fixed-ttl")->program_aware_admission());
  EXPECT_FALSE(f.Make("ttl-fcfs")->program_aware_admission());
  EXPECT_FALSE(f.Make("lru")->program_aware_admission());
  f.options.name = "fifo";
  auto bad = NewReclaimPolicy(f.options, &f.stats);
  ASSERT_FALSE(bad.ok());
  EXPECT_EQ(bad.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(bad.status().ToString().find("fifo"), std::string::npos);
  EXPECT_NE(bad.status().ToString().find("ttl-fcfs"), std::string::npos);
}

// The TTL a tool_begin grants through the policy equals the pure rule's decision, rises
// with the session's size (benefit) and falls as the pool fills.
TEST(TtlReclaimPolicy, PinsAtTheRulesTtlMonotoneInBenefitAndPressure) {
  Fixture f;
  for (int i = 0; i < 200; ++i) f.stats.AddSample("pytest", (1 + i % 20) * kSecond / 2);
  auto ttl = f.Make("ttl");
  auto pin = [&](int64_t tokens, int64_t free_blocks) {
    SessionReclaimInfo s = Session(1, static_cast<int32_t>(tokens / 16), tokens);
    ttl->OnHint(ToolBegin(1, f.clock.NowMicros(), "pytest"), Load(10000, free_blocks), &s);
    return s.pinned ? static_cast<double>(s.pin_deadline_us - f.clock.NowMicros()) / kSecond : 0.0;
  };
  // Reference: the pure rule for the same inputs.
  PinCandidate c;
  c.context_tokens = 32000;
  c.device_blocks = 2000;
  const TtlDecision d =
      DecideTtlForTool(f.stats, "pytest", DefaultCostModel(), c, {10000, 100}, f.options.ttl);
  EXPECT_NEAR(pin(32000, 100), d.ttl_s, 1e-6);
  double last = 1e9;
  for (int64_t free_blocks : {9000, 2000, 1000, 500, 100, 0}) {
    const double t = pin(32000, free_blocks);
    EXPECT_LE(t, last + 1e-9) << free_blocks;
    last = t;
  }
  last = 0;
  for (int64_t tokens : {160, 1600, 16000, 64000}) {
    const double t = pin(tokens, 200);
    EXPECT_GE(t, last - 1e-9) << tokens;
    last = t;
  }
  EXPECT_GT(pin(64000, 9000), 0);
  auto ttls = ttl->LastTtls();
  ASSERT_EQ(ttls.size(), 1u);
  EXPECT_EQ(ttls[0].first, "pytest");
}

TEST(FixedTtlReclaimPolicy, ContinuumsRule) {
  Fixture f;
  f.options.fixed_ttl.ttl_s = 2.0;
  for (int i = 0; i < 30; ++i) f.stats.AddSample("pip", 40 * kSecond);
  for (int i = 0; i < 30; ++i) f.stats.AddSample("cat", kSecond / 4);
  auto fixed = f.Make("fixed-ttl");
  const int64_t now = f.clock.NowMicros();
  for (const char* key : {"cat", "never-seen"}) {
    SessionReclaimInfo s = Session(1, 10, 160);
    fixed->OnHint(ToolBegin(1, now, key), Load(100, 0), &s);
    EXPECT_TRUE(s.pinned) << key;
    EXPECT_EQ(s.pin_deadline_us, now + 2 * kSecond) << key;
  }
  SessionReclaimInfo s = Session(1, 10, 160);
  fixed->OnHint(ToolBegin(1, now, "pip"), Load(100, 100), &s);
  EXPECT_FALSE(s.pinned);
}

// Where ttl and fixed-ttl part: fixed-ttl looks only at the tool's mean; ttl weighs the
// session's rebuild cost against the memory it holds. On a full pool, a long tool (mean
// 10 s) is pinned for a big session (64k tokens) and not for a small one (160 tokens);
// fixed-ttl pins neither. A short tool is pinned by both, by ttl only for its p99.
TEST(TtlReclaimPolicy, DiffersFromFixedTtlBySessionSize) {
  Fixture f;
  for (int i = 0; i < 40; ++i) f.stats.AddSample("pytest", 8 * kSecond + i * kSecond / 10);
  for (int i = 0; i < 40; ++i) f.stats.AddSample("cat", kSecond / 10 + i * kSecond / 200);
  auto ttl = f.Make("ttl");
  auto fixed = f.Make("fixed-ttl");
  auto pin_s = [&](ReclaimPolicy* p, const char* key, int64_t tokens) {
    SessionReclaimInfo s = Session(1, static_cast<int32_t>(tokens / 16), tokens);
    p->OnHint(ToolBegin(1, f.clock.NowMicros(), key), Load(10000, 0), &s);
    return s.pinned ? static_cast<double>(s.pin_deadline_us - f.clock.NowMicros()) / kSecond : 0.0;
  };
  EXPECT_GE(pin_s(ttl.get(), "pytest", 64000), 8.0);
  EXPECT_EQ(pin_s(ttl.get(), "pytest", 160), 0.0);
  EXPECT_EQ(pin_s(fixed.get(), "pytest", 64000), 0.0);
  EXPECT_EQ(pin_s(fixed.get(), "pytest", 160), 0.0);
  const double cat_p99 = f.stats.ForKey("cat").Quantile(0.99);
  EXPECT_NEAR(pin_s(ttl.get(), "cat", 64000), cat_p99, 1e-6);
  EXPECT_EQ(pin_s(fixed.get(), "cat", 64000), 2.0);
  EXPECT_EQ(pin_s(fixed.get(), "cat", 160), 2.0);
}

// The benefit of a pin is a host reload only while the host tier has room for the
// session's blocks; with the host full, a hit saves a prefill, so the TTL is longer.
TEST(TtlReclaimPolicy, FullHostTierPricesAHitAsAPrefill) {
  Fixture f;
  for (int i = 0; i < 40; ++i) f.stats.AddSample("pytest", 2 * kSecond + i * kSecond / 5);
  f.options.name = "ttl";
  f.options.cost_model = DefaultCostModel();
  f.options.cost_model.kv_bytes_per_token = 131072;
  f.options.cost_model.host_to_device_bytes_per_s = 25e9;
  auto made = NewReclaimPolicy(f.options, &f.stats);
  ASSERT_TRUE(made.ok());
  std::unique_ptr<ReclaimPolicy> ttl = std::move(made).value();
  auto pin_s = [&](int64_t host_free_blocks) {
    SessionReclaimInfo s = Session(1, 2000, 32000);
    EngineLoad load = Load(10000, 0);
    load.host_has_room = true;
    load.host_free_blocks = host_free_blocks;
    ttl->OnHint(ToolBegin(1, f.clock.NowMicros(), "pytest"), load, &s);
    return s.pinned ? static_cast<double>(s.pin_deadline_us - f.clock.NowMicros()) / kSecond : 0.0;
  };
  const double host_room = pin_s(5000), host_full = pin_s(100);
  std::printf("pytest TTL for 2000 blocks on a full pool: host has room %.2f s, full %.2f s\n",
              host_room, host_full);
  EXPECT_GT(host_full, host_room);
  EXPECT_EQ(pin_s(-1), host_room);  // unknown free slots: the tier's presence decides
}

// A session.retain hint pins with its priority, a learned pin does not replace it while
// it is live, and ttl_s 0 (retain_until_us <= at_us) releases it.
TEST(TtlReclaimPolicy, RetainHintOverridesLearnedPinAndReleases) {
  Fixture f;
  auto ttl = f.Make("ttl");
  const int64_t now = f.clock.NowMicros();
  SessionReclaimInfo s = Session(7, 10, 160);
  SessionHint retain;
  retain.kind = SessionHint::Kind::kRetain;
  retain.session = 7;
  retain.at_us = now;
  retain.retain_until_us = now + 600 * kSecond;
  retain.priority = 3;
  ttl->OnHint(retain, Load(100, 0), &s);
  EXPECT_TRUE(s.pinned);
  EXPECT_TRUE(s.pin_from_hint);
  EXPECT_EQ(s.retention_priority, 3);
  ttl->OnHint(ToolBegin(7, now + kSecond, "cat"), Load(100, 0), &s);
  EXPECT_EQ(s.pin_deadline_us, now + 600 * kSecond);  // the hint's pin stands
  retain.at_us = retain.retain_until_us = now + 2 * kSecond;
  ttl->OnHint(retain, Load(100, 0), &s);
  EXPECT_FALSE(s.pinned);
  EXPECT_FALSE(s.pin_from_hint);
}

// GDSF: after a turn, a session that is cheap to rebuild per block gets a lower priority
// than one that is expensive, and the order reclaims it first.
TEST(TtlReclaimPolicy, GdsfPriorityOnRetain) {
  Fixture f;
  auto ttl = f.Make("ttl");
  SessionReclaimInfo cheap = Session(1, 100, 1600), dear = Session(2, 100, 64000);
  cheap.use_count = dear.use_count = 1;
  cheap.last_use_us = 100;  // more recent than dear: LRU would take dear first
  ttl->OnRetain(&cheap);
  ttl->OnRetain(&dear);
  EXPECT_LT(cheap.gdsf_priority, dear.gdsf_priority);
  std::vector<SessionReclaimInfo> c = {dear, cheap};
  std::vector<ReclaimVictim> v;
  ttl->Order({Tier::kDevice, 1, 1000}, c, &v);
  ASSERT_EQ(v.size(), 1u);
  EXPECT_EQ(v[0].session, 1u);
}

}  // namespace
}  // namespace kvkeep
