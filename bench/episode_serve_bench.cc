// Episode turns in the engine (issue 13, serving) on the CPU backend, synthetic "tiny"
// model, blocks of 16, H history tokens, M = H / 4, B = 512, |P_e| = 64, a 16-token
// message, 8 generated tokens. Each figure is a ratio against an anchor of the same run:
//   first_x_full   TTFT of the first routed turn (which builds the cache)
//                  / TTFT of the same turn from full KV with nothing cached (cold prefill)
//   next_x_full    TTFT of a routed turn that reuses the cache / the same anchor
//   stall_x_full   the longest gap between two tokens of another session decoding while
//                  the first routed turn builds / the same while the cold full-KV turn
//                  prefills (chunked, 256 tokens a step)
// Counters also give the absolute milliseconds.
#include <benchmark/benchmark.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <random>
#include <thread>

#include "base/clock.h"
#include "base/file.h"
#include "engine/engine.h"
#include "engine/model_config.h"
#include "engine/model_weights.h"
#include "engine/synthetic_model.h"
#include "engine/tokenizer.h"

namespace kvkeep {
namespace {

using Steady = std::chrono::steady_clock;

struct Model {
  std::string dir;
  ModelConfig config;
  std::unique_ptr<ModelWeights> weights;
};

Model& TinyModel() {
  static Model m = [] {
    Model out;
    out.dir = "/tmp/kvkeep-episode-serve-bench-model";
    (void)MakeSyntheticModel("tiny", 7, out.dir);
    out.config = *LoadModelConfig(DefaultEnv(), out.dir);
    out.weights = std::move(ModelWeights::Load(DefaultEnv(), out.dir, out.config)).value();
    return out;
  }();
  return m;
}

std::unique_ptr<Engine> NewEngine(int32_t blocks) {
  BackendOptions bo;
  bo.num_kv_blocks = blocks;
  bo.block_size = 16;
  EngineOptions o;
  o.model_id = "episode-serve-bench";
  return std::move(Engine::Create(o, std::move(CreateCpuBackend(*TinyModel().weights, bo)).value(),
                                  nullptr, SystemClock()))
      .value();
}

// Written on the engine thread; read after done (tokens and done are the handshake).
struct Timed {
  double ttft_ms = 0;
  bool from_cache = false;
  std::vector<Steady::time_point> token_times;
  std::atomic<int> tokens{0};
  std::atomic<bool> done{false};
};

void WaitFor(const std::atomic<bool>& flag) {
  while (!flag.load()) std::this_thread::sleep_for(std::chrono::milliseconds(1));
}
void WaitTokens(const Timed& t, int n) {
  while (t.tokens.load() < n) std::this_thread::sleep_for(std::chrono::microseconds(50));
}

GenerateRequest Request(RequestId id, SessionId session, std::vector<int32_t> prompt,
                        int32_t max_tokens, Timed* out) {
  GenerateRequest r;
  r.id = id;
  r.session = session;
  r.prompt = std::move(prompt);
  r.stop.max_tokens = max_tokens;
  r.stop.use_model_eos = false;
  r.on_event = [out](const GenerateEvent& ev) {
    if (ev.kind == GenerateEvent::Kind::kToken) {
      out->token_times.push_back(Steady::now());
      out->tokens.fetch_add(1);
    }
    if (ev.kind == GenerateEvent::Kind::kFinished) {
      out->ttft_ms = ev.usage.ttft_ms;
      out->from_cache = ev.usage.from_episode_cache;
      out->done.store(true);
    }
  };
  return r;
}

double MaxGapMs(const Timed& t) {
  double gap = 0;
  for (size_t i = 1; i < t.token_times.size(); ++i) {
    gap = std::max(
        gap,
        std::chrono::duration<double, std::milli>(t.token_times[i] - t.token_times[i - 1]).count());
  }
  return gap;
}

void BM_EpisodeTurn(benchmark::State& state) {
  const int32_t h = static_cast<int32_t>(state.range(0));
  std::mt19937_64 rng(h);
  auto random = [&](int n) {
    std::vector<int32_t> t(n);
    for (int32_t& x : t) x = static_cast<int32_t>(rng() % 256);
    return t;
  };
  const std::vector<int32_t> history = random(h), query = random(64), message = random(16),
                             other = random(64);
  std::vector<int32_t> prompt = history;
  prompt.insert(prompt.end(), message.begin(), message.end());
  EpisodeServeRequest e;
  e.episode = 0;
  e.version = 1;
  e.history_tokens = h;
  e.query = query;
  e.budget_tokens = h / 4;
  e.block_tokens = 512;
  const int32_t blocks = (h + 1024) / 16 * 2;
  double first = 0, next = 0, full = 0, stall_build = 0, stall_full = 0;
  int64_t n = 0;
  // A refused request sends no event: stop instead of waiting for one.
  auto submit = [&](Engine* engine, GenerateRequest r) {
    const Status st = engine->Submit(std::move(r));
    if (!st.ok()) {
      spdlog::error("episode_serve_bench: {}", st.ToString());
      std::abort();
    }
  };
  for (auto _ : state) {
    // Anchor and its stall: a cold full-KV turn while session 2 decodes.
    {
      auto engine = NewEngine(blocks);
      (void)engine->Start();
      Timed bg, turn;
      submit(engine.get(), Request(1, 2, other, 48, &bg));
      WaitTokens(bg, 4);
      submit(engine.get(), Request(2, 1, prompt, 8, &turn));
      WaitFor(bg.done);
      WaitFor(turn.done);
      full += turn.ttft_ms;
      stall_full += MaxGapMs(bg);
      engine->Stop();
    }
    auto engine = NewEngine(blocks);
    (void)engine->Start();
    Timed bg, turn, again;
    submit(engine.get(), Request(1, 2, other, 48, &bg));
    WaitTokens(bg, 4);
    GenerateRequest r = Request(2, 1, prompt, 8, &turn);
    r.episode = e;
    submit(engine.get(), std::move(r));
    WaitFor(bg.done);
    WaitFor(turn.done);
    r = Request(3, 1, prompt, 8, &again);
    r.episode = e;
    submit(engine.get(), std::move(r));
    WaitFor(again.done);
    engine->Stop();
    if (!turn.from_cache || !again.from_cache) return state.SkipWithError("not served from cache");
    first += turn.ttft_ms;
    next += again.ttft_ms;
    stall_build += MaxGapMs(bg);
    ++n;
  }
  if (n == 0) return;
  state.counters["full_ttft_ms"] = full / n;
  state.counters["first_ttft_ms"] = first / n;
  state.counters["next_ttft_ms"] = next / n;
  state.counters["first_x_full"] = first / full;
  state.counters["next_x_full"] = next / full;
  state.counters["stall_full_ms"] = stall_full / n;
  state.counters["stall_build_ms"] = stall_build / n;
  state.counters["stall_x_full"] = stall_build / std::max(stall_full, 1e-9);
}
// The tiny model's context is 4,096 positions: H + the message + the reply must fit.
BENCHMARK(BM_EpisodeTurn)->Arg(1024)->Arg(3072)->Iterations(2)->Unit(benchmark::kMillisecond);

}  // namespace
}  // namespace kvkeep

BENCHMARK_MAIN();
