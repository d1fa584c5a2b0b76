// CPU paged attention, anchored against the same attention over contiguous K/V measured
// in the same run.
//
//   BM_PagedDecode<T>/B/L    decode, batch B, context L: 32 query heads, 8 KV heads, d=128,
//                            blocks of 16 handed out in random order.
//     kv_GBps        K and V bytes read per second by the paged kernel
//     contig_GBps    the same for the contiguous anchor (timed right after, same data)
//     paged_vs_contig  paged wall time / contiguous wall time (1.0 = paging costs nothing)
//     paged_vs_contig_cpu  the same in process CPU time (robust on a shared machine;
//                    use it with OMP_NUM_THREADS=1 there)
//   BM_PagedPrefill<T>/C/P   one sequence: a chunk of C new tokens over P cached tokens.
//     tokens_per_s, GFLOPs (4 * head_dim flops per query head and visible key)
//
// The anchor (ContiguousDecode) is a plain two-pass softmax over [kv_head][L][head_dim]
// rows, parallel over (sequence, KV head), each K/V row widened once for its GQA group,
// built with the same ISA clones as the kernel.
#include <benchmark/benchmark.h>
#include <omp.h>
#include <time.h>

#include <algorithm>
#include <bit>
#include <chrono>
#include <cmath>
#include <numeric>
#include <random>
#include <type_traits>
#include <vector>

#include "kernels/cpu/attention.h"

namespace kvkeep::cpu {
namespace {

constexpr int32_t kQHeads = 32;
constexpr int32_t kKvHeads = 8;
constexpr int32_t kHeadDim = 128;
constexpr int32_t kBlockSize = 16;

inline float ToFloat(float x) { return x; }
inline float ToFloat(bf16 x) { return std::bit_cast<float>(uint32_t{x.bits} << 16); }
template <typename T>
T FromFloat(float x) {
  if constexpr (std::is_same_v<T, bf16>) {
    return FloatToBf16(x);
  } else {
    return x;
  }
}

constexpr int32_t kGroup = kQHeads / kKvHeads;

// One sequence and KV head: the scores of the GQA group's query heads over contiguous
// keys (each key row widened once for the group), then the weighted sums of the values.
template <typename T>
__attribute__((target_clones("avx512f", "avx2", "default"))) void ContiguousGroup(
    const float* q, const T* k, const T* v, int32_t len, float scale, float* scores, float* row,
    float* out) {
  float max_score[kGroup];
  std::fill(max_score, max_score + kGroup, -INFINITY);
  for (int32_t j = 0; j < len; ++j) {
    const T* kj = k + int64_t{j} * kHeadDim;
    for (int32_t x = 0; x < kHeadDim; ++x) row[x] = ToFloat(kj[x]);
    for (int32_t g = 0; g < kGroup; ++g) {
      const float* qg = q + g * kHeadDim;
      float dot = 0.0f;
#pragma omp simd reduction(+ : dot)
      for (int32_t x = 0; x < kHeadDim; ++x) dot += qg[x] * row[x];
      scores[g * len + j] = dot * scale;
      max_score[g] = std::max(max_score[g], scores[g * len + j]);
    }
  }
  float sum[kGroup] = {};
  std::fill(out, out + kGroup * kHeadDim, 0.0f);
  for (int32_t j = 0; j < len; ++j) {
    const T* vj = v + int64_t{j} * kHeadDim;
    for (int32_t x = 0; x < kHeadDim; ++x) row[x] = ToFloat(vj[x]);
    for (int32_t g = 0; g < kGroup; ++g) {
      const float p = std::exp(scores[g * len + j] - max_score[g]);
      sum[g] += p;
      float* og = out + g * kHeadDim;
#pragma omp simd
      for (int32_t x = 0; x < kHeadDim; ++x) og[x] += p * row[x];
    }
  }
  for (int32_t g = 0; g < kGroup; ++g) {
    for (int32_t x = 0; x < kHeadDim; ++x) out[g * kHeadDim + x] /= sum[g];
  }
}

// k, v: [batch][kv_head][len][head_dim]; q, out: [batch][q_head][head_dim].
template <typename T>
void ContiguousDecode(const std::vector<T>& k, const std::vector<T>& v, int32_t batch, int32_t len,
                      const float* q, float* out) {
  const float scale = 1.0f / std::sqrt(float{kHeadDim});
#pragma omp parallel
  {
    std::vector<float> scores(int64_t{kGroup} * len);
    std::vector<float> row(kHeadDim);
#pragma omp for schedule(dynamic, 1)
    for (int32_t item = 0; item < batch * kKvHeads; ++item) {
      // item = b * kKvHeads + kv_head; its query heads are item * kGroup .. + kGroup.
      const int64_t base = int64_t{item} * len * kHeadDim;
      const int64_t q_row = int64_t{item} * kGroup * kHeadDim;
      ContiguousGroup(q + q_row, k.data() + base, v.data() + base, len, scale, scores.data(),
                      row.data(), out + q_row);
    }
  }
}

// A pool holding `batch` sequences of `len` tokens in shuffled blocks, plus the same K/V
// laid out contiguously.
template <typename T>
struct Setup {
  KvPoolShape shape;
  std::vector<T> pool;
  std::vector<T> k_contig, v_contig;
  std::vector<int32_t> q_start, kv_len, tables;
  AttentionBatch batch;
  PagedKv<T> kv;

