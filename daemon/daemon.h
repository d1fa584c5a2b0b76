// Daemon: kvkeepd assembled — model, engine, store, service, server, signals, systemd
// notifications — and its lifecycle:
//   Init:  state dir, model (the synthetic tiny model is made when none is configured),
//          engine thread, store (migrations), sessions, socket (bound or adopted).
//   Run:   I/O threads serve until SIGTERM/SIGINT. SIGHUP re-reads the configuration and
//          applies what can change at run time (log level); other changes are logged as
//          needing a restart. READY=1 after Init, WATCHDOG=1 while the engine makes
//          progress, STATUS= lines with sessions and connections.
//   Shutdown (SIGTERM): stop accepting and remove the socket; refuse new generations;
//          let in-flight ones finish for up to kShutdownGraceMs, then cancel the rest;
//          close connections; stop the engine; close the store (every acknowledged
//          write is already committed).
//
// Thread-safety: construct, Init and Run from the main thread.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "base/status.h"
#include "daemon/config.h"

namespace kvkeep {

class Daemon {
 public:
  // argv is kept to re-read the configuration on SIGHUP.
  Daemon(DaemonOptions options, std::vector<std::string> argv);
  ~Daemon();
  Status Init();
  // Blocks until shutdown completes.
  Status Run();

  static constexpr int64_t kShutdownGraceMs = 5000;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace kvkeep
