// RedisServer: a real redis-server for tests, on a unix socket in a temp directory, with no
// persistence. Started by the constructor (skips nothing: check ok()), stopped (SIGKILL)
// by the destructor. Kill/Pause/Resume/Restart drive the fault tests.
//
// Thread-safety: none; one test thread owns it.
#pragma once

#include <sys/types.h>

#include <string>

#include "tests/testlib/test_util.h"

namespace kvkeep::testing {

class RedisServer {
 public:
  // Starts redis-server (from PATH) listening on socket() only; maxmemory_bytes > 0 sets
  // maxmemory with allkeys-lru.
  explicit RedisServer(int64_t maxmemory_bytes = 0);
  ~RedisServer();
  RedisServer(const RedisServer&) = delete;
  RedisServer& operator=(const RedisServer&) = delete;

  bool ok() const { return pid_ > 0; }
  const std::string& socket() const { return socket_; }
  std::string address() const { return "unix:" + socket_; }

  void Kill();     // SIGKILL and reap; the socket file is removed
  void Pause();    // SIGSTOP: connections hang (a "slow" server)
  void Resume();   // SIGCONT
  bool Restart();  // Kill, then start again, empty

 private:
  bool Start();

  TempDir dir_;
  std::string socket_;
  int64_t maxmemory_bytes_;
  pid_t pid_ = -1;
};

}  // namespace kvkeep::testing
