// The verbs of the `kvkeep` command line. Each verb lives in its own tools/cmd_*.cc and
// adds a CLI11 subcommand; kvkeep_main.cc lists them. A verb's callback returns the
// process exit code through SetExitCode.
#pragma once

#include <CLI/CLI.hpp>

namespace kvkeep::tools {

// Exit code the process returns once CLI11 has run the chosen subcommand's callback.
void SetExitCode(int code);
int ExitCode();

void AddMakeModelCommand(CLI::App& app);  // make-model
void AddModelInfoCommand(CLI::App& app);  // model-info
void AddGenerateCommand(CLI::App& app);   // generate
void AddParityCommand(CLI::App& app);     // parity
void AddStatusCommand(CLI::App& app);     // status (tools/cmd_client.cc)
void AddSessionsCommand(CLI::App& app);   // sessions (tools/cmd_client.cc)
void AddChatCommand(CLI::App& app);       // chat (tools/cmd_client.cc)
void AddReplayCommand(CLI::App& app);     // replay import|synth|run

void AddEvalEpisodesCommand(CLI::App& app);  // eval-episodes (tools/cmd_eval_episodes.cc)

}  // namespace kvkeep::tools
