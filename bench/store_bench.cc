// store_bench: the store's write path with and without group commit, and the cost of the
// start-up PRAGMA quick_check, on this machine's disk.
//
// Appends: T threads each append N one-message turns to their own session (what T
// connections' session.append do), synchronous=FULL. The anchor is the same store with
// max_batch_ops = 1 (one transaction and fsync per write, the old write path), in the same
// run on the same disk. Quick check: a database of M sessions x 20 messages of 1 KiB,
// closed, then timed Store::Open with and without quick_check.
//
//   store_bench [--dir DIR] [--appends N] [--sessions M]
// DIR defaults to a directory under $TMPDIR (/tmp); put it on the disk you care about.
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <string>
#include <thread>
#include <vector>

#include "daemon/store.h"

namespace {

namespace fs = std::filesystem;
using kvkeep::Store;
using kvkeep::StoredMessage;
using kvkeep::StoredSession;
using kvkeep::StoreOptions;
using Clock = std::chrono::steady_clock;

[[noreturn]] void Die(const std::string& what) {
  std::fprintf(stderr, "store_bench: %s\n", what.c_str());
  std::exit(1);
}

StoredMessage Msg(int64_t seq, size_t content_bytes) {
  StoredMessage m;
  m.seq = seq;
  m.role = "user";
  m.content.assign(content_bytes, 'a' + static_cast<char>(seq % 26));
  m.tokens.assign(content_bytes / 4, 42);
  return m;
}

double Seconds(Clock::duration d) { return std::chrono::duration<double>(d).count(); }

// Appends/s of `threads` writers, `appends` each, on a fresh database.
double AppendsPerSecond(const std::string& dir, int threads, int appends, int max_batch_ops) {
  fs::remove_all(dir);
  fs::create_directories(dir);
  StoreOptions options;
  options.max_batch_ops = max_batch_ops;
  auto store = Store::Open(dir + "/kvkeep.db", options);
  if (!store.ok()) Die(store.status().ToString());
  Store* st = store->get();
  for (int t = 0; t < threads; ++t) {
    StoredSession s;
    s.owner_uid = 1000;
    s.id = "s" + std::to_string(t);
    s.model = "tiny";
    if (!st->CreateSession(s).ok()) Die("create");
  }
  const auto start = Clock::now();
  std::vector<std::thread> workers;
  for (int t = 0; t < threads; ++t) {
    workers.emplace_back([st, t, appends] {
      for (int i = 0; i < appends; ++i) {
        kvkeep::Status s = st->AppendMessages(1000, "s" + std::to_string(t), {Msg(i, 256)}, i);
        if (!s.ok()) Die(s.ToString());
      }
    });
  }
  for (auto& w : workers) w.join();
  const double secs = Seconds(Clock::now() - start);
  const kvkeep::StoreStats stats = st->stats();
  std::printf("    batch<=%-3d threads %-2d: %8.0f appends/s  (%lld writes in %lld commits)\n",
              max_batch_ops, threads, threads * appends / secs,
              static_cast<long long>(stats.num_writes), static_cast<long long>(stats.num_commits));
  return threads * appends / secs;
}

}  // namespace

int main(int argc, char** argv) {
  std::string dir = (std::getenv("TMPDIR") ? std::getenv("TMPDIR") : "/tmp") +
                    std::string("/store_bench.") + std::to_string(getpid());
  int appends = 200;
  int sessions = 2000;
  for (int i = 1; i + 1 < argc; i += 2) {
    std::string a = argv[i];
    if (a == "--dir")
      dir = argv[i + 1];
    else if (a == "--appends")
      appends = std::atoi(argv[i + 1]);
    else if (a == "--sessions")
      sessions = std::atoi(argv[i + 1]);
    else
      Die("unknown flag " + a);
  }
  std::printf("appends (one 256-byte message each, synchronous=FULL):\n");
  // The disk's fsync time drifts (shared machines): the two write paths alternate (ABBAAB),
  // three runs each, and the medians are compared.
  constexpr int kRounds = 3;
  auto median = [](std::vector<double> v) {
    std::sort(v.begin(), v.end());
    return v[v.size() / 2];
  };
  for (int threads : {1, 8, 32}) {
    const int n = std::max(10, appends * 8 / threads / 2);
    std::vector<double> grouped, single;
    for (int r = 0; r < 2 * kRounds; ++r) {  // order alternates too: the first run pays more
      if ((r / 2 + r) % 2 == 0) {
        grouped.push_back(AppendsPerSecond(dir + "/a", threads, n, 256));
      } else {
        single.push_back(AppendsPerSecond(dir + "/a", threads, n, 1));
      }
    }
    std::printf(
        "  threads %-2d: group commit %.0f/s vs one commit per write %.0f/s (medians of %d): "
        "%.2fx\n",
        threads, median(grouped), median(single), kRounds, median(grouped) / median(single));
  }

  std::printf("quick_check on open, %d sessions x 20 messages of 1 KiB:\n", sessions);
  const std::string qdir = dir + "/q";
  fs::create_directories(qdir);
  {
    auto store = Store::Open(qdir + "/kvkeep.db");
    if (!store.ok()) Die(store.status().ToString());
    for (int s = 0; s < sessions; ++s) {
      StoredSession ss;
      ss.owner_uid = 1000;
      ss.id = "q" + std::to_string(s);
      ss.model = "tiny";
      for (int m = 0; m < 20; ++m) ss.messages.push_back(Msg(m, 1024));
      if (!(*store)->CreateSession(ss).ok()) Die("create");
    }
  }
  const double mib = static_cast<double>(fs::file_size(qdir + "/kvkeep.db")) / (1 << 20);
  for (bool check : {false, true, false, true}) {
    StoreOptions o;
    o.quick_check = check;
    const auto start = Clock::now();
    auto store = Store::Open(qdir + "/kvkeep.db", o);
    if (!store.ok()) Die(store.status().ToString());
    const double ms = Seconds(Clock::now() - start) * 1e3;
    std::printf(
        "  open %-18s %.1f MiB: %8.1f ms%s\n", check ? "with quick_check" : "without", mib, ms,
        check ? (" (" + std::to_string(static_cast<int>(mib / (ms / 1e3))) + " MiB/s)").c_str()
              : "");
  }
  fs::remove_all(dir);
  return 0;
}
