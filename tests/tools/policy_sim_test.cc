// The policy simulator (bench/sim/agent_sim.h over engine/sim_backend.h): its step prices
// against the cost model's own formulas, one turn's simulated time against the cost
// model directly, determinism for a seed, and token accounting that adds up.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>

#include "base/file.h"
#include "bench/sim/agent_sim.h"
#include "policy/tool_key.h"
#include "tests/testlib/test_util.h"
#include "tools/replay/importers.h"
#include "tools/replay/trace.h"

namespace kvkeep::sim {
namespace {

// The 8B-shape H100 fit of bench/data/h100_8b_timings.json.
CostModel H100Model() {
  auto timing = LoadTimingSamples(
      DefaultEnv(), JoinPath(testing::SourceDir(), "bench/data/h100_8b_timings.json"));
  EXPECT_TRUE(timing.ok()) << timing.status().ToString();
  auto fit = FitCostModel(timing->first, timing->second);
  EXPECT_TRUE(fit.ok()) << fit.status().ToString();
  CostModel m = fit->model;
  m.host_to_device_bytes_per_s = 25e9;
  return m;
}

ForwardBatch Batch(const std::vector<std::pair<int32_t, int32_t>>& new_and_kv_len) {
  ForwardBatch b;
  b.q_start = {0};
  for (auto [n, kv_len] : new_and_kv_len) {
    for (int32_t i = 0; i < n; ++i) b.token_ids.push_back(1);
    b.q_start.push_back(static_cast<int32_t>(b.token_ids.size()));
    b.kv_len.push_back(kv_len);
  }
  return b;
}

TEST(SimStepSeconds, DecodeStepIsTheCostModelsDecodeStep) {
  const CostModel m = H100Model();
  const ForwardBatch b = Batch({{1, 4000}, {1, 9000}, {1, 17}});
  EXPECT_NEAR(SimStepSeconds(m, b), m.DecodeStepSeconds(4000 + 9000 + 17), 1e-12);
}

// A 256-block pool of 8B-shape blocks (2 MiB) and a 25 GB/s host link; swaps overlap the
// steps when there is a clock.
SimBackendOptions SwapTestOptions(const CostModel& m, const Clock* clock) {
  SimBackendOptions o;
  o.config.vocab_size = 64;
  o.num_kv_blocks = 256;
  o.block_size = 16;
  o.kv_bytes_per_token = 131072;
  o.cost = m;
  o.host_bytes_per_s = 25e9;
  o.clock = clock;
  return o;
}

// With a clock, a swap runs on the host link from when it is issued: a step over other
// blocks runs beside it and pays nothing, a step that reads a swapped-in block waits only
// for what is left of the copy. Without one, the swap is added to its step.
TEST(SimBackendSwaps, OverlapStepsThatDoNotTouchTheirBlocks) {
  const CostModel m = H100Model();
  for (bool overlap : {false, true}) {
    FakeClock clock;
    SimBackendOptions o = SwapTestOptions(m, overlap ? &clock : nullptr);
    auto sim = SimBackend::Create(o);
    ASSERT_TRUE(sim.ok());
    EXPECT_EQ((*sim)->SwapsOverlapCompute(), overlap);
    ASSERT_TRUE((*sim)->AllocateHostTier(128).ok());
    // 100 blocks come up into 100-199 (8.4 ms at 25 GB/s); a decode over blocks 0-1 runs
    // beside the copy, then a step over 0-1 and 100-199 reads them.
    constexpr int32_t kSwapped = 100;
    std::vector<std::pair<int32_t, int32_t>> in;
    for (int32_t i = 0; i < kSwapped; ++i) in.push_back({i, 100 + i});
    ForwardBatch other = Batch({{1, 32}});
    other.max_blocks_per_seq = 2;
    other.block_tables = {0, 1};
    other.logit_rows = {0};
    ForwardBatch reader = Batch({{1, 32}, {1, 16 * kSwapped}});
    reader.max_blocks_per_seq = kSwapped;
    reader.block_tables.assign(2 * kSwapped, -1);
    reader.block_tables[0] = 0;
    reader.block_tables[1] = 1;
    for (int32_t i = 0; i < kSwapped; ++i) reader.block_tables[kSwapped + i] = 100 + i;
    reader.logit_rows = {0, 1};
    const double copy_s =
        kSwapped * static_cast<double>((*sim)->block_bytes()) / o.host_bytes_per_s;
    const double other_s = SimStepSeconds(m, other);
    ASSERT_GT(copy_s, other_s);  // the copy outlasts the step beside it
    std::vector<float> logits;
    ASSERT_TRUE((*sim)->SwapIn(in).ok());
    ASSERT_TRUE((*sim)->Forward(other, &logits).ok());
    const double first = (*sim)->TakeElapsedSeconds();
    clock.AdvanceMicros(static_cast<int64_t>(std::llround(first * 1e6)));
    ASSERT_TRUE((*sim)->Forward(reader, &logits).ok());
    const double second = (*sim)->TakeElapsedSeconds();
    const double reader_s = SimStepSeconds(m, reader);
    if (overlap) {
      EXPECT_NEAR(first, other_s, 1e-12);
      EXPECT_NEAR(first + second, copy_s + reader_s, 2e-6);  // the clock moves in microseconds
      EXPECT_NEAR((*sim)->counters().swap_wait_s, copy_s - other_s, 2e-6);
    } else {
      EXPECT_NEAR(first, copy_s + other_s, 1e-12);
      EXPECT_NEAR(second, reader_s, 1e-12);
      EXPECT_NEAR((*sim)->counters().swap_wait_s, copy_s, 1e-12);
    }
    EXPECT_NEAR((*sim)->counters().swap_s, copy_s, 1e-12);
    EXPECT_NEAR((*sim)->counters().busy_s, first + second, 1e-12);
  }
}

// The two directions share the host link (SimHostLink): a swap-in beside a swap-out over
// other blocks finishes at the copy time / duplex_share, one into a block the swap-out
// still reads waits for it. A decode over the swapped-in blocks waits for exactly that.
TEST(SimBackendSwaps, SwapInsRunBesideSwapOutsOverOtherBlocks) {
  const CostModel m = H100Model();
  for (bool shared_block : {false, true}) {
    FakeClock clock;
    SimBackendOptions o = SwapTestOptions(m, &clock);
    o.duplex_share = 0.7;
    auto sim = SimBackend::Create(o);
    ASSERT_TRUE(sim.ok());
    ASSERT_TRUE((*sim)->AllocateHostTier(256).ok());
    constexpr int32_t kBlocks = 64;
    std::vector<std::pair<int32_t, int32_t>> out, in;
    for (int32_t i = 0; i < kBlocks; ++i) {
      out.push_back({i, i});  // device i -> host i
      // host 100 + i -> device 100 + i, or into the swap-out's block 0 for the last one.
      in.push_back({100 + i, shared_block && i == kBlocks - 1 ? 0 : 100 + i});
    }
    ASSERT_TRUE((*sim)->SwapOut(out).ok());
    ASSERT_TRUE((*sim)->SwapIn(in).ok());
    ForwardBatch reader = Batch({{1, 16 * kBlocks}});
    reader.max_blocks_per_seq = kBlocks;
    for (const auto& [host, device] : in) reader.block_tables.push_back(device);
    reader.logit_rows = {0};
    std::vector<float> logits;
    ASSERT_TRUE((*sim)->Forward(reader, &logits).ok());
    const double copy_s = kBlocks * static_cast<double>((*sim)->block_bytes()) / o.host_bytes_per_s;
    const double wait_s = shared_block ? 2 * copy_s : copy_s / o.duplex_share;
    EXPECT_NEAR((*sim)->counters().swap_wait_s, wait_s, 1e-12) << shared_block;
    EXPECT_NEAR((*sim)->TakeElapsedSeconds(), wait_s + SimStepSeconds(m, reader), 1e-12);
  }
}

TEST(SimStepSeconds, PrefillChunksSumToOneShotPrefill) {
  const CostModel m = H100Model();
  // 5000 tokens after 3000 cached, in chunks of 2048, 2048 and 904.
  const double chunked = SimStepSeconds(m, Batch({{2048, 3000 + 2048}})) +
                         SimStepSeconds(m, Batch({{2048, 3000 + 4096}})) +
                         SimStepSeconds(m, Batch({{904, 3000 + 5000}}));
  EXPECT_NEAR(chunked, m.PrefillSeconds(5000, 3000), 1e-9);
  // A tiny step costs at least the weights' read.
  EXPECT_NEAR(SimStepSeconds(m, Batch({{4, 4}})),
              m.decode_fixed_s + m.PrefillSeconds(4, 0) - m.prefill_per_token_s * 4, 1e-12);
}

replay::AgentStep Step(int64_t appended, int64_t output, const std::string& tool, double tool_s) {
  replay::AgentStep s;
  s.appended_tokens = appended;
  s.output_tokens = output;
  s.tool = tool;
  s.command = tool;
  s.tool_s = tool_s;
  s.tool_timed = !tool.empty();
  return s;
}

SimOptions Options(const std::string& policy) {
  SimOptions o;
  o.policy = policy;
  o.cost = H100Model();
  return o;
}

TEST(AgentSim, OneAgentsTurnsTakeTheCostModelsTime) {
  replay::AgentProgram p;
  p.id = "one";
  p.steps = {Step(3000, 50, "bash", 2.5), Step(1000, 20, "", 0)};
  const SimOptions o = Options("lru");
  auto r = RunAgentSim({p}, {{0.0, 0}}, o);
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  ASSERT_EQ(r->turns.size(), 2u);
  const CostModel& m = o.cost;
  const double tolerance_s = 2e-6 * 80;  // the clock moves in whole microseconds per step

  // Turn 0: a 3000-token prefill (chunks of 2048 and 952), then 49 decode steps.
  const SimTurn& t0 = r->turns[0];
  EXPECT_EQ(t0.context_tokens, 3000);
  EXPECT_EQ(t0.cached_tokens, 0);
  EXPECT_NEAR(t0.first_token_s - t0.submit_s, m.PrefillSeconds(3000, 0), tolerance_s);
  double decode_s = 0;
  for (int k = 1; k < 50; ++k) decode_s += m.DecodeStepSeconds(3000 + k);
  EXPECT_NEAR(t0.finish_s - t0.first_token_s, decode_s, tolerance_s);

  // Turn 1 after the 2.5 s tool: the session was retained, so everything but the partial
  // last block and the appended tokens is cached; the rest is one prefill after it.
  const SimTurn& t1 = r->turns[1];
  EXPECT_NEAR(t1.submit_s, t0.finish_s + 2.5, 2e-6);
  EXPECT_EQ(t1.context_tokens, 4050);
  EXPECT_EQ(t1.cached_tokens, 3040);  // 190 full blocks of the 3050 tokens computed
  EXPECT_EQ(t1.first_prefill_tokens, 1000);
  EXPECT_EQ(t1.reprefill_tokens, 10);
  EXPECT_NEAR(t1.first_token_s - t1.submit_s, m.PrefillSeconds(4050 - 3040, 3040), tolerance_s);
  EXPECT_NEAR(r->agents[0].finish_s - r->agents[0].arrival_s, t1.finish_s, 1e-9);
}

// A pin holds the session's blocks for the tool's duration; lru and none never pin.
TEST(AgentSim, PinBlockSecondsAreTheSessionsBlocksTimesTheToolWait) {
  replay::AgentProgram p;
  p.id = "one";
  p.steps = {Step(3000, 50, "bash", 2.5), Step(1000, 20, "", 0)};
  for (const char* policy : {"ttl", "fixed-ttl", "lru", "none"}) {
    auto r = RunAgentSim({p}, {{0.0, 0}}, Options(policy));
    ASSERT_TRUE(r.ok()) << r.status().ToString();
    const SimSummary s = Summarize(*r);
    if (std::string(policy) == "lru" || std::string(policy) == "none") {
      EXPECT_EQ(s.pins_granted, 0) << policy;
      EXPECT_EQ(s.pin_block_s, 0) << policy;
      continue;
    }
    // An unseen tool: ttl pins to its prior's tail, fixed-ttl for 2 s (< the 2.5 s wait).
    ASSERT_EQ(s.pins_granted, 1) << policy;
    const double held_s = std::string(policy) == "ttl" ? 2.5 : 2.0;
    // The session holds 3049 computed tokens (the last forced token is never computed):
    // 191 blocks of 16.
    EXPECT_NEAR(s.pin_block_s, 191 * held_s, 191 * 0.011) << policy;  // 10 ms sampling
    EXPECT_EQ(s.pin_violations, 0);
  }
}

// `kvkeep replay run --max-turns` closes a cut session at its last turn's reply: it sends
// no tool_begin for the tool that turn called (nothing reads its result), so nothing pins
// the session then, and its job ends with that turn. A program the trace itself ends still
// waits out its last tool and tail_s.
TEST(AgentSim, ACutProgramEndsAtItsLastReplyWithoutPinningItsTool) {
  replay::AgentProgram p;
  p.id = "one";
  p.steps = {Step(3000, 50, "bash", 2.5), Step(1000, 20, "bash", 9.0)};
  p.tail_s = 0.7;
  for (bool cut : {true, false}) {
    p.cut = cut;
    auto r = RunAgentSim({p}, {{0.0, 0}}, Options("ttl"));
    ASSERT_TRUE(r.ok()) << r.status().ToString();
    ASSERT_EQ(r->turns.size(), 2u);
    EXPECT_EQ(Summarize(*r).pins_granted, cut ? 1 : 2) << "cut " << cut;
    EXPECT_NEAR(r->agents[0].finish_s, r->turns[1].finish_s + (cut ? 0 : 9.0 + 0.7), 2e-6)
        << "cut " << cut;
  }
}

// policy_bench --step-logs: the simulator's steps in kvkeepd --step-log's format, each
// with its price; they add up to the engine's busy time and fit back to the cost model.
TEST(AgentSim, StepLogHoldsEachStepAtItsPrice) {
  replay::AgentProgram p;
  p.id = "one";
  p.steps = {Step(3000, 50, "bash", 2.5), Step(1000, 20, "", 0)};
  StepLog log(StepLog::kDefaultCapacity);
  SimOptions o = Options("lru");
  o.step_log = &log;
  auto r = RunAgentSim({p, p}, {{0.0, 0}, {0.3, 1}}, o);
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  ASSERT_FALSE(log.steps().empty());
  EXPECT_EQ(static_cast<int64_t>(log.steps().size()), r->engine_steps);
  double logged_s = 0;
  int64_t prefilled = 0, decoded = 0;
  for (const StepTiming& t : log.steps()) {
    EXPECT_GT(t.step_s, 0);
    logged_s += t.step_s;
    prefilled += t.prefill_tokens;
    decoded += t.decode_sequences;
  }
  EXPECT_NEAR(logged_s, r->backend.busy_s, 1e-5 * r->engine_steps);  // microsecond steps
  int64_t want_prefill = 0, want_decode = 0;
  for (const SimTurn& t : r->turns) {
    want_prefill += t.context_tokens - t.cached_tokens;
  }
  for (const SimTurn& t : r->turns) want_decode += (t.step == 0 ? 50 : 20) - 1;
  EXPECT_EQ(prefilled, want_prefill);
  EXPECT_EQ(decoded, want_decode);
}

// The client's round trip: half of it between a turn's last token and its tool_begin,
// half between tool_end and the next turn.
TEST(AgentSim, TheClientRoundTripDelaysTheToolAndTheNextTurn) {
  replay::AgentProgram p;
  p.id = "one";
  p.steps = {Step(3000, 50, "bash", 2.5), Step(1000, 20, "", 0)};
  SimOptions o = Options("ttl");
  o.client_round_trip_s = 0.003;
  auto r = RunAgentSim({p}, {{0.0, 0}}, o);
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  ASSERT_EQ(r->turns.size(), 2u);
  EXPECT_NEAR(r->turns[1].submit_s, r->turns[0].finish_s + 2.5 + 0.003, 2e-6);
  EXPECT_EQ(r->turns[1].reprefill_tokens, 10);  // alone: nothing takes its blocks
  EXPECT_EQ(Summarize(*r).pins_used, 1);
}

// kvkeepd stamps a hint or a request when it receives it, in the middle of whatever step
// runs; the simulator delivers them between steps, so it stamps them with the client's
// clock: the next turn is submitted (and its agent ends) exactly when the client sent it,
// not at the end of the step another agent's decode was running then.
TEST(AgentSim, EventsAreStampedWhenTheClientSentThemNotAtTheNextStep) {
  replay::AgentProgram a, c;
  a.id = "a";
  a.steps = {Step(3000, 50, "bash", 2.5), Step(1000, 20, "", 0)};
  a.tail_s = 0.7;
  c.id = "c";
  c.steps = {Step(8000, 1000, "", 0)};  // decodes through a's tool, turn and tail
  SimOptions o = Options("ttl");
  o.client_round_trip_s = 0.003;
  auto r = RunAgentSim({a, c}, {{0.0, 0}, {0.0, 1}}, o);
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  const SimTurn* a0 = nullptr;
  const SimTurn* a1 = nullptr;
  const SimTurn* c0 = nullptr;
  for (const SimTurn& t : r->turns) {
    if (t.agent == 0) (t.step == 0 ? a0 : a1) = &t;
    if (t.agent == 1) c0 = &t;
  }
  ASSERT_TRUE(a0 != nullptr && a1 != nullptr && c0 != nullptr);
  ASSERT_GT(c0->finish_s, r->agents[0].finish_s);  // c's steps ran all along
  EXPECT_NEAR(a1->submit_s, a0->finish_s + 0.0015 + 2.5 + 0.0015, 2e-6);
  EXPECT_NEAR(r->agents[0].finish_s, a1->finish_s + 0.7, 2e-6);
  EXPECT_EQ(Summarize(*r).pins_used, 1);
}

// A turn that waits for room when another finishes while a third still decodes: without a
// round trip the finished session's tool_begin pins it before the waiting turn's
// admission, and the waiting turn waits; with one, the waiting turn is admitted in the
// step between, reclaims the unpinned session, and the pin later granted holds nothing
// (neither used nor expired), so its next turn re-prefills what the waiting turn took.
TEST(AgentSim, TheRoundTripLeavesAFinishedSessionUnpinnedForOneStep) {
  replay::AgentProgram a, b, c;
  a.id = "a";
  a.steps = {Step(3000, 50, "bash", 2.5), Step(1000, 20, "", 0)};
  b.id = "b";
  b.steps = {Step(3000, 20, "", 0)};
  c.id = "c";
  c.steps = {Step(1000, 1000, "", 0)};  // decodes past a's tool: a pin need not give way
  int64_t reprefill_without = -1;
  for (double round_trip_s : {0.0, 0.003}) {
    SimOptions o = Options("ttl");
    o.device_blocks = 340;  // a's 191 blocks, c's 63-126 and b's 189 do not fit together
    o.client_round_trip_s = round_trip_s;
    auto r = RunAgentSim({a, b, c}, {{0.0, 0}, {0.01, 1}, {0.0, 2}}, o);
    ASSERT_TRUE(r.ok()) << r.status().ToString();
    const SimSummary s = Summarize(*r);
    const SimTurn* a1 = nullptr;
    for (const SimTurn& t : r->turns) {
      if (t.agent == 0 && t.step == 1) a1 = &t;
    }
    ASSERT_NE(a1, nullptr);
    ASSERT_EQ(s.pins_granted, 1) << round_trip_s;
    EXPECT_EQ(s.pin_violations, 0) << round_trip_s;
    if (round_trip_s == 0) {
      EXPECT_EQ(s.pins_used, 1);
      reprefill_without = a1->reprefill_tokens;
    } else {
      EXPECT_EQ(s.pins_used + s.pins_expired, 0);
      // b's 189 blocks less the free ones: at least 80 blocks of a's taken.
      EXPECT_GE(a1->reprefill_tokens, reprefill_without + 80 * 16);
    }
  }
}

// Synthetic programs of a few thousand tokens with tool waits, under a pool too small
// for all agents at once (reclaim, host tier, preemption).
std::vector<replay::AgentProgram> SmallPrograms() {
  std::vector<replay::AgentProgram> out;
  for (int i = 0; i < 4; ++i) {
    replay::AgentProgram p;
    p.id = "p" + std::to_string(i);
    for (int t = 0; t < 6; ++t) {
      p.steps.push_back(
          Step(300 + 97 * ((i + t) % 5), 40 + 13 * (i * t % 7), t == 5 ? "" : "bash", 0.2 * i + t));
    }
    out.push_back(std::move(p));
  }
  return out;
}

SimOptions Tight(const std::string& policy) {
  SimOptions o = Options(policy);
  o.device_blocks = 700;
  o.host_blocks = 300;
  o.max_running = 8;
  return o;
}

TEST(AgentSim, SameSeedSameResult) {
  const auto programs = SmallPrograms();
  auto arrivals = replay::MakeArrivals(programs.size(), 12, 2.0, testing::TestSeed());
  ASSERT_TRUE(arrivals.ok());
  for (const char* policy : {"ttl", "ttl-fcfs", "fixed-ttl", "lru", "none"}) {
    auto a = RunAgentSim(programs, *arrivals, Tight(policy));
    auto b = RunAgentSim(programs, *arrivals, Tight(policy));
    ASSERT_TRUE(a.ok() && b.ok()) << a.status().ToString() << b.status().ToString();
    ASSERT_EQ(a->turns.size(), b->turns.size());
    for (size_t i = 0; i < a->turns.size(); ++i) {
      EXPECT_EQ(a->turns[i].agent, b->turns[i].agent);
      EXPECT_EQ(a->turns[i].finish_s, b->turns[i].finish_s);
      EXPECT_EQ(a->turns[i].cached_tokens, b->turns[i].cached_tokens);
      EXPECT_EQ(a->turns[i].recomputed_tokens, b->turns[i].recomputed_tokens);
    }
    EXPECT_EQ(a->end_s, b->end_s);
    EXPECT_EQ(a->engine.reclaimed_sessions, b->engine.reclaimed_sessions);
    EXPECT_EQ(a->pin_block_s, b->pin_block_s);
    // A different seed moves the arrivals and so the result.
    auto other = replay::MakeArrivals(programs.size(), 12, 2.0, testing::TestSeed() + 1);
    auto c = RunAgentSim(programs, *other, Tight(policy));
    ASSERT_TRUE(c.ok());
    EXPECT_NE(a->end_s, c->end_s);
  }
}

TEST(AgentSim, AccountingAddsUp) {
  const auto programs = SmallPrograms();
  auto arrivals = replay::MakeArrivals(programs.size(), 12, 2.0, testing::TestSeed());
  ASSERT_TRUE(arrivals.ok());
  for (const char* policy : {"ttl", "ttl-fcfs", "fixed-ttl", "lru", "none"}) {
    auto r = RunAgentSim(programs, *arrivals, Tight(policy));
    ASSERT_TRUE(r.ok()) << r.status().ToString();
    ASSERT_EQ(r->turns.size(), 12u * 6u);
    int64_t recomputed = 0, generated = 0, overcount = 0;
    for (const SimTurn& t : r->turns) {
      const replay::AgentStep& step = programs[(*arrivals)[t.agent].program].steps[t.step];
      EXPECT_TRUE(t.ok);
      EXPECT_EQ(t.generated_tokens, step.output_tokens);
      EXPECT_EQ(t.first_prefill_tokens, step.appended_tokens);
      EXPECT_LE(t.cached_host_tokens, t.cached_tokens);
      EXPECT_LE(t.submit_s, t.first_token_s);
      EXPECT_LE(t.first_token_s, t.finish_s);
      recomputed += t.recomputed_tokens;
      generated += t.generated_tokens;
      overcount += t.recounted_tokens;
      EXPECT_GE(t.recounted_tokens,
                std::max<int64_t>(0, t.recomputed_tokens + t.cached_tokens - t.context_tokens));
      if (t.recomputed_tokens + t.cached_tokens == t.context_tokens) {  // not preempted
        EXPECT_EQ(t.cached_tokens + t.first_prefill_tokens + t.reprefill_tokens, t.context_tokens);
      }
      if (std::string(policy) == "none") {
        EXPECT_EQ(t.cached_tokens, 0);
      }
    }
    // Every logit row the backend returned became a generated token.
    EXPECT_EQ(r->backend.sampled_rows, generated) << policy;
    // Every token the backend computed is a prefilled one or a decode of a forced one.
    // Each admission's prefill yields one sample and a turn's last forced token is never
    // computed, so without preemption computed = recomputed + generated - turns. A turn
    // re-admitted after it sampled computes one token fewer than that per re-admission;
    // such a turn counts its context again (cached + recomputed > context), by at least 1.
    const int64_t computed = r->backend.prefill_tokens + r->backend.decode_tokens;
    const int64_t unpreempted = recomputed + generated - static_cast<int64_t>(r->turns.size());
    if (overcount == 0) {
      EXPECT_EQ(computed, unpreempted) << policy;
    } else {
      EXPECT_LE(computed, unpreempted) << policy;
      EXPECT_GE(computed, unpreempted - overcount) << policy;
    }
    // Swap time is the swapped blocks' bytes over the host link; steps wait for part of it
    // at most (the copies overlap the steps that do not touch their blocks).
    const SimOptions o = Tight(policy);
    const double block_bytes = static_cast<double>(o.cost.kv_bytes_per_token * o.block_size);
    const auto swapped = r->backend.swapped_in_blocks + r->backend.swapped_out_blocks;
    EXPECT_NEAR(r->backend.swap_s, static_cast<double>(swapped) * block_bytes / o.host_bytes_per_s,
                1e-9)
        << policy;
    EXPECT_LE(r->backend.swap_wait_s, r->backend.swap_s + 1e-9) << policy;
    EXPECT_LE(r->backend.swap_wait_s, r->backend.busy_s) << policy;
    const SimSummary s = Summarize(*r);
    EXPECT_EQ(s.swap_s, r->backend.swap_s);
    EXPECT_EQ(s.swap_wait_s, r->backend.swap_wait_s);
    EXPECT_EQ(s.agents_done, 12);
    EXPECT_GE(s.hit_ratio, 0);
    EXPECT_LE(s.hit_ratio, 1);
    if (std::string(policy) == "lru") {
      EXPECT_GT(r->engine.reclaimed_sessions, 0);
      EXPECT_GT(r->backend.swapped_in_blocks, 0);  // the tight pool reloads from the host
    }
  }
}

TEST(AgentSim, UnknownPolicyIsRefused) {
  auto r = RunAgentSim(SmallPrograms(), {{0.0, 0}}, Options("mru"));
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(r.status().message().find("mru"), std::string::npos);
}

// A run that fails with a turn in flight: the engine is stopped before the agents its
// events write to are gone (ASan, in CI, reported a heap-use-after-free here before).
TEST(AgentSim, AnErrorWithATurnInFlightIsReturnedCleanly) {
  replay::AgentProgram good;
  good.id = "good";
  good.steps = {Step(3000, 50, "bash", 2.5), Step(1000, 20, "", 0)};
  replay::AgentProgram bad;  // served ids outside any vocabulary: the engine refuses it
  bad.id = "bad";
  bad.steps = {Step(4, 2, "", 0)};
  bad.steps[0].appended_ids = {1, 2, 3, 1 << 30};
  bad.steps[0].output_ids = {1, 2};
  // Both arrive at 0: the good turn is submitted first and is still queued when the bad
  // one is refused.
  auto r = RunAgentSim({good, bad}, {{0.0, 0}, {0.0, 1}}, Options("ttl"));
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), StatusCode::kInvalidArgument) << r.status().ToString();
  EXPECT_NE(r.status().message().find("vocabulary"), std::string::npos) << r.status().message();
}

