// Episode retrieval throughput on one core's worth of work:
//   embedding: segments/s for the hashed and bert embedders on LoCoMo-sized 4-turn
//     windows (~60 words); anchor in the same run: a plain pass that lower-cases the
//     same bytes (the floor any embedder pays to read its input);
//   FAISS: add and top-10 search latency at 1k, 10k and 100k vectors of dim 384, flat and
//     HNSW (each index built once, searched with a fixed set of 64 queries; HNSW recall@1
//     against flat); anchor: a brute-force inner-product scan over the same vectors;
//   clustering: one full ClusterEpisodes (E = 4, 5 restarts, 25 iterations) over n hashed
//     window vectors (dim 4096), what the daemon pays at each full re-clustering; anchor:
//     embedding the same n windows with hashed (BM_EmbedHashedN).
// bert needs the model scripts/setup installs (skipped with a message when absent).
#include <benchmark/benchmark.h>

#include <chrono>
#include <cstdlib>
#include <limits>
#include <map>
#include <memory>
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

// Flat (threshold never reached) or HNSW from the first add (threshold 0) with the given
// efConstruction; M and efSearch are VectorIndex's defaults (32, 64).
index::VectorIndexOptions IndexOptions(int ef_construction) {
  index::VectorIndexOptions o;
  o.hnsw_threshold = ef_construction == 0 ? std::numeric_limits<int64_t>::max() : 0;
  if (ef_construction > 0) o.hnsw_ef_construction = ef_construction;
  return o;
}

// Each (n, efConstruction) index is built once and kept for the search benchmarks: an HNSW
// graph over 100k vectors takes minutes here, and a benchmark function runs several times.
index::VectorIndex* Built(int64_t n, int ef_construction, double* build_s = nullptr) {
  static std::map<std::pair<int64_t, int>, std::pair<std::unique_ptr<index::VectorIndex>, double>>
      cache;
  auto& slot = cache[{n, ef_construction}];
  if (slot.first == nullptr) {
    auto index = index::VectorIndex::Create(kDim, IndexOptions(ef_construction));
    const auto data = RandomUnit(n, 1);
    const auto start = std::chrono::steady_clock::now();
    if (!index.ok() || !(*index)->Add(Ids(n), data).ok()) std::abort();
    slot.second = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    slot.first = std::move(index).value();
  }
  if (build_s != nullptr) *build_s = slot.second;
  return slot.first.get();
}

// Add: args (n, efConstruction; 0 = flat). HNSW's is the whole graph build (the one-time
// switch past hnsw_threshold); run once, since the index is kept for the searches.
void BM_FaissAdd(benchmark::State& state) {
  const int64_t n = state.range(0);
  double build_s = 0;
  for (auto _ : state) {
    index::VectorIndex* index = Built(n, static_cast<int>(state.range(1)), &build_s);
    state.SetIterationTime(build_s);
    state.counters["hnsw"] = index->is_hnsw() ? 1 : 0;
  }
  state.counters["vectors_per_s"] = n / std::max(build_s, 1e-9);
}
// 100k HNSW uses efConstruction 16: at the product's 64 it runs past 10 CPU minutes here
// (192 vectors/s at 20k). Search below runs at the product's efSearch 64 on each graph.
BENCHMARK(BM_FaissAdd)
    ->Args({1000, 0})
    ->Args({10000, 0})
    ->Args({100000, 0})
    ->Args({1000, 64})
    ->Args({10000, 64})
    ->Args({100000, 16})
    ->UseManualTime()
    ->Unit(benchmark::kMillisecond)
    ->Iterations(1);

// Top-10 search over a fixed set of 64 queries, on the indexes built above.
void BM_FaissSearch(benchmark::State& state) {
  const int64_t n = state.range(0);
  index::VectorIndex* index = Built(n, static_cast<int>(state.range(1)));
  const auto queries = RandomUnit(64, 2);
  int q = 0;
  for (auto _ : state) {
    std::vector<float> query(queries.begin() + (q % 64) * kDim,
                             queries.begin() + (q % 64 + 1) * kDim);
    benchmark::DoNotOptimize(index->Search(query, 10));
    ++q;
  }
  state.counters["hnsw"] = index->is_hnsw() ? 1 : 0;
}
BENCHMARK(BM_FaissSearch)
    ->Args({1000, 0})
    ->Args({10000, 0})
    ->Args({100000, 0})
    ->Args({1000, 64})
    ->Args({10000, 64})
    ->Args({100000, 16})
    ->Unit(benchmark::kMicrosecond)
    ->Iterations(128);

// HNSW recall@1 against the exact flat index on the same 64 queries (search speed means
// little without it).
void BM_HnswRecallAt1(benchmark::State& state) {
  const int64_t n = state.range(0);
  index::VectorIndex* flat = Built(n, 0);
  index::VectorIndex* hnsw = Built(n, static_cast<int>(state.range(1)));
  const auto queries = RandomUnit(64, 2);
  int hits = 0;
  for (auto _ : state) {
    hits = 0;
    for (int q = 0; q < 64; ++q) {
      std::vector<float> query(queries.begin() + q * kDim, queries.begin() + (q + 1) * kDim);
      auto a = flat->Search(query, 1);
      auto b = hnsw->Search(query, 1);
      hits += a.ok() && b.ok() && !a->empty() && !b->empty() && (*a)[0].id == (*b)[0].id;
    }
  }
  state.counters["recall_at_1"] = hits / 64.0;
}
BENCHMARK(BM_HnswRecallAt1)
    ->Args({10000, 64})
    ->Args({100000, 16})
    ->Unit(benchmark::kMillisecond)
    ->Iterations(1);

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
