// Remote-tier reload against recompute (issue 16's benchmark), a driver rather than a
// Google Benchmark suite: it starts its own redis-server, measures its anchor with
// `redis-benchmark` in the same run, and prints a table plus one JSON object.
//
//   reload(n):    RemoteBlockStore::GetPrefix of the n/16 blocks of an n-token history (MGET
//                 batches, checksums and parent links checked: what the engine's remote hit
//                 does) plus Backend::WriteBlock of each into the backend's KV pool (on
//                 --device cuda a host-to-device copy into device blocks).
//   recompute(n): the backend's prefill of the same n tokens in the engine's 256-token
//                 chunks (what a miss costs). Measured up to --recompute-max tokens; longer
//                 histories use the fit a*n + b*n^2 of the measured points (marked "fit").
//   anchor:       redis-benchmark GET and SET of values of the block's size, one connection,
//                 pipeline 32 (the remote tier's batch): GB/s = requests/s * value bytes.
//   break-even:   the shortest history (whole blocks) whose recompute costs at least its
//                 reload, between measured points (a one-block probe of each included),
//                 and the first longer one where recompute is cheaper again, if any.
//
// Usage: remote_tier_bench [--model tiny|small|llama3-8b-shape|default|PATH]
//                          [--device cpu|cuda] [--lengths 4096,16384,32768]
//                          [--recompute-max N] [--repeats 3] [--recompute-repeats 1]
//                          [--json FILE]
// A preset name makes that synthetic model in a temp directory (llama3-8b-shape writes
// 16 GB: on the GPU machine pass the directory bench/gpu/agents.sh or run.sh made).
// redis-server and redis-benchmark are found on PATH (bench/gpu/prebuild.sh carries them).
// Run with OMP_WAIT_POLICY=passive (set here when unset; docs/engine.md says why).
#include <fcntl.h>
#include <hiredis/hiredis.h>
#include <spdlog/spdlog.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <memory>
#include <random>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <nlohmann/json.hpp>

#include "base/file.h"
#include "cache/disk_tier.h"
#include "cache/prefix_hash.h"
#include "cache/remote_tier.h"
#include "daemon/backend_factory.h"
#include "engine/backend.h"
#include "engine/default_model.h"
#include "engine/model_config.h"
#include "engine/model_weights.h"
#include "engine/synthetic_model.h"

