// Episode turns in the engine (issue 13, serving): a cache built by the engine from
// BlockPool blocks and decoded through the scheduler gives the tokens of the reference
// (EpisodeCompressor + EpisodeDecoder on a bare backend); with a budget covering the
// history it gives full KV's; demoted to the host or disk tier and promoted back it gives
// the tokens of one that never left the device; a fresh engine over the same disk tier
// (a restart) rebuilds it and gives the same tokens; a build that cannot get its
// blocks falls back to full KV without failing the turn; and a turn preempted under
// memory pressure finishes from full KV with full KV's tokens.
#include <gtest/gtest.h>

#include <algorithm>
#include <memory>
#include <random>
#include <utility>

#include "engine/engine_impl.h"
#include "engine/episode_cache.h"
#include "tests/engine/engine_fixture.h"
#include "tests/engine/forwarding_backend.h"

namespace kvkeep::enginetest {
namespace {

constexpr int32_t kBs = 16;
constexpr int32_t kMaxTokens = 12;

struct Turn {
  std::vector<int32_t> history, query, message;
  int32_t budget = 64, block = 96;
  std::vector<int32_t> layer_budgets;  // M_l; empty: budget in every layer
  int32_t episode = 1;
  uint64_t version = 1;
  std::vector<int32_t> prompt() const {
    std::vector<int32_t> p = history;
    p.insert(p.end(), message.begin(), message.end());
    return p;
  }
  // What routes this turn to its episode's cache.
  EpisodeServeRequest serve_request() const {
    return EpisodeServeRequest{.episode = episode,
                               .version = version,
                               .history_tokens = static_cast<int64_t>(history.size()),
                               .query = query,
                               .budget_tokens = budget,
                               .block_tokens = block,
                               .layer_budget_tokens = layer_budgets};
  }
};

class EpisodeServeTest : public TinyModelTest {
 protected:
  std::unique_ptr<Engine> NewEngine(int32_t device_blocks, EngineOptions o = {}) {
    o.model_id = "episode-serve-test";
    auto e = Engine::Create(o, MakeBackend(*model_->weights, device_blocks, kBs),
                            model_->tokenizer.get(), &clock_);
    EXPECT_TRUE(e.ok()) << e.status().ToString();
    return e.ok() ? std::move(e).value() : nullptr;
  }
  Turn MakeTurn(int n_history = 300) {
    Turn t;
    t.history = RandomTokens(rng_, n_history);
    t.query = RandomTokens(rng_, 20);
    t.message = RandomTokens(rng_, 10);
    return t;
  }
  // Runs one request to completion (episode or full KV) on engine.
  Outcome Run(Engine* engine, RequestId id, SessionId session, const Turn& t, bool episode) {
    Outcome out;
    GenerateRequest r = RequestInto(&out, id, t.prompt(), kMaxTokens, session);
    if (episode) r.episode = t.serve_request();
    EXPECT_TRUE(engine->Submit(std::move(r)).ok());
    EXPECT_TRUE(engine->RunUntilIdle().ok());
    EXPECT_TRUE(static_cast<EngineImpl*>(engine)->TEST_CheckPool().ok());
    EXPECT_EQ(out.reason, FinishReason::kLength);
    return out;
  }
  // The reference: EpisodeCompressor + EpisodeDecoder on a bare backend of its own.
  // step_tokens: the engine's prefill chunk, which its builds' steps follow.
  std::vector<int32_t> Reference(const Turn& t, int32_t step_tokens = 0) {
    CompressOptions o;
    o.budget_tokens = t.budget;
    o.block_tokens = t.block;
    o.step_tokens = step_tokens;
    o.layer_budget_tokens = t.layer_budgets;
    const int32_t needed = CompressBlocksNeeded(o, static_cast<int32_t>(t.query.size()), kBs);
    const int32_t on_top = static_cast<int32_t>(t.message.size()) + kMaxTokens;
    const int32_t room = needed + on_top / kBs + 1;  // the message and the reply on top
    auto backend = MakeBackend(*model_->weights, room, kBs);
    EpisodeCompressor compressor(backend.get());
    auto cache = compressor.Build(t.history, t.query, o, Iota(room));
    EXPECT_TRUE(cache.ok()) << cache.status().ToString();
    if (!cache.ok()) return {};
    EpisodeDecoder decoder(backend.get(), *cache);
    auto out = decoder.Generate(t.message, kMaxTokens, {});
    EXPECT_TRUE(out.ok()) << out.status().ToString();
    return out.ok() ? *out : std::vector<int32_t>{};
  }
  FakeClock clock_;
};

TEST_F(EpisodeServeTest, EngineCacheDecodesLikeTheBareCompressorAndDecoder) {
  Turn t = MakeTurn();
  const std::vector<int32_t> want = Reference(t);
  ASSERT_EQ(want.size(), static_cast<size_t>(kMaxTokens));
  auto engine = NewEngine(64);
  Outcome got = Run(engine.get(), 1, 7, t, /*episode=*/true);
  EXPECT_EQ(got.tokens, want);
  EXPECT_TRUE(got.usage.from_episode_cache);
  EXPECT_EQ(got.usage.cached_tokens, t.budget);  // the cache's entries
  EXPECT_EQ(got.usage.recomputed_tokens, static_cast<int64_t>(t.message.size()));
  // The cache's 4 blocks plus the message and reply on top, against full KV's 21.
  EXPECT_EQ(got.usage.kv_blocks, 6);
  Outcome full = Run(NewEngine(64).get(), 1, 7, t, /*episode=*/false);
  EXPECT_EQ(full.usage.kv_blocks, 21);
  EXPECT_FALSE(full.usage.from_episode_cache);
  // The comparison can fail: compressed KV decodes differently from full KV here.
  EXPECT_NE(got.tokens, full.tokens);

  // The next turn of the same episode and history reuses the cache, unchanged by the last.
  Outcome again = Run(engine.get(), 2, 7, t, true);
  EXPECT_EQ(again.tokens, want);
  EngineStats s = engine->GetStats();
  EXPECT_EQ(s.episode_builds, 1);
  EXPECT_EQ(s.episode_turns, 2);
  EXPECT_EQ(s.episode_caches, 1);
  // A re-cluster (a new version) rebuilds; so does another P_e.
  t.version = 2;
  EXPECT_EQ(Run(engine.get(), 3, 7, t, true).tokens, want);
  EXPECT_EQ(engine->GetStats().episode_builds, 2);
  t.query = RandomTokens(rng_, 20);
  EXPECT_EQ(Run(engine.get(), 4, 7, t, true).tokens, Reference(t));
  EXPECT_EQ(engine->GetStats().episode_builds, 3);
  // History past the cache goes on top; past B tokens of it, the cache is rebuilt.
  Turn longer = t;
  longer.history.insert(longer.history.end(), t.message.begin(), t.message.end());
  Run(engine.get(), 5, 7, longer, true);
  EXPECT_EQ(engine->GetStats().episode_builds, 3);
  const std::vector<int32_t> extra = RandomTokens(rng_, t.block);
  longer.history.insert(longer.history.end(), extra.begin(), extra.end());
  EXPECT_EQ(Run(engine.get(), 6, 7, longer, true).tokens, Reference(longer));
  EXPECT_EQ(engine->GetStats().episode_builds, 4);
  // A closed session forgets its caches.
  engine->Hint({.kind = SessionHint::Kind::kClose, .session = 7});
  ASSERT_TRUE(engine->RunUntilIdle().ok());
  EXPECT_EQ(engine->GetStats().episode_caches, 0);
}

// Per-layer budgets (kvkeepd --episode-layer-alpha): the engine's cache keeps M_l entries
// in layer l, decodes like the reference built with the same budgets, and is not reused
// for a turn that asks for other budgets.
TEST_F(EpisodeServeTest, PerLayerBudgetsDecodeLikeTheBareCompressorAndDecoder) {
  Turn t = MakeTurn();
  for (int32_t l = 0; l < model_->config.num_layers; ++l) {
    t.layer_budgets.push_back(l % 2 == 0 ? 64 : 24);
  }
  const std::vector<int32_t> want = Reference(t);
  ASSERT_EQ(want.size(), static_cast<size_t>(kMaxTokens));
  Turn uniform = t;
  uniform.layer_budgets.clear();
  const std::vector<int32_t> want_uniform = Reference(uniform);
  // The comparison can fail: the trimmed layers change what the model decodes.
  EXPECT_NE(want, want_uniform);

  auto engine = NewEngine(64);
  Outcome got = Run(engine.get(), 1, 7, t, /*episode=*/true);
  EXPECT_EQ(got.tokens, want);
  EXPECT_TRUE(got.usage.from_episode_cache);
  EXPECT_EQ(Run(engine.get(), 2, 7, t, true).tokens, want);  // reused
  EXPECT_EQ(engine->GetStats().episode_builds, 1);
  EXPECT_EQ(Run(engine.get(), 3, 7, uniform, true).tokens, want_uniform);  // rebuilt
  EXPECT_EQ(engine->GetStats().episode_builds, 2);

  // Budgets for another layer count are refused by the build: full KV serves the turn.
  Turn bad = t;
  bad.layer_budgets.pop_back();
  bad.version = 3;
  Outcome fallback = Run(engine.get(), 4, 7, bad, true);
  EXPECT_FALSE(fallback.usage.from_episode_cache);
  EXPECT_EQ(fallback.tokens, Run(NewEngine(64).get(), 1, 7, t, false).tokens);
}

TEST_F(EpisodeServeTest, BudgetCoveringTheHistoryEqualsFullKv) {
  Turn t = MakeTurn(150);  // not a whole number of blocks: the cache's last block is partial
  t.budget = 200;
  Outcome full = Run(NewEngine(64).get(), 1, 7, t, false);
  auto engine = NewEngine(64);
  Outcome got = Run(engine.get(), 1, 7, t, true);
  EXPECT_TRUE(got.usage.from_episode_cache);
  EXPECT_EQ(got.tokens, full.tokens);
  EXPECT_EQ(Run(engine.get(), 2, 7, t, true).tokens, full.tokens);  // its tail was copied
}

// Fillers without a session push the cache's blocks off the device; the next turn promotes
// them (host: swapped in; disk: read up, then swapped in) instead of rebuilding. (Fillers of
// retained sessions would not: each reclaims the one before, whose blocks then go first.)
TEST_F(EpisodeServeTest, DemotedToHostOrDiskAndPromotedBackDecodesTheSame) {
  for (bool disk : {false, true}) {
    SCOPED_TRACE(disk ? "host and disk" : "host");
    testing::TempDir dir;
    EngineOptions o;
    o.num_host_blocks = disk ? 6 : 128;  // host alone: room for every filler
    if (disk) {
      o.disk_bytes = int64_t{1} << 24;
      o.disk_dir = dir.path() + "/kv";
    }
    Turn t = MakeTurn();
    const std::vector<int32_t> want = Run(NewEngine(64).get(), 1, 7, t, true).tokens;
    auto engine = NewEngine(24, o);
    EXPECT_EQ(Run(engine.get(), 1, 7, t, true).tokens, want);
    for (int i = 0; i < 4; ++i) {
      Turn filler = MakeTurn(300);
      Run(engine.get(), 10 + i, /*session=*/0, filler, false);
    }
    Outcome back = Run(engine.get(), 2, 7, t, true);
    EXPECT_EQ(back.tokens, want);
    EXPECT_TRUE(back.usage.from_episode_cache);
    EngineStats s = engine->GetStats();
    EXPECT_EQ(s.episode_builds, 1) << "rebuilt instead of promoted";
    EXPECT_EQ(back.usage.cached_device_tokens, 0);
    if (disk) {
      EXPECT_GT(back.usage.cached_disk_tokens, 0);
    } else {
      EXPECT_GT(back.usage.cached_host_tokens, 0);
    }
  }
}

TEST_F(EpisodeServeTest, RestartOverTheSameDiskTierRebuildsTheSameCache) {
  testing::TempDir dir;
  EngineOptions o;
  o.num_host_blocks = 8;
  o.disk_bytes = int64_t{1} << 24;
  o.disk_dir = dir.path() + "/kv";
  Turn t = MakeTurn();
  std::vector<int32_t> before;
  {
    auto engine = NewEngine(24, o);
    before = Run(engine.get(), 1, 7, t, true).tokens;
    for (int i = 0; i < 3; ++i) Run(engine.get(), 10 + i, 100 + i, MakeTurn(300), false);
    EXPECT_GT(engine->GetStats().disk_blocks_used, 0);
  }
  clock_.AdvanceMicros(1);  // generations never repeat, also with a clock that stood still
  auto engine = NewEngine(24, o);
  Outcome after = Run(engine.get(), 1, 7, t, true);
  EXPECT_TRUE(after.usage.from_episode_cache);
  EXPECT_EQ(after.tokens, before);
  EXPECT_EQ(engine->GetStats().episode_builds, 1);
}

TEST_F(EpisodeServeTest, BuildThatCannotGetItsBlocksFallsBackToFullKv) {
  Turn t = MakeTurn();
  t.block = 512;  // M + B + |P_e| = 596 entries: 38 blocks; full KV needs 21
  Outcome full = Run(NewEngine(64).get(), 1, 7, t, false);
  auto engine = NewEngine(24);
  Outcome got = Run(engine.get(), 1, 7, t, true);
  EXPECT_FALSE(got.usage.from_episode_cache);
  EXPECT_EQ(got.tokens, full.tokens);
  EXPECT_EQ(engine->GetStats().episode_fallbacks, 1);
  // A malformed episode turn (history past the prompt) is served from full KV too.
  Turn bad = MakeTurn();
  Outcome out;
  GenerateRequest r = RequestInto(&out, 2, bad.prompt(), kMaxTokens, 8);
  r.episode = EpisodeServeRequest{.history_tokens = 1000, .query = bad.query, .budget_tokens = 8};
  ASSERT_TRUE(engine->Submit(std::move(r)).ok());
  ASSERT_TRUE(engine->RunUntilIdle().ok());
  EXPECT_EQ(out.reason, FinishReason::kLength);
  EXPECT_FALSE(out.usage.from_episode_cache);
  EXPECT_EQ(engine->GetStats().episode_fallbacks, 2);
  // So is one whose P_e is outside the vocabulary.
  Outcome oov;
  r = RequestInto(&oov, 3, bad.prompt(), kMaxTokens, 8);
  r.episode = EpisodeServeRequest{
      .history_tokens = 300, .query = {model_->config.vocab_size}, .budget_tokens = 8};
  ASSERT_TRUE(engine->Submit(std::move(r)).ok());
  ASSERT_TRUE(engine->RunUntilIdle().ok());
  EXPECT_EQ(oov.reason, FinishReason::kLength);
  EXPECT_FALSE(oov.usage.from_episode_cache);
  EXPECT_EQ(engine->GetStats().episode_fallbacks, 3);
}

// A cache build is engine work in steps of at most a prefill chunk: another session keeps
// decoding, one token a step, while the cache builds (23 steps here: 3 blocks of 96 in 6
// runs of 16 plus a scoring each, and 12 tokens in one run plus a scoring), and neither
// output changes.
TEST_F(EpisodeServeTest, CacheBuildRunsInStepsBesideOtherSessionsDecodes) {
  Turn t = MakeTurn(300);
  const std::vector<int32_t> other_prompt = RandomTokens(rng_, 20);
  EngineOptions o;
  o.prefill_chunk_tokens = 16;
  const std::vector<int32_t> want = Reference(t, o.prefill_chunk_tokens);
  Outcome alone;
  {
    auto engine = NewEngine(64, o);
    ASSERT_TRUE(engine->Submit(RequestInto(&alone, 1, other_prompt, 60, 100)).ok());
    ASSERT_TRUE(engine->RunUntilIdle().ok());
  }
  auto engine = NewEngine(64, o);
  auto* impl = static_cast<EngineImpl*>(engine.get());
  Outcome other, got;
  ASSERT_TRUE(engine->Submit(RequestInto(&other, 1, other_prompt, 60, 100)).ok());
  while (other.tokens.size() < 2) ASSERT_TRUE(impl->Step().ok());
  GenerateRequest r = RequestInto(&got, 2, t.prompt(), kMaxTokens, 7);
  r.episode = t.serve_request();
  ASSERT_TRUE(engine->Submit(std::move(r)).ok());
  int steps = 0;
  while (engine->GetStats().episode_builds == 0) {
    ASSERT_TRUE(impl->Step().ok());
    ASSERT_LT(++steps, 100);
  }
  EXPECT_EQ(steps, 23);
  EXPECT_EQ(other.tokens.size(), 2u + 23u);  // one token in every step of the build
  EXPECT_TRUE(got.tokens.empty());
  ASSERT_TRUE(engine->RunUntilIdle().ok());
  ASSERT_TRUE(impl->TEST_CheckPool().ok());
  EXPECT_TRUE(got.usage.from_episode_cache);
  EXPECT_EQ(got.tokens, want);
  EXPECT_EQ(other.tokens, alone.tokens);
}

// Counts the tokens every forward runs (Forward and ForwardScored), for the step budget
// test; everything else goes to the wrapped backend.
class CountingBackend : public ForwardingBackend {
 public:
  using ForwardingBackend::ForwardingBackend;
  int64_t TakeTokens() { return std::exchange(tokens_, 0); }
  Status Forward(const ForwardBatch& batch, std::vector<float>* logits) override {
    tokens_ += batch.num_tokens();
    return ForwardingBackend::Forward(batch, logits);
  }
  Status ForwardScored(const ForwardBatch& batch, int32_t num_scored, std::vector<float>* logits,
                       std::vector<float>* scores) override {
    tokens_ += batch.num_tokens();
    return ForwardingBackend::ForwardScored(batch, num_scored, logits, scores);
  }

