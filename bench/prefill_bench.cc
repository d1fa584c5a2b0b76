// CPU prefill and decode throughput of the CpuBackend on the `small` synthetic preset
// (written to a temp dir on first use; set KVKEEP_BENCH_MODEL=DIR to use another model).
//
//   BM_Prefill/<chunk>/<prompt>: tokens/s prefilling a prompt in chunks of <chunk> tokens
//     (block-wise prefill, as the scheduler runs it); chunk 0 = the whole prompt in one
//     forward, the contiguous anchor to compare against in the same run.
//   BM_Decode/<batch>/<context>: tokens/s decoding one token for each of <batch> sequences
//     with <context> tokens of KV each.
//
// Run with OMP_WAIT_POLICY=passive: see docs/engine.md (OpenMP spinning starves the
// OpenBLAS threads and adds ~200 ms to every step otherwise).
#include <benchmark/benchmark.h>
#include <spdlog/spdlog.h>

#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <memory>
#include <random>
#include <string>

#include "base/file.h"
#include "engine/backend.h"
#include "engine/model_config.h"
#include "engine/model_weights.h"
#include "engine/synthetic_model.h"

namespace kvkeep {
namespace {

constexpr int32_t kBlockSize = 16;

struct BenchModel {
  std::string dir;
  bool owns_dir = false;
  ModelConfig config;
  std::unique_ptr<ModelWeights> weights;
  ~BenchModel() {
    std::error_code ec;
    if (owns_dir) std::filesystem::remove_all(dir, ec);
  }
};

BenchModel* Model() {
  static std::unique_ptr<BenchModel> model = [] {
    auto m = std::make_unique<BenchModel>();
    if (const char* env = std::getenv("KVKEEP_BENCH_MODEL"); env && *env) {
      m->dir = env;
    } else {
      m->dir = (std::filesystem::temp_directory_path() /
                ("kvkeep-prefill-bench-" + std::to_string(::getpid())))
                   .string();
      m->owns_dir = true;
      if (Status st = MakeSyntheticModel("small", 1, m->dir); !st.ok()) {
        spdlog::error("make model: {}", st.ToString());
        std::abort();
      }
    }
    auto config = LoadModelConfig(DefaultEnv(), m->dir);
    if (!config.ok()) std::abort();
    m->config = *config;
    auto weights = ModelWeights::Load(DefaultEnv(), m->dir, m->config);
    if (!weights.ok()) std::abort();
    m->weights = std::move(weights).value();
    return m;
  }();
  return model.get();
}

std::unique_ptr<Backend> NewBackend(int32_t num_blocks) {
  BackendOptions o;
  o.num_kv_blocks = num_blocks;
  o.block_size = kBlockSize;
  auto b = CreateCpuBackend(*Model()->weights, o);
  if (!b.ok()) std::abort();
  return std::move(b).value();
}

// Tokens [start, end) of each sequence s, whose blocks are [s * blocks_per_seq, ...).
ForwardBatch MakeBatch(const std::vector<std::vector<int32_t>>& seqs, int32_t start, int32_t end,
                       int32_t blocks_per_seq) {
  ForwardBatch b;
  b.max_blocks_per_seq = blocks_per_seq;
  b.q_start.push_back(0);
  for (size_t s = 0; s < seqs.size(); ++s) {
    for (int32_t p = start; p < end; ++p) {
      const int32_t block = static_cast<int32_t>(s) * blocks_per_seq + p / kBlockSize;
      b.token_ids.push_back(seqs[s][p]);
      b.positions.push_back(p);
      b.slot_mapping.push_back(block * kBlockSize + p % kBlockSize);
    }
    b.q_start.push_back(static_cast<int32_t>(b.token_ids.size()));
    b.kv_len.push_back(end);
    b.logit_rows.push_back(b.q_start.back() - 1);
    for (int32_t i = 0; i < blocks_per_seq; ++i) {
      b.block_tables.push_back(static_cast<int32_t>(s) * blocks_per_seq + i);
    }
  }
  return b;
}

std::vector<int32_t> Tokens(int32_t n) {
  std::mt19937_64 rng(42);
  std::vector<int32_t> t(n);
  for (int32_t& x : t) x = static_cast<int32_t>(rng() % 256);
  return t;
}

void BM_Prefill(benchmark::State& state) {
  const int32_t prompt = static_cast<int32_t>(state.range(1));
  const int32_t chunk = state.range(0) > 0 ? static_cast<int32_t>(state.range(0)) : prompt;
  const int32_t blocks = (prompt + kBlockSize - 1) / kBlockSize;
  auto backend = NewBackend(blocks);
  std::vector<std::vector<int32_t>> seqs = {Tokens(prompt)};
  std::vector<ForwardBatch> steps;
  for (int32_t s = 0; s < prompt; s += chunk) {
    steps.push_back(MakeBatch(seqs, s, std::min(prompt, s + chunk), blocks));
  }
  std::vector<float> logits;
  for (auto _ : state) {
    for (const ForwardBatch& b : steps) {
      if (!backend->Forward(b, &logits).ok()) state.SkipWithError("forward failed");
    }
    benchmark::DoNotOptimize(logits.data());
  }
  state.SetItemsProcessed(state.iterations() * prompt);
  state.counters["tok/s"] = benchmark::Counter(static_cast<double>(prompt),
                                               benchmark::Counter::kIsIterationInvariantRate);
}
BENCHMARK(BM_Prefill)
    ->ArgNames({"chunk", "prompt"})
    ->Args({0, 1024})
    ->Args({256, 1024})
    ->Args({64, 1024})
    ->Args({16, 1024})
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();

void BM_Decode(benchmark::State& state) {
  const int32_t batch = static_cast<int32_t>(state.range(0));
  const int32_t context = static_cast<int32_t>(state.range(1));
  const int32_t blocks = context / kBlockSize + 1;
  auto backend = NewBackend(batch * blocks);
  std::vector<std::vector<int32_t>> seqs(batch, Tokens(context));
  std::vector<float> logits;
  if (!backend->Forward(MakeBatch(seqs, 0, context - 1, blocks), &logits).ok()) std::abort();
  const ForwardBatch step = MakeBatch(seqs, context - 1, context, blocks);
  for (auto _ : state) {
    if (!backend->Forward(step, &logits).ok()) state.SkipWithError("forward failed");
    benchmark::DoNotOptimize(logits.data());
  }
  state.SetItemsProcessed(state.iterations() * batch);
  state.counters["tok/s"] =
      benchmark::Counter(static_cast<double>(batch), benchmark::Counter::kIsIterationInvariantRate);
}
BENCHMARK(BM_Decode)
    ->ArgNames({"batch", "context"})
    ->Args({1, 512})
    ->Args({8, 512})
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();

}  // namespace
}  // namespace kvkeep

BENCHMARK_MAIN();
