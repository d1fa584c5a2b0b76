// kvkeepd: serves an LLM to agents over a Unix socket and keeps their KV caches warm.
// See docs/configuration.md (flags, configuration file) and docs/protocol.md.
#include <signal.h>
#include <spdlog/spdlog.h>

#include <cstdio>

#include "base/file.h"
#include "base/logging.h"
#include "daemon/config.h"
#include "daemon/daemon.h"

int main(int argc, char** argv) {
  using namespace kvkeep;
  auto cl = ParseCommandLine(argc, argv, DefaultEnv());
  if (!cl.ok()) {
    std::fprintf(stderr, "kvkeepd: %s\n", cl.status().message().c_str());
    return 1;
  }
  if (cl->exit_now) return cl->exit_code;
  Status valid = ValidateDaemonOptions(cl->options);
  if (cl->check_config) {
    if (!valid.ok()) {
      std::fprintf(stderr, "kvkeepd: invalid configuration: %s\n", valid.message().c_str());
      return 1;
    }
    std::printf("configuration OK\n%s\n", DaemonOptionsToJson(cl->options).c_str());
    return 0;
  }
  if (!valid.ok()) {
    std::fprintf(stderr, "kvkeepd: invalid configuration: %s\n", valid.message().c_str());
    return 1;
  }
  if (Status st = SetupLogging(cl->options.log_level); !st.ok()) {
    std::fprintf(stderr, "kvkeepd: %s\n", st.message().c_str());
    return 1;
  }
  // A client vanishing mid-write must not kill the daemon; Asio reports EPIPE instead.
  signal(SIGPIPE, SIG_IGN);
  Daemon daemon(cl->options, std::vector<std::string>(argv, argv + argc));
  if (Status st = daemon.Init(); !st.ok()) {
    spdlog::critical("kvkeepd: {}", st.ToString());
    return 1;
  }
  if (Status st = daemon.Run(); !st.ok()) {
    spdlog::critical("kvkeepd: {}", st.ToString());
    return 1;
  }
  return 0;
}