// CI-sized: 8 deepseek traces, 10 turns each, 16 agents, under a pool for a few of them.
TEST(AgentSim, DeepseekTracesLruBeatsNone) {
  KVKEEP_REQUIRE_SHARED_DATA();
  const std::string dir = testing::SharedDataDir() + "/traces/mini-swe-agent-v2-deepseek";
  auto files = DefaultEnv()->ListDir(dir);
  ASSERT_TRUE(files.ok()) << files.status().ToString();
  std::sort(files->begin(), files->end());
  files->resize(8);
  std::vector<replay::Session> sessions;
  for (const std::string& f : *files) {
    ASSERT_TRUE(replay::ImportMiniSweAgent(JoinPath(dir, f), {}, &sessions).ok()) << f;
  }
  replay::WorkloadOptions w;
  w.max_turns = 10;
  auto programs = replay::ProgramsFromTrace(sessions, w);
  ASSERT_TRUE(programs.ok());
  auto arrivals = replay::MakeArrivals(programs->size(), 16, 1.0, 7);
  ASSERT_TRUE(arrivals.ok());
  SimSummary lru, none;
  for (const char* policy : {"lru", "none"}) {
    SimOptions o = Options(policy);
    o.device_blocks = 2000;  // 32k tokens: a few agents at a time
    o.host_blocks = 1000;
    auto r = RunAgentSim(*programs, *arrivals, o);
    ASSERT_TRUE(r.ok()) << r.status().ToString();
    (std::string(policy) == "lru" ? lru : none) = Summarize(*r);
  }
  std::printf("lru: mean JCT %.1f s, hit %.3f, recomputed %lld; none: %.1f s, %lld\n",
              lru.mean_jct_s, lru.hit_ratio, static_cast<long long>(lru.recomputed_tokens),
              none.mean_jct_s, static_cast<long long>(none.recomputed_tokens));
  EXPECT_EQ(lru.context_tokens, none.context_tokens);
  EXPECT_GT(lru.hit_ratio, 0.3);
  EXPECT_LT(lru.recomputed_tokens, none.recomputed_tokens);
  EXPECT_LT(lru.mean_jct_s, none.mean_jct_s);
}

}  // namespace
}  // namespace kvkeep::sim
