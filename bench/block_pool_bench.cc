// BlockPool benchmarks. Each reports, next to its own time, the ratio to an anchor
// measured in the same run on the same machine (counter `x_anchor`: pool time / anchor
// time), so results compare across machines:
//   Allocate/Release n blocks   vs  std::vector pop n + push n (the bare free-list cost)
//   PrepareAppend, 1 token      vs  std::vector push_back of one int32 slot
//   MatchPrefix of 32k tokens   vs  XXH64 over the same bytes + one std::unordered_map
//                                   find per block (the irreducible hash + lookup work)
#include <benchmark/benchmark.h>

#include <chrono>
#include <numeric>
#include <random>
#include <unordered_map>
#include <vector>

#include "cache/block_pool.h"

namespace kvkeep {
namespace {

using Clock = std::chrono::steady_clock;

double Seconds(Clock::time_point a, Clock::time_point b) {
  return std::chrono::duration<double>(b - a).count();
}

void ReportAnchor(benchmark::State& state, double pool_s, double anchor_s) {
  state.counters["x_anchor"] = anchor_s > 0 ? pool_s / anchor_s : 0;
  state.counters["anchor_ns"] = anchor_s * 1e9 / static_cast<double>(state.iterations());
}

void BM_AllocateRelease(benchmark::State& state) {
  const int32_t n = static_cast<int32_t>(state.range(0));
  BlockPool pool({.num_blocks = 65536, .block_size = 16});
  const auto t0 = Clock::now();
  for (auto _ : state) {
    auto blocks = pool.Allocate(n);
    benchmark::DoNotOptimize(blocks);
    pool.Release(*blocks);
  }
  const auto t1 = Clock::now();
  std::vector<int32_t> free_list(65536);
  std::iota(free_list.begin(), free_list.end(), 0);
  std::vector<int32_t> taken;
  taken.reserve(n);
  for (int64_t it = 0; it < state.iterations(); ++it) {
    for (int32_t i = 0; i < n; ++i) {
      taken.push_back(free_list.back());
      free_list.pop_back();
    }
    benchmark::DoNotOptimize(taken.data());
    for (int32_t b : taken) free_list.push_back(b);
    taken.clear();
  }
  const auto t2 = Clock::now();
  state.SetItemsProcessed(state.iterations() * n * 2);  // block ops: one take, one give back
  ReportAnchor(state, Seconds(t0, t1), Seconds(t1, t2));
}
BENCHMARK(BM_AllocateRelease)->Arg(1)->Arg(16)->Arg(256);

void BM_PrepareAppendDecode(benchmark::State& state) {
  constexpr int32_t kBlockSize = 16, kMaxTokens = 32768;
  BlockPool pool({.num_blocks = 4096, .block_size = kBlockSize});
  BlockTable table(kBlockSize);
  std::vector<BlockCopy> copies;
  const auto t0 = Clock::now();
  for (auto _ : state) {
    if (table.num_tokens() == kMaxTokens) pool.Free(&table);
    if (!pool.PrepareAppend(&table, 1, &copies).ok()) state.SkipWithError("pool exhausted");
    table.AdvanceTokens(1);
  }
  const auto t1 = Clock::now();
  pool.Free(&table);
  std::vector<int32_t> slots;
  slots.reserve(kMaxTokens);
  for (int64_t it = 0; it < state.iterations(); ++it) {
    if (slots.size() == kMaxTokens) slots.clear();
    slots.push_back(static_cast<int32_t>(it));
    benchmark::DoNotOptimize(slots.data());
  }
  const auto t2 = Clock::now();
  state.SetItemsProcessed(state.iterations());
  ReportAnchor(state, Seconds(t0, t1), Seconds(t1, t2));
}
BENCHMARK(BM_PrepareAppendDecode);

// A 32k-token sequence, prefilled and committed; each iteration matches it fully (taking
// 2048 references) and frees the match again.
void BM_MatchPrefix32k(benchmark::State& state) {
  constexpr int32_t kBlockSize = 16, kTokens = 32768, kBlocks = kTokens / kBlockSize;
  BlockPool pool({.num_blocks = 2 * kBlocks, .block_size = kBlockSize});
  const HashScope scope{HashModelId("bench-model"), 1};
  std::vector<int32_t> tokens(kTokens);
  std::mt19937 rng(1);
  for (int32_t& t : tokens) t = static_cast<int32_t>(rng() % 150000);
  BlockTable seq(kBlockSize, scope);
  std::vector<BlockCopy> copies;
  if (!pool.PrepareAppend(&seq, kTokens, &copies).ok()) state.SkipWithError("pool too small");
  seq.AdvanceTokens(kTokens);
  pool.CommitFullBlocks(&seq, tokens);
  pool.Free(&seq);  // all cached now

  const auto t0 = Clock::now();
  for (auto _ : state) {
    BlockTable hit = pool.MatchPrefix(tokens, scope);
    if (hit.num_blocks() != kBlocks) state.SkipWithError("prefix not fully matched");
    pool.Free(&hit);
  }
  const auto t1 = Clock::now();
  std::unordered_map<uint64_t, int32_t> map;
  std::vector<uint64_t> keys(kBlocks);
  for (int32_t i = 0; i < kBlocks; ++i) {
    keys[i] = rng() * 0x9E3779B97F4A7C15ULL + i;
    map.emplace(keys[i], i);
  }
  const auto t2 = Clock::now();
  for (int64_t it = 0; it < state.iterations(); ++it) {
    uint64_t h = Xxh64(tokens.data(), tokens.size() * sizeof(int32_t), 0);
    int64_t sum = 0;
    for (uint64_t k : keys) sum += map.find(k)->second;
    benchmark::DoNotOptimize(h);
    benchmark::DoNotOptimize(sum);
  }
  const auto t3 = Clock::now();
  state.SetItemsProcessed(state.iterations() * kTokens);  // tokens matched
  ReportAnchor(state, Seconds(t0, t1), Seconds(t2, t3));
}
BENCHMARK(BM_MatchPrefix32k)->Unit(benchmark::kMicrosecond);

void BM_HashBlock(benchmark::State& state) {
  std::vector<int32_t> tokens(16);
  std::iota(tokens.begin(), tokens.end(), 1000);
  BlockHash h = kRootParentHash;
  for (auto _ : state) {
    h = HashBlock(h, tokens, 1, 2);
    benchmark::DoNotOptimize(h);
  }
  state.SetBytesProcessed(state.iterations() * (24 + 16 * 4));
}
BENCHMARK(BM_HashBlock);

}  // namespace
}  // namespace kvkeep

BENCHMARK_MAIN();
