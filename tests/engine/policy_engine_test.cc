// The KV policies inside the engine, with a fake clock: a TTL pin keeps a session's KV
// through a tool wait where lru loses it; pins are counted granted / used / expired; a
// policy switch keeps pins; admission counts pinned blocks as taken and breaks a pin only
// when nothing else can run; program-aware admission puts a returning pinned program ahead
// of a newer one, where ttl-fcfs keeps FCFS; a turn-end grace pin keeps a tool-using
// session through the gap before its tool_begin; a reclaimed session is evicted before the
// prefix of a turn waiting for admission, and a uid's sessions released by its block cap
// before another uid's cached prefix; a pin that must give way is the one that saves least
// per block-second still to be held.
#include <gtest/gtest.h>

#include <chrono>
#include <functional>
#include <random>
#include <thread>

#include "engine/engine_impl.h"
#include "tests/engine/engine_fixture.h"
#include "tests/testlib/test_util.h"

namespace kvkeep {
namespace {

using enginetest::MakeBackend;
using enginetest::MakeTestModel;
using enginetest::NextTurn;
using enginetest::RandomTokens;

constexpr int32_t kBlockSize = 16;
constexpr int64_t kSecond = 1'000'000;

struct Outcome {
  std::vector<int32_t> tokens;
  Usage usage;
  FinishReason reason = FinishReason::kNone;
  int order = -1;  // finish order
};

class PolicyEngine {
 public:
  PolicyEngine(const enginetest::TestModel& model, const std::string& policy, int32_t device_blocks,
               int32_t max_running = 64, int32_t host_blocks = 0, const std::string& disk_dir = "",
               const std::function<void(PolicyOptions*)>& tweak = {},
               int32_t max_device_blocks_per_tenant = 0) {
    EngineOptions o;
    o.max_device_blocks_per_tenant = max_device_blocks_per_tenant;
    o.num_host_blocks = host_blocks;
    o.disk_dir = disk_dir;
    o.disk_bytes = disk_dir.empty() ? 0 : int64_t{64} << 20;
    o.model_id = "policy-test";
    o.policy.name = policy;
    o.policy.cost_model = DefaultCostModel();
    o.max_running = max_running;
    if (tweak) tweak(&o.policy);
    auto e = Engine::Create(o, MakeBackend(*model.weights, device_blocks), model.tokenizer.get(),
                            &clock);
    EXPECT_TRUE(e.ok()) << e.status().ToString();
    engine = std::move(e).value();
  }
  EngineImpl* impl() { return static_cast<EngineImpl*>(engine.get()); }
  void Submit(RequestId id, SessionId session, std::vector<int32_t> prompt, Outcome* out,
              uint64_t cache_salt = 0) {
    GenerateRequest r;
    r.id = id;
    r.session = session;
    r.cache_salt = cache_salt;
    r.prompt = std::move(prompt);
    r.stop.max_tokens = 4;
    r.stop.use_model_eos = false;
    r.on_event = [this, out](const GenerateEvent& ev) {
      if (ev.kind == GenerateEvent::Kind::kToken) out->tokens.push_back(ev.token);
      if (ev.kind == GenerateEvent::Kind::kFinished) {
        out->usage = ev.usage;
        out->reason = ev.finish_reason;
        out->order = finished++;
      }
    };
    EXPECT_TRUE(engine->Submit(std::move(r)).ok());
  }
  Outcome Run(RequestId id, SessionId session, std::vector<int32_t> prompt,
              uint64_t cache_salt = 0) {
    Outcome out;
    Submit(id, session, std::move(prompt), &out, cache_salt);
    Drive();
    return out;
  }
  void Drive() {
    EXPECT_TRUE(engine->RunUntilIdle().ok());
    EXPECT_TRUE(impl()->TEST_CheckPool().ok());
  }
  void Tool(SessionHint::Kind kind, SessionId session, const std::string& key,
            int64_t duration_us = -1, bool drive = true) {
    SessionHint h;
    h.kind = kind;
    h.session = session;
    h.at_us = clock.NowMicros();
    h.tool_key = key;
    h.duration_us = duration_us;
    engine->Hint(h);
    if (drive) Drive();
  }

