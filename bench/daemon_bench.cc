// daemon_bench: round trips of kvkeepd's control verbs against Redis PING, on this machine.
//
// Starts kvkeepd on a temporary socket with a tiny synthetic model, then for `hello` and
// `session.info` (messages: false) and for 1 and 64 connections measures requests/s and
// p50/p99 latency. Like redis-benchmark, one thread drives all connections through poll(),
// each connection with exactly one request in flight. In the same run it starts
// `redis-server` on a Unix socket, runs `redis-benchmark -s SOCK -t ping -c C -n N` and
// prints both with the ratio; the target is kvkeepd within 3x of Redis's requests/s.
//
//   daemon_bench [--kvkeepd PATH] [--requests N] [--plot FILE.png]
//
// kvkeepd defaults to $KVKEEPD, else the kvkeepd next to this binary's build directory
// (build/bench/daemon_bench -> build/kvkeepd). The model is made by the kvkeep next to it.
// A plain main: Google Benchmark's fixed-iteration model does not fit a shared daemon.
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <optional>
#include <regex>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <nlohmann/json.hpp>

#include "tools/replay/daemon_client.h"

namespace {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;
extern "C" char** environ;

[[noreturn]] void Die(const std::string& what) {
  std::fprintf(stderr, "daemon_bench: %s\n", what.c_str());
  std::exit(1);
}

// Starts argv with stdout/stderr sent to log_path; returns its pid.
pid_t Spawn(const std::vector<std::string>& argv, const std::string& log_path) {
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_addopen(&actions, 1, log_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC,
                                   0644);
  posix_spawn_file_actions_adddup2(&actions, 1, 2);
  std::vector<char*> args;
  for (const std::string& a : argv) args.push_back(const_cast<char*>(a.c_str()));
  args.push_back(nullptr);
  pid_t pid = 0;
  int rc = posix_spawnp(&pid, args[0], &actions, nullptr, args.data(), environ);
  posix_spawn_file_actions_destroy(&actions);
  if (rc != 0) Die("cannot start " + argv[0] + ": " + std::strerror(rc));
  return pid;
}

int RunToCompletion(const std::vector<std::string>& argv, const std::string& log_path) {
  int status = 0;
  waitpid(Spawn(argv, log_path), &status, 0);
  return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

std::string ReadAll(const std::string& path) {
  std::ifstream in(path);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

bool Connectable(const std::string& path) {
  int fd = socket(AF_UNIX, SOCK_STREAM, 0);
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  std::strncpy(addr.sun_path, path.c_str(), sizeof(addr.sun_path) - 1);
  bool ok = connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0;
  close(fd);
  return ok;
}

void WaitForSocket(const std::string& path, pid_t pid, const std::string& log_path) {
  auto deadline = Clock::now() + std::chrono::seconds(120);
  while (!Connectable(path)) {
    int status = 0;
    if (waitpid(pid, &status, WNOHANG) == pid || Clock::now() > deadline) {
      Die("server on " + path + " did not come up; its log:\n" + ReadAll(log_path));
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
}

void Stop(pid_t pid) {
  kill(pid, SIGTERM);
  int status = 0;
  waitpid(pid, &status, 0);
}

struct Measurement {
  double requests_per_s = 0;
  double p50_us = 0;
  double p99_us = 0;
  int64_t errors = 0;
};

double Percentile(std::vector<double>& sorted_us, double q) {
  if (sorted_us.empty()) return 0;
  size_t i = static_cast<size_t>(std::ceil(q * static_cast<double>(sorted_us.size()))) - 1;
  return sorted_us[std::min(i, sorted_us.size() - 1)];
}

// One thread, `num_conns` connections, one request in flight on each, until `total`
// replies have arrived. Every reply is checked to be a success line.
Measurement RunKvkeep(const std::string& socket_path, const std::string& request_line,
                      int num_conns, int64_t total) {
  struct Conn {
    int fd;
    std::string buffer;
    Clock::time_point sent_at;
  };
  std::vector<Conn> conns;
  std::vector<pollfd> pfds;
  for (int i = 0; i < num_conns; ++i) {
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    std::strncpy(addr.sun_path, socket_path.c_str(), sizeof(addr.sun_path) - 1);
    if (connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
      Die("connect " + socket_path + ": " + std::strerror(errno));
    }
    conns.push_back({fd, {}, {}});
    pfds.push_back({fd, POLLIN, 0});
  }
  const std::string line = request_line + "\n";
  auto send_one = [&](Conn& c) {
    c.sent_at = Clock::now();
    if (send(c.fd, line.data(), line.size(), MSG_NOSIGNAL) != static_cast<ssize_t>(line.size())) {
      Die("send failed");
    }
  };
  std::vector<double> latencies_us;
  latencies_us.reserve(static_cast<size_t>(total));
  int64_t sent = 0;
  Measurement m;
  const Clock::time_point start = Clock::now();
  for (Conn& c : conns) {
    if (sent < total) {
      send_one(c);
      ++sent;
    }
  }
  char chunk[1 << 16];
  while (static_cast<int64_t>(latencies_us.size()) < total) {
    if (poll(pfds.data(), pfds.size(), 10000) <= 0) Die("no reply from kvkeepd within 10 s");
    for (size_t i = 0; i < conns.size(); ++i) {
      if ((pfds[i].revents & (POLLIN | POLLHUP | POLLERR)) == 0) continue;
      Conn& c = conns[i];
      ssize_t n = recv(c.fd, chunk, sizeof(chunk), 0);
      if (n <= 0) Die("kvkeepd closed a connection");
      c.buffer.append(chunk, static_cast<size_t>(n));
      size_t newline;
      while ((newline = c.buffer.find('\n')) != std::string::npos) {
        const Clock::time_point now = Clock::now();
        if (c.buffer.substr(0, newline).find("\"result\"") == std::string::npos) {
          if (m.errors++ == 0) {
            std::fprintf(stderr, "daemon_bench: error reply: %s\n",
                         c.buffer.substr(0, newline).c_str());
          }
        }
        c.buffer.erase(0, newline + 1);
        latencies_us.push_back(std::chrono::duration<double, std::micro>(now - c.sent_at).count());
        if (sent < total) {
          send_one(c);
          ++sent;
        }
      }
    }
  }
  const double seconds = std::chrono::duration<double>(Clock::now() - start).count();
  for (Conn& c : conns) close(c.fd);
  std::sort(latencies_us.begin(), latencies_us.end());
  m.requests_per_s = static_cast<double>(total) / seconds;
  m.p50_us = Percentile(latencies_us, 0.50);
  m.p99_us = Percentile(latencies_us, 0.99);
  return m;
}

// redis-benchmark's summaries: the best of PING_INLINE and PING_MBULK by requests/s.
std::optional<Measurement> RunRedisBenchmark(const std::string& socket_path, int num_conns,
                                             int64_t total, const std::string& log_path) {
  int rc = RunToCompletion({"redis-benchmark", "-s", socket_path, "-t", "ping", "-c",
                            std::to_string(num_conns), "-n", std::to_string(total)},
                           log_path);
  std::string out = ReadAll(log_path);
  if (rc != 0) {
    std::fprintf(stderr, "daemon_bench: redis-benchmark failed (%d):\n%s\n", rc, out.c_str());
    return std::nullopt;
  }
  std::replace(out.begin(), out.end(), '\r', '\n');
  // throughput summary: 138888.89 requests per second
  //   latency summary (msec):
  //           avg       min       p50       p95       p99       max
  //         0.006     0.000     0.007     0.007     0.007    16.071
  std::regex summary(
      R"(throughput summary: ([0-9.]+) requests per second\s+latency summary \(msec\):\s+)"
      R"(avg\s+min\s+p50\s+p95\s+p99\s+max\s+([0-9.]+)\s+([0-9.]+)\s+([0-9.]+)\s+)"
      R"(([0-9.]+)\s+([0-9.]+))");
  std::optional<Measurement> best;
  for (auto it = std::sregex_iterator(out.begin(), out.end(), summary);
       it != std::sregex_iterator(); ++it) {
    Measurement m;
    m.requests_per_s = std::stod((*it)[1]);
    m.p50_us = std::stod((*it)[4]) * 1000.0;
    m.p99_us = std::stod((*it)[6]) * 1000.0;
    if (!best || m.requests_per_s > best->requests_per_s) best = m;
  }
  if (!best) std::fprintf(stderr, "daemon_bench: cannot parse redis-benchmark:\n%s\n", out.c_str());
  return best;
}

struct Row {
  std::string verb;
  int num_conns;
  int64_t requests;
  Measurement kvkeep;
  std::optional<Measurement> redis;
};

void WritePlot(const std::vector<Row>& rows, const std::string& png, const fs::path& dir) {
  const fs::path data = dir / "plot.dat";
  std::ofstream out(data);
  for (const Row& r : rows) {
    out << '"' << r.verb << " c=" << r.num_conns << "\" " << r.kvkeep.requests_per_s << ' '
        << (r.redis ? r.redis->requests_per_s : 0) << '\n';
  }
  out.close();
  const fs::path script = dir / "plot.gp";
  std::ofstream gp(script);
  gp << "set terminal png size 900,500\nset output '" << png << "'\n"
     << "set title 'kvkeepd control verbs vs Redis PING (Unix socket, requests/s)'\n"
     << "set style data histograms\nset style fill solid 0.8 border -1\n"
     << "set boxwidth 0.9\nset ylabel 'requests/s'\nset grid ytics\nset key top left\n"
     << "plot '" << data.string() << "' using 2:xtic(1) title 'kvkeepd', '' using 3 title "
     << "'redis PING'\n";
  gp.close();
  if (RunToCompletion({"gnuplot", script.string()}, (dir / "gnuplot.log").string()) != 0) {
    std::fprintf(stderr, "daemon_bench: gnuplot failed: %s\n",
                 ReadAll((dir / "gnuplot.log").string()).c_str());
  } else {
    std::printf("plot: %s\n", png.c_str());
  }
}

}  // namespace

int main(int argc, char** argv) {
  std::string kvkeepd;
  std::string plot;
  int64_t requests = 50000;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (a == "--kvkeepd" && i + 1 < argc) {
      kvkeepd = argv[++i];
    } else if (a == "--requests" && i + 1 < argc) {
      requests = std::atoll(argv[++i]);
    } else if (a == "--plot" && i + 1 < argc) {
      plot = argv[++i];
    } else if (a.rfind("--", 0) != 0 && kvkeepd.empty()) {
      kvkeepd = a;
    } else {
      Die("usage: daemon_bench [--kvkeepd PATH] [--requests N] [--plot FILE.png]");
    }
  }
  if (kvkeepd.empty() && std::getenv("KVKEEPD")) kvkeepd = std::getenv("KVKEEPD");
  if (kvkeepd.empty()) {
    kvkeepd = (fs::canonical("/proc/self/exe").parent_path().parent_path() / "kvkeepd").string();
  }
  if (!fs::exists(kvkeepd)) Die("no kvkeepd at " + kvkeepd + " (pass --kvkeepd or set KVKEEPD)");
  const std::string kvkeep = (fs::path(kvkeepd).parent_path() / "kvkeep").string();

  char dir_template[] = "/tmp/kvkeep-bench-XXXXXX";
  if (mkdtemp(dir_template) == nullptr) Die("mkdtemp failed");
  const fs::path dir = dir_template;
  const std::string model = (dir / "model").string();
  if (RunToCompletion({kvkeep, "make-model", "--preset", "tiny", "--seed", "1", "--out", model},
                      (dir / "make-model.log").string()) != 0) {
    Die("kvkeep make-model failed: " + ReadAll((dir / "make-model.log").string()));
  }
  const std::string kv_sock = (dir / "kvkeep.sock").string();
  const std::string kv_log = (dir / "kvkeepd.log").string();
  pid_t kv_pid = Spawn({kvkeepd, "--model", model, "--socket", kv_sock, "--state-dir",
                        (dir / "state").string(), "--log-level", "warn"},
                       kv_log);
  WaitForSocket(kv_sock, kv_pid, kv_log);

  const std::string redis_sock = (dir / "redis.sock").string();
  const std::string redis_log = (dir / "redis.log").string();
  pid_t redis_pid = Spawn({"redis-server", "--port", "0", "--unixsocket", redis_sock, "--save", "",
                           "--appendonly", "no"},
                          redis_log);
  WaitForSocket(redis_sock, redis_pid, redis_log);

  auto setup = kvkeep::client::DaemonClient::Connect(kv_sock);
  if (!setup.ok()) Die(setup.status().ToString());
  auto opened = (*setup)->Call("session.open", {{"session", "bench"}, {"system", "benchmark"}});
  if (!opened.ok()) Die("session.open: " + opened.status().ToString());

  const std::vector<std::pair<std::string, std::string>> verbs = {
      {"hello", R"({"id":1,"verb":"hello"})"},
      {"session.info", R"({"id":1,"verb":"session.info","session":"bench","messages":false})"},
  };
  std::vector<Row> rows;
  for (int conns : {1, 64}) {
    std::optional<Measurement> redis =
        RunRedisBenchmark(redis_sock, conns, requests, (dir / "redis-benchmark.log").string());
    for (const auto& [verb, line] : verbs) {
      RunKvkeep(kv_sock, line, conns, std::min<int64_t>(requests / 10, 2000));  // warm-up
      rows.push_back({verb, conns, requests, RunKvkeep(kv_sock, line, conns, requests), redis});
    }
  }
  Stop(redis_pid);
  Stop(kv_pid);

  std::printf("\nkvkeepd vs redis-server, Unix socket, one request in flight per connection\n");
  std::printf("%-13s %5s %9s | %11s %9s %9s | %11s %9s %9s | %7s\n", "verb", "conns", "requests",
              "kvkeep r/s", "p50 us", "p99 us", "redis r/s", "p50 us", "p99 us", "ratio");
  bool all_within_target = true;
  for (const Row& r : rows) {
    std::printf("%-13s %5d %9lld | %11.0f %9.1f %9.1f | ", r.verb.c_str(), r.num_conns,
                static_cast<long long>(r.requests), r.kvkeep.requests_per_s, r.kvkeep.p50_us,
                r.kvkeep.p99_us);
    if (r.redis) {
      const double ratio = r.redis->requests_per_s / r.kvkeep.requests_per_s;
      all_within_target = all_within_target && ratio <= 3.0 && r.kvkeep.errors == 0;
      std::printf("%11.0f %9.1f %9.1f | %6.2fx%s\n", r.redis->requests_per_s, r.redis->p50_us,
                  r.redis->p99_us, ratio, r.kvkeep.errors ? " (errors!)" : "");
    } else {
      all_within_target = false;
      std::printf("%11s %9s %9s | %7s\n", "-", "-", "-", "-");
    }
  }
  std::printf("ratio = redis requests/s / kvkeepd requests/s; target <= 3.00x: %s\n",
              all_within_target ? "met" : "NOT met");
  if (!plot.empty()) WritePlot(rows, plot, dir);
  fs::remove_all(dir);
  return 0;
}
