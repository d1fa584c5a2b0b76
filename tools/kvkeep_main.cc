// kvkeep: the command-line tool. One subcommand per verb; see `kvkeep --help`.
#include <cstdio>

#include "base/logging.h"
#include "tools/commands.h"

namespace kvkeep::tools {
namespace {
int g_exit_code = 0;
}
void SetExitCode(int code) { g_exit_code = code; }
int ExitCode() { return g_exit_code; }
}  // namespace kvkeep::tools

int main(int argc, char** argv) {
  CLI::App app{"kvkeep: keeps agents' KV caches warm between turns"};
  app.require_subcommand(1);
  std::string log_level = "warn";
  app.add_option("--log-level", log_level, "trace, debug, info, warn, error, critical, off")
      ->capture_default_str();
  app.parse_complete_callback([&] {
    if (auto st = kvkeep::SetupLogging(log_level); !st.ok()) {
      throw CLI::ValidationError("--log-level", st.message());
    }
  });

  kvkeep::tools::AddMakeModelCommand(app);
  kvkeep::tools::AddModelInfoCommand(app);
  kvkeep::tools::AddGenerateCommand(app);
  kvkeep::tools::AddParityCommand(app);
  kvkeep::tools::AddStatusCommand(app);
  kvkeep::tools::AddSessionsCommand(app);
  kvkeep::tools::AddChatCommand(app);
  kvkeep::tools::AddReplayCommand(app);
  kvkeep::tools::AddEvalEpisodesCommand(app);

  CLI11_PARSE(app, argc, argv);
  return kvkeep::tools::ExitCode();
}