  FakeClock clock;
  std::unique_ptr<Engine> engine;
  int finished = 0;
};

// A's turn, then A waits on a tool; B's turn is more recent; then C needs most of the
// pool. Returns A's next turn's cached tokens and the engine's stats.
std::pair<int64_t, EngineStats> ToolWaitUnderPressure(const std::string& policy) {
  auto model = MakeTestModel();
  EXPECT_NE(model, nullptr);
  std::mt19937_64 rng(model->seed + 11);
  PolicyEngine e(*model, policy, 12);
  std::vector<int32_t> a = RandomTokens(rng, 2 * kBlockSize + 3);
  const Outcome a1 = e.Run(1, 1, a);
  e.Tool(SessionHint::Kind::kToolBegin, 1, "cat");
  e.clock.AdvanceMicros(kSecond / 10);
  e.Run(2, 2, RandomTokens(rng, 2 * kBlockSize + 3));  // B: used after A's tool began
  e.clock.AdvanceMicros(kSecond / 10);
  e.Run(3, 3, RandomTokens(rng, 8 * kBlockSize - 4));  // C: reclaims one session
  e.clock.AdvanceMicros(kSecond / 10);
  e.Tool(SessionHint::Kind::kToolEnd, 1, "cat", 3 * kSecond / 10);
  a = NextTurn(a, a1.tokens, RandomTokens(rng, 5));
  const Outcome a2 = e.Run(4, 1, a);
  return {a2.usage.cached_tokens, e.impl()->GetStats()};
}

TEST(PolicyEngineTest, TtlPinKeepsKvThroughAToolWaitWhereLruLosesIt) {
  const auto [ttl_cached, ttl] = ToolWaitUnderPressure("ttl");
  const auto [lru_cached, lru] = ToolWaitUnderPressure("lru");
  std::printf("A's next turn cached tokens: ttl %lld, lru %lld\n",
              static_cast<long long>(ttl_cached), static_cast<long long>(lru_cached));
  EXPECT_EQ(ttl_cached, 2 * kBlockSize);  // both full blocks kept on the device
  EXPECT_LT(lru_cached, ttl_cached);
  EXPECT_EQ(ttl.policy, "ttl");
  EXPECT_EQ(ttl.pins_granted, 1);
  EXPECT_EQ(ttl.pins_used, 1);
  EXPECT_EQ(ttl.pin_violations, 0);
  EXPECT_EQ(lru.pins_granted, 0);
  EXPECT_GE(ttl.reclaimed_sessions, 1);
  ASSERT_EQ(ttl.tool_keys.size(), 1u);
  EXPECT_EQ(ttl.tool_keys[0].summary.key, "cat");
  EXPECT_EQ(ttl.tool_keys[0].summary.num_samples, 1);
  EXPECT_GT(ttl.tool_keys[0].last_ttl_s, 0);
}

TEST(PolicyEngineTest, PinsExpireOnTheClockAndAreCounted) {
  auto model = MakeTestModel();
  ASSERT_NE(model, nullptr);
  std::mt19937_64 rng(model->seed + 12);
  PolicyEngine e(*model, "fixed-ttl", 32);  // pins every unseen tool for 2 s
  e.Run(1, 1, RandomTokens(rng, 2 * kBlockSize + 3));
  e.Tool(SessionHint::Kind::kToolBegin, 1, "grep");
  EXPECT_EQ(e.impl()->GetStats().pinned_blocks, 3);
  e.clock.AdvanceMicros(kSecond);
  e.Tool(SessionHint::Kind::kToolEnd, 1, "grep", kSecond);  // within the 2 s pin
  e.Tool(SessionHint::Kind::kToolBegin, 1, "grep");
  e.clock.AdvanceMicros(3 * kSecond);
  EXPECT_EQ(e.impl()->GetStats().pinned_blocks, 3);             // stats are from the last step
  e.Tool(SessionHint::Kind::kToolEnd, 1, "grep", 3 * kSecond);  // after the deadline
  const EngineStats s = e.impl()->GetStats();
  EXPECT_EQ(s.pins_granted, 2);
  EXPECT_EQ(s.pins_used, 1);
  EXPECT_EQ(s.pins_expired, 1);
  EXPECT_EQ(s.pinned_blocks, 0);
  EXPECT_EQ(s.retained_sessions, 1);  // an expired pin demotes lazily; it never drops
}

// A policy switch (SIGHUP) keeps retained sessions and their pins: a pinned session is
// still reclaimed after an unpinned one under the new policy, and the pin is not
// re-counted. Switching to or from "none" is refused.
TEST(PolicyEngineTest, PolicySwitchKeepsPinsConsistent) {
  auto model = MakeTestModel();
  ASSERT_NE(model, nullptr);
  std::mt19937_64 rng(model->seed + 13);
  PolicyEngine e(*model, "ttl", 12);
  e.Run(1, 1, RandomTokens(rng, 2 * kBlockSize + 3));
  e.Tool(SessionHint::Kind::kToolBegin, 1, "pytest");
  const EngineStats before = e.impl()->GetStats();
  EXPECT_EQ(before.pinned_blocks, 3);
  PolicyOptions next;
  next.name = "fixed-ttl";
  next.cost_model = DefaultCostModel();
  ASSERT_TRUE(e.engine->SetPolicy(next).ok());
  e.clock.AdvanceMicros(kSecond / 10);
  e.Run(2, 2, RandomTokens(rng, 2 * kBlockSize + 3));  // unpinned, more recent
  EngineStats after = e.impl()->GetStats();
  EXPECT_EQ(after.policy, "fixed-ttl");
  EXPECT_EQ(after.pinned_blocks, 3);
  EXPECT_EQ(after.pins_granted, 1);
  e.Run(3, 3, RandomTokens(rng, 8 * kBlockSize - 4));  // reclaims session 2, not 1
  after = e.impl()->GetStats();
  EXPECT_EQ(after.pin_violations, 0);
  EXPECT_EQ(after.pinned_blocks, 3);
  EXPECT_GE(after.reclaimed_sessions, 1);
  next.name = "none";
  EXPECT_EQ(e.engine->SetPolicy(next).code(), StatusCode::kInvalidArgument);
  next.name = "fifo";
  EXPECT_EQ(e.engine->SetPolicy(next).code(), StatusCode::kInvalidArgument);
}

// Admission respects pins: A is pinned through a tool wait; B and C then arrive together
// and need more than the pool has besides A's blocks. C waits for B (no live pin is
// reclaimed while other work can run), then takes B's retained blocks; A comes back to
// all its full blocks. C's greedy output matches C run alone on a large pool.
TEST(PolicyEngineTest, PinnedBlocksSurviveALaterAdmissionThatNeedsThem) {
  auto model = MakeTestModel();
  ASSERT_NE(model, nullptr);
  std::mt19937_64 rng(model->seed + 16);
  PolicyEngine e(*model, "ttl", 12);
  std::vector<int32_t> a = RandomTokens(rng, 2 * kBlockSize + 3);  // 3 blocks with output
  const Outcome a1 = e.Run(1, 1, a);
  e.Tool(SessionHint::Kind::kToolBegin, 1, "cat");
  ASSERT_EQ(e.impl()->GetStats().pinned_blocks, 3);
  const std::vector<int32_t> b = RandomTokens(rng, 4 * kBlockSize + 8);  // 5 blocks each
  const std::vector<int32_t> c = RandomTokens(rng, 4 * kBlockSize + 8);
  Outcome b1, c1;
  e.Submit(2, 2, b, &b1);
  e.Submit(3, 3, c, &c1);
  e.Drive();
  EXPECT_EQ(b1.reason, FinishReason::kLength);
  EXPECT_EQ(c1.reason, FinishReason::kLength);
  EXPECT_GT(c1.order, b1.order) << "C could only run once B's blocks were free";
  EngineStats s = e.impl()->GetStats();
  EXPECT_EQ(s.pin_violations, 0);
  EXPECT_EQ(s.pinned_blocks, 3);
  e.clock.AdvanceMicros(kSecond / 10);
  e.Tool(SessionHint::Kind::kToolEnd, 1, "cat", kSecond / 10);
  a = NextTurn(a, a1.tokens, RandomTokens(rng, 5));
  const Outcome a2 = e.Run(4, 1, a);
  EXPECT_EQ(a2.usage.cached_tokens, 2 * kBlockSize);
  EXPECT_EQ(e.impl()->GetStats().pins_used, 1);

  PolicyEngine alone(*model, "ttl", 64);
  EXPECT_EQ(alone.Run(1, 3, c).tokens, c1.tokens);
}

// A session the reclaimer gives up is evicted before the prefix of a turn that waits for
// admission. A's and B's turns are retained (lru: no pins); then C and B's next turn
// arrive together. B's arrival hands its blocks to the cache; C, admitted first, needs
// more than the free and cached blocks, so A is reclaimed, and C's blocks come from A's,
// not from B's queued prefix (freed before A's, so by plain recency the older). B's turn
// then runs on its whole cached prefix and answers as B run alone.
TEST(PolicyEngineTest, AReclaimedSessionIsEvictedBeforeAQueuedTurnsPrefix) {
  auto model = MakeTestModel();
  ASSERT_NE(model, nullptr);
  std::mt19937_64 rng(model->seed + 18);
  PolicyEngine e(*model, "lru", 12);
  e.Run(1, 1, RandomTokens(rng, 2 * kBlockSize + 3));  // A: 3 blocks with its output
  std::vector<int32_t> b = RandomTokens(rng, 2 * kBlockSize + 3);
  const Outcome b1 = e.Run(2, 2, b);
  b = NextTurn(b, b1.tokens, RandomTokens(rng, 5));
  Outcome c1, b2;
  e.Submit(3, 3, RandomTokens(rng, 9 * kBlockSize + 8), &c1);  // 10 blocks
  e.Submit(4, 2, b, &b2);
  e.Drive();
  EXPECT_EQ(c1.reason, FinishReason::kLength);
  EXPECT_GT(b2.order, c1.order);
  EXPECT_GE(e.impl()->GetStats().reclaimed_sessions, 1);
  EXPECT_EQ(b2.usage.cached_tokens, 2 * kBlockSize);

  PolicyEngine alone(*model, "lru", 64);
  EXPECT_EQ(alone.Run(1, 2, b).tokens, b2.tokens);
}

// A uid over its device block cap gives up its retained sessions as the next evicted, not
// as the newest cached blocks. On an 8-block pool with a cap of 4 blocks a uid: uid 1's
// prefix (no session) is cached first; uid 2's session 2 then pushes its session 1 past
// the cap, to the cache. A turn of uid 3 needs 2 of the 4 cached blocks and takes session
// 1's, so uid 1's prefix, the older, is still there for its next turn.
TEST(PolicyEngineTest, AUidCapReleaseIsEvictedBeforeAnotherUidsCachedPrefix) {
  auto model = MakeTestModel();
  ASSERT_NE(model, nullptr);
  std::mt19937_64 rng(model->seed + 19);
  PolicyEngine e(*model, "lru", 8, /*max_running=*/64, /*host_blocks=*/0, /*disk_dir=*/"", {},
                 /*max_device_blocks_per_tenant=*/4);
  const std::vector<int32_t> prefix = RandomTokens(rng, 2 * kBlockSize + 3);  // 3 blocks
  e.Run(1, 0, prefix, /*cache_salt=*/1);  // its 2 full blocks cached, no session
  e.Run(2, 1, RandomTokens(rng, 2 * kBlockSize + 3), /*cache_salt=*/2);  // retained
  e.Run(3, 2, RandomTokens(rng, 2 * kBlockSize + 3), /*cache_salt=*/2);
  ASSERT_EQ(e.impl()->GetStats().tenant_cap_releases, 1);  // session 1 went to the cache
  const Outcome other = e.Run(4, 0, RandomTokens(rng, 2 * kBlockSize + 3), /*cache_salt=*/3);
  ASSERT_EQ(other.reason, FinishReason::kLength);  // 3 blocks: 1 free and 2 cached
  const Outcome again = e.Run(5, 0, prefix, /*cache_salt=*/1);
  EXPECT_EQ(again.usage.cached_tokens, 2 * kBlockSize);
}

// A pin gives way when nothing else can make progress: the only waiting request needs the
// pinned blocks, nothing runs, so the pin is reclaimed and counted as a violation.
TEST(PolicyEngineTest, PinIsBrokenOnlyWhenNothingElseCanRun) {
  auto model = MakeTestModel();
  ASSERT_NE(model, nullptr);
  std::mt19937_64 rng(model->seed + 17);
  PolicyEngine e(*model, "ttl", 12);
  e.Run(1, 1, RandomTokens(rng, 2 * kBlockSize + 3));
  e.Tool(SessionHint::Kind::kToolBegin, 1, "cat");
  const Outcome big = e.Run(2, 2, RandomTokens(rng, 10 * kBlockSize + 8));  // 11 blocks
  EXPECT_EQ(big.reason, FinishReason::kLength);
  const EngineStats s = e.impl()->GetStats();
  EXPECT_EQ(s.pin_violations, 1);
  EXPECT_EQ(s.pinned_blocks, 0);
}

// When a pin must give way, the one that saves least per block-second still to be held
// goes: A and B (3 blocks each, equal benefit per block) are pinned by session.retain for
// 1 s and 10 s; C then needs 8 of the 12 blocks with nothing else running, so one pin
// breaks. B's, with ten times the hold ahead, goes; A's next turn finds its whole prefix.
// (By benefit per block alone, the order until 2026-12-07, the earlier deadline broke
// first: A's.)
TEST(PolicyEngineTest, TheLiveBrokenPinIsTheOneWithTheMostHoldLeftPerBenefit) {
  auto model = MakeTestModel();
  ASSERT_NE(model, nullptr);
  std::mt19937_64 rng(model->seed + 21);
  PolicyEngine e(*model, "ttl", 12);
  std::vector<int32_t> a = RandomTokens(rng, 2 * kBlockSize + 3);  // 3 blocks with output
  const Outcome a1 = e.Run(1, 1, a);
  std::vector<int32_t> b = RandomTokens(rng, 2 * kBlockSize + 3);
  const Outcome b1 = e.Run(2, 2, b);
  for (const auto& [session, ttl_s] : {std::pair<SessionId, int64_t>{1, 1}, {2, 10}}) {
    SessionHint h;
    h.kind = SessionHint::Kind::kRetain;
    h.session = session;
    h.at_us = e.clock.NowMicros();
    h.retain_until_us = h.at_us + ttl_s * kSecond;
    e.engine->Hint(h);
  }
  e.Drive();
  ASSERT_EQ(e.impl()->GetStats().pinned_blocks, 6);
  const Outcome c = e.Run(3, 3, RandomTokens(rng, 7 * kBlockSize + 8));  // 8 blocks
  EXPECT_EQ(c.reason, FinishReason::kLength);
  EXPECT_EQ(e.impl()->GetStats().pin_violations, 1);
  a = NextTurn(a, a1.tokens, RandomTokens(rng, 5));
  b = NextTurn(b, b1.tokens, RandomTokens(rng, 5));
  EXPECT_EQ(e.Run(4, 1, a).usage.cached_tokens, 2 * kBlockSize) << "A's 1 s pin was broken";
  EXPECT_LT(e.Run(5, 2, b).usage.cached_tokens, 2 * kBlockSize);
}

// A policy switch (SIGHUP) also applies the tool statistics' knobs: a smaller window
// drops old samples, and with min samples lowered a key's own CDF replaces the prior.
TEST(PolicyEngineTest, PolicySwitchAppliesToolStatsKnobs) {
  auto model = MakeTestModel();
  ASSERT_NE(model, nullptr);
  std::mt19937_64 rng(model->seed + 18);
  PolicyEngine e(*model, "ttl", 64);
  e.Run(1, 1, RandomTokens(rng, 2 * kBlockSize + 3));
  for (int i = 0; i < 5; ++i) {
    e.Tool(SessionHint::Kind::kToolBegin, 1, "grep");
    e.Tool(SessionHint::Kind::kToolEnd, 1, "grep", kSecond);
  }
  e.Tool(SessionHint::Kind::kToolBegin, 1, "grep");
  EngineStats s = e.impl()->GetStats();
  ASSERT_EQ(s.tool_keys.size(), 1u);
  EXPECT_EQ(s.tool_keys[0].summary.num_samples, 5);
  const double prior_ttl = s.tool_keys[0].last_ttl_s;  // 5 < 20 samples: the 5 s prior
  EXPECT_GT(prior_ttl, 5.0);
  PolicyOptions next;
  next.name = "ttl";
  next.cost_model = DefaultCostModel();
  next.tool_stats.window_samples = 2;
  next.tool_stats.min_samples_per_key = 2;
  ASSERT_TRUE(e.engine->SetPolicy(next).ok());
  e.Tool(SessionHint::Kind::kToolEnd, 1, "grep", kSecond);
  e.Tool(SessionHint::Kind::kToolBegin, 1, "grep");
  s = e.impl()->GetStats();
  ASSERT_EQ(s.tool_keys.size(), 1u);
  EXPECT_EQ(s.tool_keys[0].summary.num_samples, 2);
  EXPECT_NEAR(s.tool_keys[0].last_ttl_s, 1.0, 1e-6);  // grep's own samples: all 1 s
}

// Program-aware admission: a returning pinned program is admitted before a newer program
// that arrived first in the queue; ttl-fcfs and lru keep FCFS.
int NewcomerFinishOrder(const std::string& policy) {
  auto model = MakeTestModel();
  EXPECT_NE(model, nullptr);
  std::mt19937_64 rng(model->seed + 14);
  PolicyEngine e(*model, policy, 64, /*max_running=*/1);
  std::vector<int32_t> a = RandomTokens(rng, 2 * kBlockSize + 3);
  const Outcome a1 = e.Run(1, 1, a);
  e.Tool(SessionHint::Kind::kToolBegin, 1, "sed");
  e.clock.AdvanceMicros(kSecond / 10);
  Outcome newcomer, returning;
  e.Submit(2, 2, RandomTokens(rng, 40), &newcomer);  // a new program, queued first
  e.clock.AdvanceMicros(kSecond / 10);
  e.Tool(SessionHint::Kind::kToolEnd, 1, "sed", kSecond / 5, /*drive=*/false);
  a.insert(a.end(), a1.tokens.begin(), a1.tokens.end());
  e.Submit(3, 1, a, &returning);
  e.Drive();
  EXPECT_EQ(newcomer.reason, FinishReason::kLength);
  EXPECT_EQ(returning.reason, FinishReason::kLength);
  return newcomer.order - returning.order;  // > 0: the returning program went first
}

TEST(PolicyEngineTest, ReturningPinnedProgramIsAdmittedFirstUnderTtlOnly) {
  EXPECT_GT(NewcomerFinishOrder("ttl"), 0);
  EXPECT_GT(NewcomerFinishOrder("fixed-ttl"), 0);
  EXPECT_LT(NewcomerFinishOrder("ttl-fcfs"), 0);
  EXPECT_LT(NewcomerFinishOrder("lru"), 0);
}

// tool_end starts reading a reclaimed session's blocks back up from disk before its next
// turn is submitted (issue 10, item 3); the turn then finds them in host memory.
TEST(PolicyEngineTest, ToolEndPromotesDemotedBlocksBeforeTheNextTurn) {
  auto model = MakeTestModel();
  ASSERT_NE(model, nullptr);
  std::mt19937_64 rng(model->seed + 15);
  testing::TempDir dir;
  PolicyEngine e(*model, "lru", 10, 64, /*host_blocks=*/8, dir.path());
  std::vector<int32_t> a = RandomTokens(rng, 5 * kBlockSize + 7);
  const Outcome a1 = e.Run(1, 1, a);
  e.Tool(SessionHint::Kind::kToolBegin, 1, "pytest");
  for (int i = 0; i < 3; ++i) e.Run(10 + i, 100 + i, RandomTokens(rng, 6 * kBlockSize + 3));
  const EngineStats before = e.impl()->GetStats();
  ASSERT_GT(before.disk_blocks_used, 0);
  ASSERT_GE(before.reclaimed_sessions, 1);
  e.Tool(SessionHint::Kind::kToolEnd, 1, "pytest", kSecond);
  // The reads run on the disk worker; steps collect those that have landed. Under load
  // one step can come too early, so step until some land (bounded: 5 s).
  EngineStats after = e.impl()->GetStats();
  for (int i = 0; i < 500 && after.promoted_blocks == before.promoted_blocks; ++i) {
    if (i > 0) std::this_thread::sleep_for(std::chrono::milliseconds(10));
    e.Run(20 + i, 200 + i, RandomTokens(rng, 3));
    after = e.impl()->GetStats();
  }
  EXPECT_GT(after.promoted_blocks, before.promoted_blocks) << "tool_end read nothing up";
  a = NextTurn(a, a1.tokens, RandomTokens(rng, 5));
  const Outcome a2 = e.Run(2, 1, a);
  EXPECT_GT(a2.usage.cached_tokens, 0);
  EXPECT_GT(a2.usage.cached_host_tokens + a2.usage.cached_disk_tokens, 0);
}

// The turn boundary: A (a session that has called a tool) ends a turn; before its
// tool_begin arrives, C (no tools, more uses) is retained and D needs a session's blocks.
// Without a grace pin A is the GDSF victim and its next turn recomputes its prefix; with
// one, C goes instead and A's tool_begin finds its KV held. Returns A's third turn's
// cached tokens and the stats.
std::pair<int64_t, EngineStats> GapBeforeToolBegin(const std::string& policy, double grace_s) {
  auto model = MakeTestModel();
  EXPECT_NE(model, nullptr);
  std::mt19937_64 rng(model->seed + 19);
  PolicyEngine e(*model, policy, 12, 64, 0, "",
                 [&](PolicyOptions* o) { o->turn_end_grace_s = grace_s; });
  std::vector<int32_t> a = RandomTokens(rng, 2 * kBlockSize + 3);
  const Outcome a1 = e.Run(1, 1, a);
  e.Tool(SessionHint::Kind::kToolBegin, 1, "cat");
  e.clock.AdvanceMicros(kSecond / 10);
  e.Tool(SessionHint::Kind::kToolEnd, 1, "cat", kSecond / 10);
  a = NextTurn(a, a1.tokens, RandomTokens(rng, 5));
  const Outcome a2 = e.Run(2, 1, a);  // KV of 47 tokens: 2 full blocks
  a.insert(a.end(), a2.tokens.begin(), a2.tokens.end());
  // No tool_begin yet (the client's round trip). C: three turns, more uses than A.
  std::vector<int32_t> c = RandomTokens(rng, 20);
  for (int turn = 0; turn < 3; ++turn) {
    e.clock.AdvanceMicros(kSecond / 100);
    const Outcome out = e.Run(10 + turn, 3, c);
    c.insert(c.end(), out.tokens.begin(), out.tokens.end());
    c.push_back(static_cast<int32_t>(turn + 7));
  }
  e.clock.AdvanceMicros(kSecond / 100);
  e.Run(20, 4, RandomTokens(rng, 8 * kBlockSize - 4));  // D: reclaims one session
  e.Tool(SessionHint::Kind::kToolBegin, 1, "cat");
  e.clock.AdvanceMicros(kSecond / 10);
  e.Tool(SessionHint::Kind::kToolEnd, 1, "cat", kSecond / 10);
  for (int32_t t : RandomTokens(rng, 5)) a.push_back(t);
  const Outcome a3 = e.Run(3, 1, a);
  return {a3.usage.cached_tokens, e.impl()->GetStats()};
}

TEST(PolicyEngineTest, TurnEndGracePinKeepsASessionUntilItsToolBegin) {
  for (const char* policy : {"ttl", "fixed-ttl"}) {
    SCOPED_TRACE(policy);
    const auto [grace_cached, grace] = GapBeforeToolBegin(policy, 0.5);
    const auto [none_cached, none] = GapBeforeToolBegin(policy, 0);
    std::printf("%s: A's turn after the gap cached tokens: grace %lld, no grace %lld\n", policy,
                static_cast<long long>(grace_cached), static_cast<long long>(none_cached));
    EXPECT_EQ(grace_cached, 2 * kBlockSize);  // both full blocks kept on the device
    EXPECT_LT(none_cached, grace_cached);
    EXPECT_EQ(grace.grace_pins_granted, 2);  // A's 2nd and 3rd turns; its 1st had no tool yet
    EXPECT_EQ(grace.grace_pins_bridged, 1);
    EXPECT_EQ(grace.pin_violations, 0);
    EXPECT_GE(grace.reclaimed_sessions, 1);  // C went instead
    EXPECT_EQ(none.grace_pins_granted, 0);
  }
  const auto [lru_cached, lru] = GapBeforeToolBegin("lru", 0.5);  // lru has no grace pin
  EXPECT_EQ(lru.grace_pins_granted, 0);
  EXPECT_LT(lru_cached, 2 * kBlockSize);
}

// A grace pin is bounded: past turn_end_grace_s with no tool_begin it is an expired pin
// (reclaimed after unpinned sessions, before live ones), and it is not a learned pin.
TEST(PolicyEngineTest, TurnEndGracePinExpiresAndIsNotALearnedPin) {
  auto model = MakeTestModel();
  ASSERT_NE(model, nullptr);
  std::mt19937_64 rng(model->seed + 20);
  PolicyEngine e(*model, "ttl", 64);
  std::vector<int32_t> a = RandomTokens(rng, 2 * kBlockSize + 3);
  const Outcome a1 = e.Run(1, 1, a);
  EXPECT_EQ(e.impl()->GetStats().pinned_blocks, 0);  // no tool yet: no grace
  e.Tool(SessionHint::Kind::kToolBegin, 1, "cat");
  e.Tool(SessionHint::Kind::kToolEnd, 1, "cat", kSecond / 10);
  a.insert(a.end(), a1.tokens.begin(), a1.tokens.end());
  e.Run(2, 1, a);
  EngineStats s = e.impl()->GetStats();
  EXPECT_EQ(s.grace_pins_granted, 1);
  EXPECT_EQ(s.pinned_blocks, 3);
  EXPECT_EQ(s.pins_granted, 1);  // the tool's pin only
  e.clock.AdvanceMicros(kSecond);
  e.Run(3, 2, RandomTokens(rng, 5));  // a step after the grace ran out
  s = e.impl()->GetStats();
  EXPECT_EQ(s.pinned_blocks, 0);
  EXPECT_EQ(s.grace_pins_bridged, 0);
  EXPECT_EQ(s.pins_used + s.pins_expired, 1);
}

}  // namespace
}  // namespace kvkeep
