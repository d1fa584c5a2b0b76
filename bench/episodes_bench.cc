// Episode retrieval throughput on one core's worth of work:
//   embedding: segments/s for the hashed and bert embedders on LoCoMo-sized 4-turn
//     windows (~60 words); anchor in the same run: a plain pass that lower-cases the
//     same bytes (the floor any embedder pays to read its input);
//   FAISS: add (per vector) and top-10 search latency at 1k, 10k and 100k vectors of
//     dim 384, flat below VectorIndex's HNSW threshold (10k) and HNSW above it; anchor:
//     a brute-force inner-product scan over the same vectors;
//   clustering: one full ClusterEpisodes (E = 4, 5 restarts, 25 iterations) over n hashed
//     window vectors (dim 4096), what the daemon pays at each full re-clustering; anchor:
//     embedding the same n windows with hashed (BM_EmbedHashedN).
// bert needs the model scripts/setup installs (skipped with a message when absent).
#include <benchmark/benchmark.h>

#include <random>

#include "engine/bert_encoder.h"
#include "engine/embedder_factory.h"
#include "index/embedder.h"
#include "index/episodes.h"
#include "index/hashed_embedder.h"
#include "index/vector_index.h"

namespace kvkeep {
namespace {

std::vector<std::string> Windows(int n) {
  static const char* kWords[] = {"camping",  "kids",  "painted", "sunrise", "support",    "group",
                                 "adoption", "lake",  "pottery", "guitar",  "friends",    "mom",
                                 "school",   "beach", "book",    "career",  "counseling", "art"};
  std::mt19937_64 rng(5);
  std::vector<std::string> out;
  for (int i = 0; i < n; ++i) {
    std::string text;
    for (int turn = 0; turn < 4; ++turn) {
      text += turn % 2 ? "Melanie:" : "Caroline:";
      for (int w = 0; w < 15; ++w) text += std::string(" ") + kWords[rng() % 18];
      text += ".\n";
    }
    out.push_back(text);
  }
  return out;
}

void BM_LowerCaseAnchor(benchmark::State& state) {
  const auto texts = Windows(64);
  for (auto _ : state) {
    size_t sum = 0;
    for (const auto& t : texts) {
      for (char c : t) sum += static_cast<size_t>(std::tolower(static_cast<unsigned char>(c)));
    }
    benchmark::DoNotOptimize(sum);
  }
  state.SetItemsProcessed(state.iterations() * 64);
}
BENCHMARK(BM_LowerCaseAnchor);

void BM_EmbedHashed(benchmark::State& state) {
  const auto texts = Windows(64);
  index::HashedEmbedder e;
  e.Observe(texts);
  for (auto _ : state) benchmark::DoNotOptimize(e.Embed(texts));
  state.SetItemsProcessed(state.iterations() * 64);
}
BENCHMARK(BM_EmbedHashed);

void BM_EmbedBert(benchmark::State& state) {
  auto enc = BertEncoder::Load(DefaultEnv(), DefaultSentenceModelDir(DefaultEnv()));
  if (!enc.ok()) {
    state.SkipWithError(
        ("no sentence model (run scripts/setup): " + enc.status().ToString()).c_str());
    return;
  }
  const auto texts = Windows(8);
  for (auto _ : state) benchmark::DoNotOptimize((*enc)->Embed(texts));
  state.SetItemsProcessed(state.iterations() * 8);
}
BENCHMARK(BM_EmbedBert)->Unit(benchmark::kMillisecond);

constexpr int32_t kDim = 384;

std::vector<float> RandomUnit(int64_t rows, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> n(0.0f, 1.0f);
  std::vector<float> v(static_cast<size_t>(rows) * kDim);
  for (float& x : v) x = n(rng);
  index::NormalizeRows(v.data(), rows, kDim);
  return v;
}

std::vector<int64_t> Ids(int64_t n) {
  std::vector<int64_t> ids(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) ids[i] = i;
  return ids;
}

void BM_FaissAdd(benchmark::State& state) {
  const int64_t n = state.range(0);
  const auto data = RandomUnit(n, 1);
  const auto ids = Ids(n);
  for (auto _ : state) {
    auto index = index::VectorIndex::Create(kDim);
    benchmark::DoNotOptimize((*index)->Add(ids, data));
    state.counters["hnsw"] = (*index)->is_hnsw() ? 1 : 0;
  }
  state.SetItemsProcessed(state.iterations() * n);
}
BENCHMARK(BM_FaissAdd)
    ->Arg(1000)
    ->Arg(10000)
    ->Arg(20000)  // the first size past the HNSW threshold that builds in minutes when loaded
    ->Arg(100000)
    ->Unit(benchmark::kMillisecond)
    ->Iterations(1);

void BM_FaissSearch(benchmark::State& state) {
  const int64_t n = state.range(0);
  auto index = index::VectorIndex::Create(kDim);
  (void)(*index)->Add(Ids(n), RandomUnit(n, 1));
  const auto queries = RandomUnit(64, 2);
  int q = 0;
  for (auto _ : state) {
    std::vector<float> query(queries.begin() + (q % 64) * kDim,
                             queries.begin() + (q % 64 + 1) * kDim);
    benchmark::DoNotOptimize((*index)->Search(query, 10));
    ++q;
  }
  state.counters["hnsw"] = (*index)->is_hnsw() ? 1 : 0;
}
BENCHMARK(BM_FaissSearch)->Arg(1000)->Arg(10000)->Arg(100000)->Unit(benchmark::kMicrosecond);

void BM_BruteScanAnchor(benchmark::State& state) {
  const int64_t n = state.range(0);
  const auto data = RandomUnit(n, 1);
  const auto queries = RandomUnit(64, 2);
  int q = 0;
  for (auto _ : state) {
    const float* query = queries.data() + (q % 64) * kDim;
    float best = -2.0f;
    for (int64_t i = 0; i < n; ++i) best = std::max(best, index::Dot(query, &data[i * kDim], kDim));
    benchmark::DoNotOptimize(best);
    ++q;
  }
}
BENCHMARK(BM_BruteScanAnchor)->Arg(1000)->Arg(10000)->Arg(100000)->Unit(benchmark::kMicrosecond);

void BM_EmbedHashedN(benchmark::State& state) {
  const auto texts = Windows(static_cast<int>(state.range(0)));
  for (auto _ : state) {
    index::HashedEmbedder e;
    e.Observe(texts);
    benchmark::DoNotOptimize(e.Embed(texts));
  }
}
BENCHMARK(BM_EmbedHashedN)->Arg(100)->Arg(400)->Arg(1600)->Unit(benchmark::kMillisecond);

void BM_ClusterEpisodes(benchmark::State& state) {
  const auto n = static_cast<int32_t>(state.range(0));
  const auto texts = Windows(n);
  index::HashedEmbedder e;
  e.Observe(texts);
  const auto vectors = e.Embed(texts);
  for (auto _ : state) {
    benchmark::DoNotOptimize(index::ClusterEpisodes(*vectors, n, e.dim(), {}));
  }
}
BENCHMARK(BM_ClusterEpisodes)->Arg(100)->Arg(400)->Arg(1600)->Unit(benchmark::kMillisecond);

}  // namespace
}  // namespace kvkeep

BENCHMARK_MAIN();
