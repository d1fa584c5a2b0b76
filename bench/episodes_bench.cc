// Episode retrieval throughput on one core's worth of work:
//   embedding: segments/s for the hashed and bert embedders on LoCoMo-sized 4-turn
//     windows (~60 words); anchor in the same run: a plain pass that lower-cases the
//     same bytes (the floor any embedder pays to read its input);
//   FAISS: add and top-10 search latency at 1k, 10k and 100k vectors of dim 384, flat,
//     IVF-Flat and HNSW (each index built once, searched with a fixed set of 64 queries;
//     recall@1 against flat, on clustered vectors with queries near stored ones and on
//     i.i.d. random ones); anchor: a brute-force inner-product scan over the same vectors;
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
#include <tuple>

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

// Text-like vectors: 2,000 topic directions, each vector a topic plus noise (sentence
// vectors of one conversation cluster by topic), unit length.
std::vector<float> Clustered(int64_t rows, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> n(0.0f, 1.0f);
  constexpr int kTopics = 2000;
  std::vector<float> topics(static_cast<size_t>(kTopics) * kDim);
  for (float& x : topics) x = n(rng);
  index::NormalizeRows(topics.data(), kTopics, kDim);
  std::vector<float> v(static_cast<size_t>(rows) * kDim);
  for (int64_t i = 0; i < rows; ++i) {
    const int64_t t = static_cast<int64_t>(rng() % kTopics);
    for (int j = 0; j < kDim; ++j) v[i * kDim + j] = topics[t * kDim + j] + 0.08f * n(rng);
  }
  index::NormalizeRows(v.data(), rows, kDim);
  return v;
}

// The data sets: 0 i.i.d. random unit vectors with i.i.d. random queries (nearly
// equidistant: the hardest case, no structure); 1 clustered vectors with queries near
// stored ones (a stored vector plus noise: a question about something said).
std::vector<float> Data(int64_t n, int data) {
  return data == 0 ? RandomUnit(n, 1) : Clustered(n, 1);
}
std::vector<float> Queries(int64_t n, int data) {
  if (data == 0) return RandomUnit(64, 2);
  const auto stored = Clustered(n, 1);
  std::mt19937_64 rng(2);
  std::normal_distribution<float> noise(0.0f, 0.04f);
  std::vector<float> q(64 * kDim);
  for (int i = 0; i < 64; ++i) {
    const int64_t row = static_cast<int64_t>(rng() % n);
    for (int j = 0; j < kDim; ++j) q[i * kDim + j] = stored[row * kDim + j] + noise(rng);
  }
  index::NormalizeRows(q.data(), 64, kDim);
  return q;
}

std::vector<int64_t> Ids(int64_t n) {
  std::vector<int64_t> ids(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) ids[i] = i;
  return ids;
}

// kind: 0 flat (threshold never reached), -1 IVF-Flat with VectorIndex's defaults
// (sqrt(n) lists, 16 probed, 64 training vectors a list), > 0 HNSW with that
// efConstruction (M and efSearch: VectorIndex's 32 and 64); approximate from the first add.
index::VectorIndexOptions IndexOptions(int kind) {
  index::VectorIndexOptions o;
  o.ann_threshold = kind == 0 ? std::numeric_limits<int64_t>::max() : 0;
  o.ann = kind < 0 ? index::AnnKind::kIvfFlat : index::AnnKind::kHnsw;
  if (kind > 0) o.hnsw_ef_construction = kind;
  return o;
}

// Each (n, kind, data) index is built once and kept for the search benchmarks: an HNSW
// graph over 100k vectors takes minutes here, and a benchmark function runs several times.
index::VectorIndex* Built(int64_t n, int kind, int data, double* build_s = nullptr) {
  static std::map<std::tuple<int64_t, int, int>,
                  std::pair<std::unique_ptr<index::VectorIndex>, double>>
      cache;
  auto& slot = cache[{n, kind, data}];
  if (slot.first == nullptr) {
    auto index = index::VectorIndex::Create(kDim, IndexOptions(kind));
    const auto vectors = Data(n, data);
    const auto start = std::chrono::steady_clock::now();
    if (!index.ok() || !(*index)->Add(Ids(n), vectors).ok()) std::abort();
    slot.second = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    slot.first = std::move(index).value();
  }
  if (build_s != nullptr) *build_s = slot.second;
  return slot.first.get();
}

// Add: args (n, kind, data). An approximate index's is the whole build (the one-time
// rebuild past ann_threshold, IVF's k-means included); run once, since the index is kept
// for the searches.
void BM_FaissAdd(benchmark::State& state) {
  const int64_t n = state.range(0);
  double build_s = 0;
  for (auto _ : state) {
    Built(n, static_cast<int>(state.range(1)), static_cast<int>(state.range(2)), &build_s);
    state.SetIterationTime(build_s);
  }
  state.counters["vectors_per_s"] = n / std::max(build_s, 1e-9);
}
// 100k HNSW uses efConstruction 16: at the product's 64 it runs past 10 CPU minutes here
// (192 vectors/s at 20k).
void FaissArgs(benchmark::internal::Benchmark* b) {
  for (auto [n, kind] : {std::pair{1000, 0},
                         {10000, 0},
                         {100000, 0},
                         {10000, -1},
                         {100000, -1},
                         {10000, 64},
                         {100000, 16}}) {
    b->Args({n, kind, 1});
  }
}
BENCHMARK(BM_FaissAdd)
    ->Apply(FaissArgs)
    ->UseManualTime()
    ->Unit(benchmark::kMillisecond)
    ->Iterations(1);

// Top-10 search over the data set's 64 queries, on the indexes built above.
void BM_FaissSearch(benchmark::State& state) {
  const int64_t n = state.range(0);
  const int data = static_cast<int>(state.range(2));
  index::VectorIndex* index = Built(n, static_cast<int>(state.range(1)), data);
  const auto queries = Queries(n, data);
  int q = 0;
  for (auto _ : state) {
    std::vector<float> query(queries.begin() + (q % 64) * kDim,
                             queries.begin() + (q % 64 + 1) * kDim);
    benchmark::DoNotOptimize(index->Search(query, 10));
    ++q;
  }
}
BENCHMARK(BM_FaissSearch)->Apply(FaissArgs)->Unit(benchmark::kMicrosecond)->Iterations(128);

// recall@1 against the exact flat index on the same 64 queries (search speed means little
// without it): args (n, kind, data).
void BM_AnnRecallAt1(benchmark::State& state) {
  const int64_t n = state.range(0);
  const int data = static_cast<int>(state.range(2));
  index::VectorIndex* flat = Built(n, 0, data);
  index::VectorIndex* ann = Built(n, static_cast<int>(state.range(1)), data);
  const auto queries = Queries(n, data);
  int hits = 0;
  for (auto _ : state) {
    hits = 0;
    for (int q = 0; q < 64; ++q) {
      std::vector<float> query(queries.begin() + q * kDim, queries.begin() + (q + 1) * kDim);
      auto a = flat->Search(query, 1);
      auto b = ann->Search(query, 1);
      hits += a.ok() && b.ok() && !a->empty() && !b->empty() && (*a)[0].id == (*b)[0].id;
    }
  }
  state.counters["recall_at_1"] = hits / 64.0;
}
BENCHMARK(BM_AnnRecallAt1)
    ->Args({10000, -1, 1})
    ->Args({100000, -1, 1})
    ->Args({10000, 64, 1})
    ->Args({100000, 16, 1})
    ->Args({10000, -1, 0})
    ->Args({100000, -1, 0})
    ->Args({10000, 64, 0})
    ->Args({100000, 16, 0})
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
