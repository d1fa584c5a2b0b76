// `kvkeep replay ...`: import real agent traces and workloads into the canonical trace
// format (docs/trace-format.md).
#include <iostream>

#include "tools/commands.h"
#include "tools/replay/importers.h"
#include "tools/replay/synth.h"

namespace kvkeep::tools {
namespace {

struct ImportArgs {
  std::string format;
  std::vector<std::string> files;
  uint64_t seed = 0;
  bool quiet = false;
};

int RunImport(const ImportArgs& args) {
  replay::ImportOptions options;
  options.seed = args.seed;
  std::vector<replay::Session> sessions;
  replay::ImportReport report;
  Status st = replay::ImportFiles(args.format, args.files, options, &sessions, &report);
  if (!st.ok()) {
    std::cerr << "kvkeep replay import: " << st.message() << "\n";
    return 2;
  }
  for (const replay::Session& s : sessions) std::cout << replay::SessionToJson(s) << "\n";
  std::cout.flush();
  for (const std::string& e : report.errors) std::cerr << "skipped: " << e << "\n";
  if (!args.quiet) {
    std::cerr << "imported " << report.sessions << " sessions from " << report.files
              << " files (" << report.skipped << " skipped)\n";
  }
  return report.sessions == 0 && report.skipped > 0 ? 1 : 0;
}

int RunSynth(const replay::SynthOptions& options) {
  for (const replay::Session& s : replay::Synthesize(options)) {
    std::cout << replay::SessionToJson(s) << "\n";
  }
  std::cout.flush();
  return std::cout ? 0 : 1;
}

}  // namespace

void AddReplayCommand(CLI::App& app) {
  CLI::App* replay = app.add_subcommand("replay", "Import, synthesise and replay agent traces");
  replay->require_subcommand(1);

  auto args = std::make_shared<ImportArgs>();
  std::string formats;
  for (const auto& f : replay::ImportFormats()) formats += (formats.empty() ? "" : ", ") + f;
  CLI::App* import = replay->add_subcommand(
      "import", "Convert trace files to the canonical JSONL trace on stdout");
  import->add_option("--from", args->format, "Source format: " + formats)->required();
  import->add_option("files", args->files, "Input files")->required();
  import->add_option("--seed", args->seed, "Seed of synthetic token content (workloads)")
      ->capture_default_str();
  import->add_flag("--quiet", args->quiet, "No summary on stderr");
  import->callback([args] { SetExitCode(RunImport(*args)); });

  auto synth = std::make_shared<replay::SynthOptions>();
  CLI::App* synth_cmd = replay->add_subcommand(
      "synth", "Synthesise SWE-agent-like sessions (model fitted to real traces) on stdout");
  synth_cmd->add_option("--agents", synth->agents, "Number of sessions")
      ->capture_default_str()
      ->check(CLI::Range(1, 1000000));
  synth_cmd->add_option("--seed", synth->seed, "Seed")->capture_default_str();
  synth_cmd->add_option("--rate", synth->arrival_rate_per_s,
                        "Poisson arrival rate per second (0: all arrive at once)")
      ->capture_default_str()
      ->check(CLI::NonNegativeNumber);
  synth_cmd->add_option("--max-turns", synth->max_turns, "Cap on model turns per session")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  synth_cmd->callback([synth] {
    synth->min_turns = std::min(synth->min_turns, synth->max_turns);
    SetExitCode(RunSynth(*synth));
  });
}

}  // namespace kvkeep::tools
