// KV tier benchmarks, each with an anchor measured in the same run (counter x_anchor =
// kvkeep time / anchor time, or for bandwidths kvkeep / anchor):
//   DiskWrite / DiskRead of n blocks through DiskBlockStore (checksums, header, tmp+rename,
//     positioned I/O)  vs  `dd` of the same bytes on the same file system (page cache, no
//     fsync on either side)
//   StepBookkeeping: one decode step of 64 sequences (PrepareAppend of one token each,
//     commit, plus one new 8-block prompt matched and freed per step) on a pool of N
//     blocks with host and disk tiers, evictions demoting  vs  the same steps on a pool
//     without tiers (evictions drop, the pre-tier behaviour)
#include <benchmark/benchmark.h>

#include <chrono>
#include <cstdlib>
#include <random>
#include <string>
#include <vector>

#include "base/file.h"
#include "cache/block_pool.h"
#include "cache/disk_tier.h"

namespace kvkeep {
namespace {

using SteadyClock = std::chrono::steady_clock;

double Seconds(SteadyClock::time_point a, SteadyClock::time_point b) {
  return std::chrono::duration<double>(b - a).count();
}

constexpr size_t kBlockBytes = size_t{512} << 10;  // e.g. 16 tokens of a small model
constexpr int32_t kBlockSize = 16;

std::string BenchDir() {
  const char* tmp = std::getenv("TMPDIR");
  std::string dir = std::string(tmp ? tmp : "/tmp") + "/kvkeep-tiers-bench";
  (void)DefaultEnv()->CreateDirs(dir, 0700);
  return dir;
}

double RunDd(const std::string& args) {
  const auto t0 = SteadyClock::now();
  const int rc = std::system(("dd " + args + " status=none").c_str());
  const auto t1 = SteadyClock::now();
  return rc == 0 ? Seconds(t0, t1) : 0;
}

void BM_DiskWriteRead(benchmark::State& state) {
  const int32_t n = static_cast<int32_t>(state.range(0));
  const bool read = state.range(1) != 0;
  const std::string dir = BenchDir();
  DiskBlockStore store(DefaultEnv(), dir, kBlockSize, kBlockBytes);
  if (!store.Open().ok()) return state.SkipWithError("cannot open the bench dir");
  std::vector<uint8_t> bytes(kBlockBytes);
  std::mt19937_64 rng(1);
  for (auto& b : bytes) b = static_cast<uint8_t>(rng());
  std::vector<DiskBlockHeader> headers(n);
  for (int32_t i = 0; i < n; ++i) {
    headers[i].hash = BlockHash{0x1000 + static_cast<uint64_t>(i)};
    headers[i].tokens.assign(kBlockSize, i);
  }
  if (read) {
    for (const auto& h : headers) (void)store.Write(h, bytes.data());
  }
  double kvkeep_s = 0;
  for (auto _ : state) {
    const auto t0 = SteadyClock::now();
    for (const auto& h : headers) {
      Status st = read ? store.Read(h.hash, bytes.data()) : store.Write(h, bytes.data());
      if (!st.ok()) return state.SkipWithError(st.ToString().c_str());
    }
    kvkeep_s += Seconds(t0, SteadyClock::now());
  }
  // Anchor: dd moving the same number of bytes in block-sized records, same directory.
  const std::string file = dir + "/dd.bin";
  const std::string count = " bs=" + std::to_string(kBlockBytes) + " count=" + std::to_string(n);
  if (read) (void)RunDd("if=/dev/urandom of=" + file + count);
  double dd_s = 0;
  for (int64_t i = 0; i < state.iterations(); ++i) {
    dd_s += read ? RunDd("if=" + file + " of=/dev/null" + count)
                 : RunDd("if=/dev/zero of=" + file + count);
  }
  const double bytes_total = double(kBlockBytes) * n * state.iterations();
  state.counters["kvkeep_GBps"] = kvkeep_s > 0 ? bytes_total / kvkeep_s / 1e9 : 0;
  state.counters["dd_GBps"] = dd_s > 0 ? bytes_total / dd_s / 1e9 : 0;
  state.counters["x_anchor"] = kvkeep_s > 0 && dd_s > 0 ? dd_s / kvkeep_s : 0;  // bandwidth ratio
  for (const auto& h : headers) (void)store.Remove(h.hash);
  (void)DefaultEnv()->RemoveFile(file);
}
BENCHMARK(BM_DiskWriteRead)
    ->Args({256, 0})
    ->Args({256, 1})
    ->ArgNames({"blocks", "read"})
    ->Unit(benchmark::kMillisecond)
    ->Iterations(3);

// Runs `steps` decode steps of 64 sequences on pool; returns seconds.
double RunSteps(BlockPool& pool, int steps) {
  std::mt19937_64 rng(7);
  constexpr HashScope kScope{1, 0};
  std::vector<BlockTable> tables;
  std::vector<std::vector<int32_t>> tokens(64);
  for (int s = 0; s < 64; ++s) {
    tables.emplace_back(kBlockSize, kScope);
    tokens[s].push_back(s);
  }
  std::vector<BlockCopy> copies;
  std::vector<int32_t> prompt(8 * kBlockSize);
  const auto t0 = SteadyClock::now();
  for (int step = 0; step < steps; ++step) {
    copies.clear();
    for (int s = 0; s < 64; ++s) {
      if (!pool.PrepareAppend(&tables[s], 1, &copies).ok()) {
        pool.Free(&tables[s]);
        tokens[s].resize(1);
        continue;
      }
      tables[s].AdvanceTokens(1);
      tokens[s].push_back(static_cast<int32_t>(rng() % 1000));
      pool.CommitFullBlocks(&tables[s], tokens[s]);
    }
    // One new prompt: match, fill, commit, free (it becomes cached, then demoted later).
    for (int32_t& t : prompt) t = static_cast<int32_t>(rng() % 1000);
    BlockTable fresh = pool.MatchPrefix(prompt, kScope);
    if (pool.PrepareAppend(&fresh, static_cast<int64_t>(prompt.size()) - fresh.num_tokens(),
                           &copies)
            .ok()) {
      fresh.AdvanceTokens(static_cast<int64_t>(prompt.size()) - fresh.num_tokens());
      pool.CommitFullBlocks(&fresh, prompt);
    }
    pool.Free(&fresh);
    pool.ReleaseCopySources(copies);
    pool.FinishTransfers();  // the engine's transfer phase, bytes not moved here
  }
  return Seconds(t0, SteadyClock::now());
}

void BM_StepBookkeeping(benchmark::State& state) {
  const int32_t n = static_cast<int32_t>(state.range(0));
  double tiered_s = 0, plain_s = 0;
  for (auto _ : state) {
    state.PauseTiming();
    BlockPool tiered({.num_blocks = n,
                      .block_size = kBlockSize,
                      .num_host_blocks = n / 2,
                      .num_disk_blocks = n});
    BlockPool plain({.num_blocks = n, .block_size = kBlockSize});
    // Fill the pools with cached blocks so every step evicts (and the tiered one demotes).
    const int warm = n / 8 + 64;
    RunSteps(tiered, warm);
    RunSteps(plain, warm);
    state.ResumeTiming();
    tiered_s += RunSteps(tiered, 1000);
    state.PauseTiming();
    plain_s += RunSteps(plain, 1000);
    state.ResumeTiming();
  }
  state.counters["tiered_us_per_step"] = tiered_s / state.iterations() / 1000 * 1e6;
  state.counters["anchor_us_per_step"] = plain_s / state.iterations() / 1000 * 1e6;
  state.counters["x_anchor"] = plain_s > 0 ? tiered_s / plain_s : 0;
}
BENCHMARK(BM_StepBookkeeping)
    ->Arg(10'000)
    ->Arg(1'000'000)
    ->Unit(benchmark::kMillisecond)
    ->Iterations(1);

}  // namespace
}  // namespace kvkeep

BENCHMARK_MAIN();