 private:
  int64_t tokens_ = 0;
};

// A cache build's steps count against max_batch_tokens: while the cache builds (prefill
// runs of up to a 16-token chunk, P_e's 20 tokens scored in runs), another session
// prefills a long prompt in chunks of 16 and a third decodes. Every engine step forwards at
// most max_batch_tokens = 24 tokens in all (without the charge a step runs the other's
// chunk and the build's run: 1 + 16 + 16 = 33), the decoder gets a token every step, and
// the turn is then served from its cache.
TEST_F(EpisodeServeTest, BuildStepsCountAgainstMaxBatchTokens) {
  Turn t = MakeTurn(300);
  EngineOptions o;
  o.model_id = "episode-serve-test";
  o.prefill_chunk_tokens = 16;
  o.max_batch_tokens = 24;
  auto counting = std::make_unique<CountingBackend>(MakeBackend(*model_->weights, 96, kBs));
  CountingBackend* backend = counting.get();
  auto created = Engine::Create(o, std::move(counting), model_->tokenizer.get(), &clock_);
  ASSERT_TRUE(created.ok()) << created.status().ToString();
  std::unique_ptr<Engine> engine = std::move(created).value();
  auto* impl = static_cast<EngineImpl*>(engine.get());
  Outcome decoder, prefiller, got;
  ASSERT_TRUE(engine->Submit(RequestInto(&decoder, 1, RandomTokens(rng_, 20), 200, 100)).ok());
  while (decoder.tokens.size() < 2) ASSERT_TRUE(impl->Step().ok());
  GenerateRequest r = RequestInto(&got, 2, t.prompt(), kMaxTokens, 7);
  r.episode = t.serve_request();
  ASSERT_TRUE(engine->Submit(std::move(r)).ok());
  ASSERT_TRUE(engine->Submit(RequestInto(&prefiller, 3, RandomTokens(rng_, 400), 4, 200)).ok());
  backend->TakeTokens();
  int steps = 0, largest = 0;
  while (engine->GetStats().episode_builds == 0) {
    ASSERT_TRUE(impl->Step().ok());
    const int64_t tokens = backend->TakeTokens();
    largest = std::max<int>(largest, static_cast<int>(tokens));
    EXPECT_LE(tokens, o.max_batch_tokens) << "step " << steps;
    ASSERT_LT(++steps, 400);
  }
  EXPECT_EQ(largest, o.max_batch_tokens);        // the budget is used, not just respected
  EXPECT_EQ(decoder.tokens.size(), 2u + steps);  // decodes come first: one every step
  ASSERT_TRUE(engine->RunUntilIdle().ok());
  ASSERT_TRUE(impl->TEST_CheckPool().ok());
  EXPECT_TRUE(got.usage.from_episode_cache);
  EXPECT_EQ(got.tokens.size(), size_t{kMaxTokens});
}

// Memory pressure: another session's decode outgrows a pool that held both when the
// episode turn was admitted to prefill its message, so the turn is preempted before its first
// token. Its cache's entries cannot be recomputed from tokens; it falls back to its full-KV request
// and gives exactly full KV's tokens (served_by full_kv). The next turn, not preempted, is
// served from the episode cache again.
TEST_F(EpisodeServeTest, PreemptedTurnFallsBackToFullKvAndGivesItsTokens) {
  // The numbers below are steps of this scenario: it must preempt, not fail admission.
  Turn t = MakeTurn(300);
  t.message = RandomTokens(rng_, 200);  // 25 prefill steps of 8 on top of the cache
  const Outcome full = Run(NewEngine(64).get(), 1, 7, t, /*episode=*/false);
  EngineOptions o;
  o.prefill_chunk_tokens = 8;
  // 36 blocks. The build (12 blocks) runs in 42 steps of at most 8 tokens while the other
  // session decodes from 16 blocks to 19; then the cache's 4 blocks and the 13 the message
  // needs fit exactly, and the other's growth during the message's 25 prefill steps
  // takes one of them. Full KV of the turn (512 tokens, 32 blocks) fits once the other
  // has finished.
  auto engine = NewEngine(36, o);
  auto* impl = static_cast<EngineImpl*>(engine.get());
  Outcome other;
  ASSERT_TRUE(
      engine->Submit(RequestInto(&other, 1, RandomTokens(rng_, 240), /*max_tokens=*/80, 100)).ok());
  while (other.tokens.size() < 10) ASSERT_TRUE(impl->Step().ok());
  Outcome got;
  GenerateRequest r = RequestInto(&got, 2, t.prompt(), kMaxTokens, 7);
  r.episode = t.serve_request();
  ASSERT_TRUE(engine->Submit(std::move(r)).ok());
  ASSERT_TRUE(engine->RunUntilIdle().ok());
  ASSERT_TRUE(impl->TEST_CheckPool().ok());
  EXPECT_EQ(other.reason, FinishReason::kLength);
  ASSERT_EQ(got.reason, FinishReason::kLength);
  EngineStats s = engine->GetStats();
  EXPECT_EQ(s.episode_builds, 1);  // the cache was built and the turn admitted on it
  EXPECT_EQ(s.episode_turns, 1);
  EXPECT_GE(s.preemptions, 1);
  EXPECT_EQ(s.episode_fallbacks, 1);
  EXPECT_FALSE(got.usage.from_episode_cache);
  // Preempted after part of the message ran on the cache, not refused at admission.
  EXPECT_GT(got.usage.recomputed_tokens, static_cast<int64_t>(t.prompt().size()));
  EXPECT_EQ(got.tokens, full.tokens);
  // The comparison can fail: the episode cache decodes differently from full KV here.
  const std::vector<int32_t> episodic = Reference(t, o.prefill_chunk_tokens);
  EXPECT_NE(episodic, full.tokens);

  // Without pressure the next turn is served from the episode cache (rebuilt if the full-KV
  // recompute pushed it out).
  Outcome again = Run(engine.get(), 3, 7, t, /*episode=*/true);
  EXPECT_TRUE(again.usage.from_episode_cache);
  EXPECT_EQ(again.tokens, episodic);
  EXPECT_EQ(engine->GetStats().episode_fallbacks, 1);
}

}  // namespace
}  // namespace kvkeep::enginetest