  Setup(int32_t num_seqs, int32_t len, int32_t n_new) {
    std::mt19937_64 rng(42);
    std::uniform_real_distribution<float> u(-1.0f, 1.0f);
    const int32_t nb = (len + kBlockSize - 1) / kBlockSize;
    shape = KvPoolShape{.num_blocks = num_seqs * nb,
                        .num_layers = 1,
                        .num_kv_heads = kKvHeads,
                        .block_size = kBlockSize,
                        .head_dim = kHeadDim};
    pool.assign(shape.total_elements(), FromFloat<T>(0.0f));
    std::vector<int32_t> ids(shape.num_blocks);
    std::iota(ids.begin(), ids.end(), 0);
    std::shuffle(ids.begin(), ids.end(), rng);
    tables.assign(ids.begin(), ids.end());
    const int64_t contig = int64_t{num_seqs} * kKvHeads * len * kHeadDim;
    k_contig.resize(contig);
    v_contig.resize(contig);
    for (int32_t s = 0; s < num_seqs; ++s) {
      q_start.push_back(s * n_new);
      kv_len.push_back(len);
      for (int32_t h = 0; h < kKvHeads; ++h) {
        for (int32_t pos = 0; pos < len; ++pos) {
          const int64_t paged = int64_t{tables[s * nb + pos / kBlockSize]} * shape.block_stride() +
                                (int64_t{h} * kBlockSize + pos % kBlockSize) * kHeadDim;
          const int64_t flat = ((int64_t{s} * kKvHeads + h) * len + pos) * kHeadDim;
          for (int32_t x = 0; x < kHeadDim; ++x) {
            k_contig[flat + x] = pool[paged + x] = FromFloat<T>(u(rng));
            v_contig[flat + x] = pool[paged + shape.kv_stride() + x] = FromFloat<T>(u(rng));
          }
        }
      }
    }
    q_start.push_back(num_seqs * n_new);
    batch = AttentionBatch{.num_seqs = num_seqs,
                           .q_start = q_start.data(),
                           .kv_len = kv_len.data(),
                           .block_tables = tables.data(),
                           .max_blocks_per_seq = nb};
    kv = LayerView(pool.data(), shape, 0);
  }
};

// CPU seconds of the whole process (all threads): unlike wall time, not inflated when
// the machine is shared; inflated by OpenMP threads spinning at barriers.
double ProcessCpuSeconds() {
  timespec ts;
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
  return static_cast<double>(ts.tv_sec) + 1e-9 * static_cast<double>(ts.tv_nsec);
}

template <typename T>
void BM_PagedDecode(benchmark::State& state) {
  const int32_t num_seqs = static_cast<int32_t>(state.range(0));
  const int32_t len = static_cast<int32_t>(state.range(1));
  Setup<T> s(num_seqs, len, 1);
  std::vector<float> q(int64_t{num_seqs} * kQHeads * kHeadDim, 0.5f);
  std::vector<float> out(q.size());
  const AttentionParams params{.num_q_heads = kQHeads, .scale = 1.0f / std::sqrt(128.0f)};

  using Clock = std::chrono::steady_clock;
  const double paged_cpu_start = ProcessCpuSeconds();
  const auto paged_start = Clock::now();
  for (auto _ : state) {
    Status st = PagedDecodeAttention(params, s.batch, s.kv, q.data(), out.data());
    if (!st.ok()) state.SkipWithError(st.ToString().c_str());
    benchmark::DoNotOptimize(out.data());
  }
  const double paged_s = std::chrono::duration<double>(Clock::now() - paged_start).count();
  const double paged_cpu_s = ProcessCpuSeconds() - paged_cpu_start;
  const int64_t iters = std::max<int64_t>(state.iterations(), 3);
  const double contig_cpu_start = ProcessCpuSeconds();
  const auto contig_start = Clock::now();
  for (int64_t i = 0; i < iters; ++i) {
    ContiguousDecode(s.k_contig, s.v_contig, num_seqs, len, q.data(), out.data());
    benchmark::DoNotOptimize(out.data());
  }
  const double contig_s = std::chrono::duration<double>(Clock::now() - contig_start).count();
  const double contig_cpu_s = ProcessCpuSeconds() - contig_cpu_start;

  const double kv_bytes = 2.0 * num_seqs * len * kKvHeads * kHeadDim * sizeof(T);
  state.counters["kv_GBps"] =
      benchmark::Counter(kv_bytes / 1e9, benchmark::Counter::kIsIterationInvariantRate);
  state.counters["contig_GBps"] = kv_bytes / 1e9 / (contig_s / iters);
  state.counters["paged_vs_contig"] =
      (paged_s / static_cast<double>(state.iterations())) / (contig_s / iters);
  state.counters["paged_vs_contig_cpu"] =
      (paged_cpu_s / static_cast<double>(state.iterations())) / (contig_cpu_s / iters);
  state.counters["threads"] = omp_get_max_threads();
}

template <typename T>
void BM_PagedPrefill(benchmark::State& state) {
  const int32_t chunk = static_cast<int32_t>(state.range(0));
  const int32_t cached = static_cast<int32_t>(state.range(1));
  Setup<T> s(1, cached + chunk, chunk);
  std::vector<float> q(int64_t{chunk} * kQHeads * kHeadDim, 0.5f);
  std::vector<float> out(q.size());
  const AttentionParams params{.num_q_heads = kQHeads, .scale = 1.0f / std::sqrt(128.0f)};
  for (auto _ : state) {
    Status st = PagedAttention(params, s.batch, s.kv, q.data(), out.data());
    if (!st.ok()) state.SkipWithError(st.ToString().c_str());
    benchmark::DoNotOptimize(out.data());
  }
  // Each new token t sees cached + t + 1 keys.
  const double visible =
      static_cast<double>(chunk) * cached + static_cast<double>(chunk) * (chunk + 1) / 2.0;
  state.counters["tokens_per_s"] =
      benchmark::Counter(chunk, benchmark::Counter::kIsIterationInvariantRate);
  state.counters["GFLOPs"] = benchmark::Counter(4.0 * kHeadDim * kQHeads * visible / 1e9,
                                                benchmark::Counter::kIsIterationInvariantRate);
}

void DecodeArgs(benchmark::internal::Benchmark* b) {
  for (int64_t batch : {1, 4, 8}) {
    for (int64_t len : {512, 4096}) b->Args({batch, len});
  }
  b->ArgNames({"B", "L"})->UseRealTime()->Unit(benchmark::kMicrosecond);
}

void PrefillArgs(benchmark::internal::Benchmark* b) {
  b->Args({256, 0})->Args({256, 2048})->Args({64, 4096});
  b->ArgNames({"chunk", "cached"})->UseRealTime()->Unit(benchmark::kMillisecond);
}

BENCHMARK(BM_PagedDecode<float>)->Apply(DecodeArgs);
BENCHMARK(BM_PagedDecode<bf16>)->Apply(DecodeArgs);
BENCHMARK(BM_PagedPrefill<float>)->Apply(PrefillArgs);
BENCHMARK(BM_PagedPrefill<bf16>)->Apply(PrefillArgs);

}  // namespace
}  // namespace kvkeep::cpu

BENCHMARK_MAIN();