namespace kvkeep {
namespace {

constexpr int32_t kBlockSize = 16;
constexpr int32_t kChunkTokens = 256;     // EngineOptions::prefill_chunk_tokens default
constexpr int32_t kFetchBlocks = 256;     // GetPrefix per call (bounds the client's memory)
constexpr int32_t kPutBatchBlocks = 128;  // Put, then Flush (bounds the write queue)

using SteadyClock = std::chrono::steady_clock;
double Since(SteadyClock::time_point t0) {
  return std::chrono::duration<double>(SteadyClock::now() - t0).count();
}

[[noreturn]] void Die(const std::string& what) {
  spdlog::error("remote_tier_bench: {}", what);
  std::exit(1);
}

struct Args {
  std::string model = "tiny";
  std::string device = "cpu";
  std::vector<int32_t> lengths = {4096, 16384, 32768};
  int32_t recompute_max = 32768;
  int repeats = 3;            // reloads per length (the median is reported)
  int recompute_repeats = 1;  // prefills per length: minutes each on the default model
  std::string json_path;
};

Args ParseArgs(int argc, char** argv) {
  Args a;
  for (int i = 1; i < argc; ++i) {
    const std::string flag = argv[i];
    if (i + 1 >= argc) Die("missing value for " + flag);
    const std::string v = argv[++i];
    if (flag == "--model") {
      a.model = v;
    } else if (flag == "--device") {
      a.device = v;
    } else if (flag == "--lengths") {
      a.lengths.clear();
      std::stringstream ss(v);
      for (std::string item; std::getline(ss, item, ',');) a.lengths.push_back(std::stoi(item));
    } else if (flag == "--recompute-max") {
      a.recompute_max = std::stoi(v);
    } else if (flag == "--repeats") {
      a.repeats = std::max(1, std::stoi(v));
    } else if (flag == "--recompute-repeats") {
      a.recompute_repeats = std::max(1, std::stoi(v));
    } else if (flag == "--json") {
      a.json_path = v;
    } else {
      Die("unknown flag " + flag);
    }
  }
  return a;
}

// A redis-server on a unix socket in a temp directory, no persistence; killed on exit.
class Redis {
 public:
  Redis() {
    dir_ = std::filesystem::temp_directory_path() /
           ("kvkeep-remote-bench-" + std::to_string(::getpid()));
    std::filesystem::create_directories(dir_);
    socket_ = (dir_ / "redis.sock").string();
    std::vector<std::string> args = {"redis-server",
                                     "--port",
                                     "0",
                                     "--unixsocket",
                                     socket_,
                                     "--save",
                                     "",
                                     "--appendonly",
                                     "no",
                                     "--dir",
                                     dir_.string(),
                                     "--loglevel",
                                     "warning",
                                     "--daemonize",
                                     "no"};
    pid_ = fork();
    if (pid_ == 0) {
      const int devnull = ::open("/dev/null", O_WRONLY);
      if (devnull >= 0) ::dup2(devnull, 1);
      std::vector<char*> argv;
      for (std::string& s : args) argv.push_back(s.data());
      argv.push_back(nullptr);
      execvp("redis-server", argv.data());
      _exit(127);
    }
    for (int i = 0; i < 500 && !Connected(); ++i) {
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    if (!Connected()) Die("redis-server did not start (is it installed? scripts/setup)");
  }
  ~Redis() {
    if (pid_ > 0) {
      ::kill(pid_, SIGKILL);
      int status = 0;
      waitpid(pid_, &status, 0);
    }
    std::error_code ec;
    std::filesystem::remove_all(dir_, ec);
  }
  const std::string& socket() const { return socket_; }
  void Command(const char* cmd) {
    redisContext* c = redisConnectUnix(socket_.c_str());
    if (c != nullptr && c->err == 0) freeReplyObject(redisCommand(c, cmd));
    if (c != nullptr) redisFree(c);
  }

 private:
  bool Connected() {
    redisContext* c = redisConnectUnix(socket_.c_str());
    const bool ok = c != nullptr && c->err == 0;
    if (c != nullptr) redisFree(c);
    return ok;
  }
  std::filesystem::path dir_;
  std::string socket_;
  pid_t pid_ = -1;
};

// redis-benchmark's requests/s for GET and SET of value_bytes, one client, pipeline 32.
struct Anchor {
  double set_rps = 0, get_rps = 0;
};
Anchor RunRedisBenchmark(const std::string& socket, size_t value_bytes, int requests) {
  const std::string cmd = "redis-benchmark -s " + socket + " -t set,get -d " +
                          std::to_string(value_bytes) + " -n " + std::to_string(requests) +
                          " -c 1 -P 32 --csv 2>/dev/null";
  Anchor a;
  FILE* p = popen(cmd.c_str(), "r");
  if (p == nullptr) Die("cannot run redis-benchmark");
  char line[512];
  while (std::fgets(line, sizeof line, p) != nullptr) {
    // "SET","12345.67",...  (the header line starts with "test")
    std::string s(line);
    const auto field = [&](int k) {
      size_t pos = 0;
      for (int i = 0; i < k; ++i) pos = s.find(',', pos) + 1;
      const size_t end = s.find(',', pos);
      std::string f = s.substr(pos, end - pos);
      f.erase(std::remove(f.begin(), f.end(), '"'), f.end());
      return f;
    };
    const std::string test = field(0);
    if (test == "SET") a.set_rps = std::stod(field(1));
    if (test == "GET") a.get_rps = std::stod(field(1));
  }
  if (pclose(p) != 0 || a.get_rps <= 0 || a.set_rps <= 0) Die("redis-benchmark failed");
  return a;
}

std::vector<int32_t> Tokens(int32_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::vector<int32_t> t(n);
  for (int32_t& x : t) x = static_cast<int32_t>(rng() % 256);
  return t;
}

// Seconds to prefill n tokens in kChunkTokens chunks into blocks [0, n/16).
double Recompute(Backend* backend, int32_t n) {
  const std::vector<int32_t> tokens = Tokens(n, 42);
  const int32_t blocks = n / kBlockSize;
  std::vector<float> logits;
  const auto t0 = SteadyClock::now();
  for (int32_t start = 0; start < n; start += kChunkTokens) {
    const int32_t end = std::min(n, start + kChunkTokens);
    ForwardBatch b;
    b.max_blocks_per_seq = blocks;
    b.q_start = {0, end - start};
    for (int32_t p = start; p < end; ++p) {
      b.token_ids.push_back(tokens[p]);
      b.positions.push_back(p);
      b.slot_mapping.push_back(p);  // block p/16, offset p%16
    }
    b.kv_len = {end};
    b.logit_rows = {end - start - 1};
    for (int32_t i = 0; i < blocks; ++i) b.block_tables.push_back(i);
    if (Status st = backend->Forward(b, &logits); !st.ok()) Die(st.ToString());
  }
  return Since(t0);
}

// The blocks of an n-token history: headers with the real hash chain, in order.
std::vector<DiskBlockHeader> History(int32_t n, HashScope scope) {
  const std::vector<int32_t> tokens = Tokens(n, 7);
  std::vector<DiskBlockHeader> headers(n / kBlockSize);
  BlockHash parent = kRootParentHash;
  for (size_t i = 0; i < headers.size(); ++i) {
    DiskBlockHeader& h = headers[i];
    h.tokens.assign(tokens.begin() + i * kBlockSize, tokens.begin() + (i + 1) * kBlockSize);
    h.parent_hash = parent;
    h.scope = scope;
    h.hash = HashBlock(parent, h.tokens, scope);
    parent = h.hash;
  }
  return headers;
}

// One reload, split: fetch_s in GetPrefix (MGET round trips, decode, checksum, parent
// check), write_s in Backend::WriteBlock.
struct ReloadTime {
  double total_s = 0, fetch_s = 0, write_s = 0;
};

// Fetches the history and writes every block into the backend's pool.
ReloadTime Reload(RemoteBlockStore* remote, Backend* backend, int32_t pool_blocks,
                  const std::vector<DiskBlockHeader>& headers, HashScope scope) {
  std::vector<BlockHash> hashes;
  for (const auto& h : headers) hashes.push_back(h.hash);
  ReloadTime t;
  const auto t0 = SteadyClock::now();
  size_t got = 0;
  BlockHash parent = kRootParentHash;
  for (size_t at = 0; at < hashes.size(); at += kFetchBlocks) {
    const size_t end = std::min(hashes.size(), at + kFetchBlocks);
    std::vector<BlockHash> part(hashes.begin() + at, hashes.begin() + end);
    const auto f0 = SteadyClock::now();
    std::vector<RemoteBlock> blocks = remote->GetPrefix(part, scope, parent);
    t.fetch_s += Since(f0);
    const auto w0 = SteadyClock::now();
    for (const RemoteBlock& b : blocks) {
      const int32_t slot = static_cast<int32_t>(got++ % pool_blocks);
      if (Status st = backend->WriteBlock(slot, b.bytes.data()); !st.ok()) Die(st.ToString());
    }
    t.write_s += Since(w0);
    if (blocks.size() != part.size()) break;
    parent = part.back();
  }
  t.total_s = Since(t0);
  if (got != hashes.size())
    Die("remote tier returned " + std::to_string(got) + " of " + std::to_string(hashes.size()) +
        " blocks");
  return t;
}

// Seconds for the same MGETs (batch keys each, one connection) with nothing decoded or
// copied out of hiredis's replies: what Redis and the client library alone cost.
double RawMget(const std::string& socket, const std::vector<DiskBlockHeader>& headers,
               HashScope scope, size_t batch) {
  redisContext* c = redisConnectUnix(socket.c_str());
  if (c == nullptr || c->err != 0) Die("raw MGET: cannot connect");
  const auto t0 = SteadyClock::now();
  for (size_t at = 0; at < headers.size(); at += batch) {
    const size_t n = std::min(batch, headers.size() - at);
    std::vector<std::string> keys;
    std::vector<const char*> argv{"MGET"};
    std::vector<size_t> lens{4};
    keys.reserve(n);
    for (size_t i = 0; i < n; ++i) {
      keys.push_back(RemoteBlockStore::KeyOf(headers[at + i].hash, scope));
      argv.push_back(keys.back().data());
      lens.push_back(keys.back().size());
    }
    auto* r = static_cast<redisReply*>(
        redisCommandArgv(c, static_cast<int>(argv.size()), argv.data(), lens.data()));
    if (r == nullptr || r->type != REDIS_REPLY_ARRAY || r->elements != n) Die("raw MGET failed");
    freeReplyObject(r);
  }
  const double s = Since(t0);
  redisFree(c);
  return s;
}

double Median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

// Least squares y = c0*f0(x) + c1*f1(x) over the points.
std::pair<double, double> Fit2(const std::vector<double>& f0, const std::vector<double>& f1,
                               const std::vector<double>& y) {
  double a = 0, b = 0, c = 0, d = 0, e = 0;
  for (size_t i = 0; i < y.size(); ++i) {
    a += f0[i] * f0[i];
    b += f0[i] * f1[i];
    c += f1[i] * f1[i];
    d += f0[i] * y[i];
    e += f1[i] * y[i];
  }
  const double det = a * c - b * b;
  if (std::abs(det) < 1e-300) return {y.empty() ? 0 : d / a, 0};
  return {(d * c - b * e) / det, (a * e - b * d) / det};
}

int Main(int argc, char** argv) {
  setenv("OMP_WAIT_POLICY", "passive", 0);
  const Args args = ParseArgs(argc, argv);
  Env* env = DefaultEnv();

  // The model.
  std::string model_path = args.model;
  std::filesystem::path synthetic_dir;
  const bool preset =
      args.model == "tiny" || args.model == "small" || args.model == "llama3-8b-shape";
  if (preset) {
    synthetic_dir = std::filesystem::temp_directory_path() /
                    ("kvkeep-remote-bench-model-" + std::to_string(::getpid()));
    if (Status st = MakeSyntheticModel(args.model, 1, synthetic_dir.string()); !st.ok()) {
      Die(st.ToString());
    }
    model_path = synthetic_dir.string();
  } else if (args.model == "default") {
    model_path = DefaultModelPath(env);
    if (!env->FileExists(model_path)) Die("the default model is not installed (scripts/setup)");
  }
  auto config = LoadModelConfig(env, model_path);
  if (!config.ok()) Die(config.status().ToString());
  auto weights = ModelWeights::Load(env, model_path, *config);
  if (!weights.ok()) Die(weights.status().ToString());
  std::vector<int32_t> recompute_lengths;
  for (int32_t n : args.lengths) {
    if (n <= args.recompute_max) recompute_lengths.push_back(n);
  }
  // Smaller points for the fit when the longest histories are not measured.
  const bool need_fit = recompute_lengths.size() < args.lengths.size();
  for (int32_t n = args.recompute_max; need_fit && recompute_lengths.size() < 3 && n >= 256;
       n /= 2) {
    if (std::find(recompute_lengths.begin(), recompute_lengths.end(), n) ==
        recompute_lengths.end()) {
      recompute_lengths.push_back(n);
    }
  }
  recompute_lengths.push_back(kBlockSize);  // one block: the break-even's short end
  std::sort(recompute_lengths.begin(), recompute_lengths.end());
  const int32_t pool_blocks = recompute_lengths.back() / kBlockSize;
  BackendOptions bo;
  bo.num_kv_blocks = pool_blocks;
  bo.block_size = kBlockSize;
  auto backend_or = CreateBackendForDevice(args.device, **weights, bo);
  if (!backend_or.ok()) Die(backend_or.status().ToString());
  std::unique_ptr<Backend> backend = std::move(backend_or).value();
  const size_t block_bytes = backend->block_bytes();
  DiskBlockStore codec(env, "/nonexistent", kBlockSize, block_bytes);
  const size_t value_bytes = codec.file_bytes();
  std::fprintf(stderr, "model %s on %s: %zu KV bytes per 16-token block (%zu per value)\n",
               model_path.c_str(), backend->name().c_str(), block_bytes, value_bytes);

  Redis redis;
  // The anchor: about 256 MiB each way, at least 64 requests.
  const int requests = std::max<int>(64, static_cast<int>((size_t{256} << 20) / value_bytes));
  const Anchor anchor = RunRedisBenchmark(redis.socket(), value_bytes, requests);
  redis.Command("FLUSHALL");
  const double get_gbps = anchor.get_rps * double(value_bytes) / 1e9;
  const double set_gbps = anchor.set_rps * double(value_bytes) / 1e9;
  std::fprintf(stderr, "anchor: redis-benchmark GET %.3f GB/s, SET %.3f GB/s (%d requests)\n",
               get_gbps, set_gbps, requests);

  // Recompute. One untimed block first: the first forward pays one-off start-up costs
  // (kernel loading, library handles) that would land on the one-block point.
  Recompute(backend.get(), kBlockSize);
  std::vector<double> rc_n, rc_s;
  for (int32_t n : recompute_lengths) {
    std::vector<double> runs;
    for (int r = 0; r < args.recompute_repeats; ++r) runs.push_back(Recompute(backend.get(), n));
    rc_n.push_back(n);
    rc_s.push_back(Median(runs));
    std::fprintf(stderr, "recompute %6d tokens: %.3f s\n", n, rc_s.back());
  }
  std::vector<double> n2;
  for (double n : rc_n) n2.push_back(n * n);
  const auto [rc_a, rc_b] = Fit2(rc_n, n2, rc_s);

  // Reload.
  RemoteTierOptions ro;
  ro.address.unix_path = redis.socket();
  ro.timeout_us = 10'000'000;  // a bench: a slow machine must not turn into misses
  ro.max_queued_blocks = kPutBatchBlocks + 1;
  RemoteBlockStore remote(ro, &codec);
  if (Status st = remote.Ping(); !st.ok()) Die(st.ToString());
  std::vector<uint8_t> payload(block_bytes);
  std::mt19937_64 rng(3);
  for (auto& x : payload) x = static_cast<uint8_t>(rng());
  nlohmann::json rows = nlohmann::json::array();
  std::vector<double> rl_n, rl_s, ones;
  std::vector<int32_t> reload_lengths = args.lengths;
  reload_lengths.insert(reload_lengths.begin(), kBlockSize);
  for (int32_t n : reload_lengths) {
    const HashScope scope{HashModelId(model_path), static_cast<uint64_t>(n)};
    const std::vector<DiskBlockHeader> headers = History(n, scope);
    for (size_t i = 0; i < headers.size(); ++i) {
      remote.Put(headers[i], payload.data());
      if ((i + 1) % kPutBatchBlocks == 0) remote.Flush();
    }
    remote.Flush();
    std::vector<double> runs, fetches, writes, raws;
    for (int r = 0; r < args.repeats; ++r) {
      const ReloadTime t = Reload(&remote, backend.get(), pool_blocks, headers, scope);
      runs.push_back(t.total_s);
      fetches.push_back(t.fetch_s);
      writes.push_back(t.write_s);
      raws.push_back(RawMget(redis.socket(), headers, scope, size_t(ro.max_batch_blocks)));
    }
    const double reload_s = Median(runs);
    rl_n.push_back(n);
    rl_s.push_back(reload_s);
    ones.push_back(1);
    redis.Command("FLUSHALL");
    if (n == kBlockSize) continue;  // the probe, not a row
    const auto measured = std::find(rc_n.begin(), rc_n.end(), double(n));
    const bool fit = measured == rc_n.end();
    const double recompute_s =
        fit ? rc_a * n + rc_b * double(n) * n : rc_s[measured - rc_n.begin()];
    const double reload_gbps = double(value_bytes) * headers.size() / reload_s / 1e9;
    rows.push_back({{"tokens", n},
                    {"blocks", headers.size()},
                    {"bytes", value_bytes * headers.size()},
                    {"reload_s", reload_s},
                    {"reload_GBps", reload_gbps},
                    {"reload_vs_redis_get", reload_gbps / get_gbps},
                    {"reload_fetch_s", Median(fetches)},
                    {"reload_write_s", Median(writes)},
                    {"raw_mget_s", Median(raws)},
                    {"recompute_s", recompute_s},
                    {"recompute_from_fit", fit},
                    {"recompute_over_reload", recompute_s / reload_s}});
  }
  const auto [rl_c, rl_r] = Fit2(ones, rl_n, rl_s);
  // Break-even: the shortest history, in whole blocks, whose recompute costs at least its
  // reload. Both are interpolated linearly between measured points (the one-block probes
  // included); recompute past the longest measured point follows the fit.
  const auto interp = [](const std::vector<double>& xs, const std::vector<double>& ys, double x) {
    if (x <= xs.front()) return ys.front() * x / xs.front();
    for (size_t i = 1; i < xs.size(); ++i) {
      if (x <= xs[i])
        return ys[i - 1] + (ys[i] - ys[i - 1]) * (x - xs[i - 1]) / (xs[i] - xs[i - 1]);
    }
    return ys.back() +
           (ys.back() - ys[ys.size() - 2]) / (xs.back() - xs[xs.size() - 2]) * (x - xs.back());
  };
  // Reload can win over a bounded range only: on a GPU a short recompute is bound by launch
  // overhead and a long one by FLOPs, while a reload grows with bytes. So report where
  // reload stops being cheaper too (-1: it stays cheaper up to the longest history).
  double break_even = -1;
  double break_even_end = -1;
  for (int32_t n = kBlockSize; n <= rl_n.back(); n += kBlockSize) {
    const double recompute =
        n <= rc_n.back() ? interp(rc_n, rc_s, n) : rc_a * n + rc_b * double(n) * n;
    const bool reload_cheaper = recompute >= interp(rl_n, rl_s, n);
    if (break_even < 0 && reload_cheaper) break_even = n;
    if (break_even > 0 && !reload_cheaper) {
      break_even_end = n;
      break;
    }
  }
  const RemoteTierStats st = remote.stats();
  // The machine is shared: the load at the end says how busy it was while this ran.
  std::string loadavg;
  if (auto l = env->ReadFile("/proc/loadavg"); l.ok()) loadavg = l->substr(0, l->find('\n'));
  nlohmann::json out = {{"loadavg_at_end", loadavg},
                        {"model", preset ? args.model + " (synthetic)" : model_path},
                        {"device", backend->name()},
                        {"kv_block_bytes", block_bytes},
                        {"value_bytes", value_bytes},
                        {"anchor",
                         {{"tool", "redis-benchmark -c 1 -P 32"},
                          {"requests", requests},
                          {"get_rps", anchor.get_rps},
                          {"set_rps", anchor.set_rps},
                          {"get_GBps", get_gbps},
                          {"set_GBps", set_gbps}}},
                        {"recompute_measured", {{"tokens", rc_n}, {"seconds", rc_s}}},
                        {"recompute_fit_s", {{"a_per_token", rc_a}, {"b_per_token2", rc_b}}},
                        {"reload_measured", {{"tokens", rl_n}, {"seconds", rl_s}}},
                        {"reload_fit_s", {{"c", rl_c}, {"r_per_token", rl_r}}},
                        {"break_even_tokens", break_even},
                        {"reload_cheaper_below_tokens", break_even_end},
                        {"remote_stats",
                         {{"hits", st.hits},
                          {"misses", st.misses},
                          {"corrupt", st.corrupt},
                          {"errors", st.errors},
                          {"writes_dropped", st.writes_dropped}}},
                        {"rows", rows}};
  std::printf(
      "| tokens | blocks | reload s | reload GB/s | / redis GET | recompute s | recompute/reload "
      "|\n");
  std::printf("|---|---|---|---|---|---|---|\n");
  for (const auto& r : rows) {
    std::printf("| %d | %d | %.3f | %.3f | %.2fx | %.3f%s | %.2fx |\n", r["tokens"].get<int>(),
                r["blocks"].get<int>(), r["reload_s"].get<double>(), r["reload_GBps"].get<double>(),
                r["reload_vs_redis_get"].get<double>(), r["recompute_s"].get<double>(),
                r["recompute_from_fit"].get<bool>() ? " (fit)" : "",
                r["recompute_over_reload"].get<double>());
  }
  std::printf(
      "\nwhere a reload's time goes (median): GetPrefix (MGET, decode, checksum) | "
      "WriteBlock | the same MGETs raw (hiredis, nothing decoded)\n");
  for (const auto& r : rows) {
    std::printf("  %6d tokens: %.4f s | %.4f s | %.4f s\n", r["tokens"].get<int>(),
                r["reload_fetch_s"].get<double>(), r["reload_write_s"].get<double>(),
                r["raw_mget_s"].get<double>());
  }
  std::printf("one block (16 tokens): reload %.6f s, recompute %.6f s\n", rl_s.front(),
              rc_s.front());
  if (break_even > 0 && break_even_end > 0) {
    std::printf("break-even history: reload is cheaper from %lld to %lld tokens only\n",
                static_cast<long long>(break_even), static_cast<long long>(break_even_end));
  } else if (break_even > 0) {
    std::printf("break-even history: %lld tokens (reload is cheaper from there on)\n",
                static_cast<long long>(break_even));
  } else {
    std::printf("break-even history: none up to %d tokens (recompute stays cheaper)\n",
                static_cast<int>(rl_n.back()));
  }
  std::printf("%s\n", out.dump().c_str());
  if (!args.json_path.empty()) std::ofstream(args.json_path) << out.dump(2) << "\n";
  if (!synthetic_dir.empty()) {
    std::error_code ec;
    std::filesystem::remove_all(synthetic_dir, ec);
  }
  return st.errors == 0 && st.corrupt == 0 ? 0 : 1;
}

}  // namespace
}  // namespace kvkeep

int main(int argc, char** argv) { return kvkeep::Main(argc, argv); }
