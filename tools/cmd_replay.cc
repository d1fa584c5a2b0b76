// `kvkeep replay ...`: import real agent traces and workloads into the canonical trace
// format (docs/trace-format.md).
#include <stdlib.h>

#include <algorithm>
#include <fstream>
#include <iostream>
#include <sstream>

#include "base/file.h"
#include "daemon/config.h"
#include "tools/commands.h"
#include "tools/replay/daemon_process.h"
#include "tools/replay/importers.h"
#include "tools/replay/replayer.h"
#include "tools/replay/report.h"
#include "tools/replay/synth.h"
#include "tools/replay_daemon_state.h"

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
    std::cerr << "imported " << report.sessions << " sessions from " << report.files << " files ("
              << report.skipped << " skipped)\n";
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

struct RunArgs {
  std::string trace;
  std::string out;
  std::string socket;
  bool spawn = false;
  std::string model;
  std::string kvkeepd = replay::DefaultKvkeepdPath();
  std::vector<std::string> policies = {"lru"};
  int agents = 4;
  std::string arrivals = "recorded";
  double rate = 1.0;
  std::string arrival_file;
  double time_scale = 1.0;
  int max_turns = 0;
  int64_t max_prompt_tokens = 0;
  int64_t max_message_tokens = 0;
  double deadline_s = 0;
  int max_sessions = 0;
  uint64_t seed = 0;
  bool no_plots = false;
  std::string tool_history;  // --tool-history: a trace whose tool times seed each daemon
  std::string cost_model;    // --cost-model: cost_model.json for each daemon
  std::vector<std::string> daemon_args;
};

// Arrival times (s) from the Timestamp column of a BurstGPT CSV.
Result<std::vector<double>> ReadArrivalFile(const std::string& path) {
  ASSIGN_OR_RETURN(std::string text, DefaultEnv()->ReadFile(path));
  std::istringstream in(text);
  std::string line;
  std::getline(in, line);
  if (line.rfind("Timestamp", 0) != 0) {
    return Status::InvalidArgument(path + ": first column must be 'Timestamp' (BurstGPT CSV)");
  }
  std::vector<double> out;
  for (int lineno = 2; std::getline(in, line); ++lineno) {
    if (line.empty()) continue;
    char* end = nullptr;
    double t = std::strtod(line.c_str(), &end);
    if (end == line.c_str()) {
      return Status::InvalidArgument(path + ":" + std::to_string(lineno) + ": bad Timestamp");
    }
    out.push_back(t);
  }
  std::sort(out.begin(), out.end());
  if (out.empty()) return Status::InvalidArgument(path + ": no arrivals");
  return out;
}

// The policy's time knobs in the spawned daemon's seconds. --time-scale shrinks tool waits,
// so the rules' thresholds shrink with them: a tool that fixed-ttl would pin unscaled is
// pinned scaled, and the TTL rule's cap and prior keep their place among the durations.
// A knob given after `--` wins.
std::vector<std::string> ScaledPolicyArgs(double time_scale,
                                          const std::vector<std::string>& daemon_args) {
  if (time_scale == 1.0) return {};
  const DaemonTtlOptions d;
  std::vector<std::string> out;
  for (const auto& [flag, unscaled_s] : std::vector<std::pair<std::string, double>>{
           {"--fixed-ttl-s", d.fixed_ttl_s},
           {"--fixed-ttl-mean-threshold-s", d.fixed_ttl_mean_threshold_s},
           {"--max-ttl-s", d.max_ttl_s},
           {"--tool-prior-mean-s", d.prior_mean_s}}) {
    if (std::find(daemon_args.begin(), daemon_args.end(), flag) != daemon_args.end()) continue;
    out.push_back(flag);
    out.push_back(std::to_string(std::max(unscaled_s * time_scale, 1e-3)));
  }
  return out;
}

Status RunReplayCommand(const RunArgs& a) {
  if (a.spawn == !a.socket.empty()) {
    return Status::InvalidArgument("give exactly one of --socket PATH or --spawn");
  }
  if (!a.spawn && (!a.tool_history.empty() || !a.cost_model.empty())) {
    return Status::InvalidArgument("--tool-history and --cost-model need --spawn");
  }
  if (!a.spawn && a.policies.size() > 1) {
    return Status::InvalidArgument(
        "several --policy values need --spawn (a running daemon has one policy)");
  }
  ASSIGN_OR_RETURN(std::vector<replay::Session> trace, replay::ReadTraceFile(a.trace));
  if (a.max_sessions > 0 && static_cast<int>(trace.size()) > a.max_sessions) {
    trace.resize(static_cast<size_t>(a.max_sessions));
  }
  RETURN_IF_ERROR(DefaultEnv()->CreateDirs(a.out));

  replay::ReplayOptions o;
  o.agents = a.agents;
  o.rate_per_s = a.rate;
  o.time_scale = a.time_scale;
  o.max_turns = a.max_turns;
  o.max_prompt_tokens = a.max_prompt_tokens;
  o.max_message_tokens = a.max_message_tokens;
  o.deadline_s = a.deadline_s;
  o.seed = a.seed;
  o.on_progress = [](const std::string& line) { std::cerr << line << "\n"; };
  if (a.arrivals == "poisson") {
    o.arrivals = replay::ArrivalMode::kPoisson;
  } else if (a.arrivals == "burstgpt") {
    if (a.arrival_file.empty())
      return Status::InvalidArgument("--arrivals burstgpt needs --arrival-file");
    ASSIGN_OR_RETURN(o.arrival_times_s, ReadArrivalFile(a.arrival_file));
    o.arrivals = replay::ArrivalMode::kTimestamps;
  } else if (a.arrivals != "recorded") {
    return Status::InvalidArgument("--arrivals must be recorded, poisson or burstgpt");
  }

  replay::ReportInput report;
  report.params = {{"trace", a.trace},
                   {"sessions", trace.size()},
                   {"agents", a.agents},
                   {"arrivals", a.arrivals},
                   {"rate", a.rate},
                   {"time_scale", a.time_scale},
                   {"max_turns", a.max_turns},
                   {"max_prompt_tokens", a.max_prompt_tokens},
                   {"max_message_tokens", a.max_message_tokens},
                   {"deadline_s", a.deadline_s},
                   {"seed", a.seed},
                   {"spawn", a.spawn},
                   {"model", a.model},
                   {"tool_history", a.tool_history},
                   {"cost_model", a.cost_model},
                   {"daemon_args", a.daemon_args}};
  // Sockets live in a short temporary directory: sun_path holds 108 bytes at most.
  std::string sock_dir = "/tmp/kvkeep-replay-XXXXXX";
  if (a.spawn && mkdtemp(sock_dir.data()) == nullptr) return Status::IOError("mkdtemp failed");
  for (const std::string& policy : a.policies) {
    std::unique_ptr<replay::DaemonProcess> daemon;
    o.policy = policy;
    o.socket_path = a.socket;
    if (a.spawn) {
      std::string dir = JoinPath(a.out, policy);
      RETURN_IF_ERROR(DefaultEnv()->CreateDirs(dir));
      replay::DaemonSpawnOptions spawn;
      spawn.kvkeepd_path = a.kvkeepd;
      spawn.socket_path = JoinPath(sock_dir, policy + ".sock");
      spawn.state_dir = JoinPath(dir, "state");
      RETURN_IF_ERROR(
          SeedDaemonState({a.tool_history, a.time_scale, a.cost_model}, spawn.state_dir));
      spawn.log_path = JoinPath(dir, "kvkeepd.log");
      spawn.extra_args = {"--policy", policy};
      if (!a.model.empty()) spawn.extra_args.insert(spawn.extra_args.end(), {"--model", a.model});
      const std::vector<std::string> scaled = ScaledPolicyArgs(a.time_scale, a.daemon_args);
      spawn.extra_args.insert(spawn.extra_args.end(), scaled.begin(), scaled.end());
      spawn.extra_args.insert(spawn.extra_args.end(), a.daemon_args.begin(), a.daemon_args.end());
      std::cerr << "[" << policy << "] starting kvkeepd (log: " << spawn.log_path << ")\n";
      ASSIGN_OR_RETURN(daemon, replay::DaemonProcess::Start(spawn));
      o.socket_path = spawn.socket_path;
    }
    std::cerr << "[" << policy << "] replaying " << trace.size() << " sessions with " << a.agents
              << " agents\n";
    ASSIGN_OR_RETURN(replay::ReplayResult result, replay::RunReplay(trace, o));
    if (daemon) daemon->Stop();
    report.policies.push_back(policy);
    report.results[policy] = std::move(result);
  }
  if (a.spawn) rmdir(sock_dir.c_str());

  RETURN_IF_ERROR(replay::WriteReport(a.out, report));
  std::cout << replay::SummaryTable(report);
  RETURN_IF_ERROR(replay::CheckNotEmpty(report));  // an empty replay is an error, said why
  std::cout << "report: " << JoinPath(a.out, "report.json") << " and turns.csv\n";
  if (!a.no_plots) {
    Result<std::vector<std::string>> pngs = replay::WritePlots(a.out, report);
    if (!pngs.ok()) return pngs.status();
    for (const std::string& p : *pngs) std::cout << "plot: " << p << "\n";
  }
  return Status::OK();
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
  import->callback([args] { SetExitCode(RunImport(*args));
});

auto synth = std::make_shared<replay::SynthOptions>();
CLI::App* synth_cmd = replay->add_subcommand(
    "synth", "Synthesise SWE-agent-like sessions (model fitted to real traces) on stdout");
synth_cmd->add_option("--agents", synth->agents, "Number of sessions")
    ->capture_default_str()
    ->check(CLI::Range(1, 1000000));
synth_cmd->add_option("--seed", synth->seed, "Seed")->capture_default_str();
synth_cmd
    ->add_option("--rate", synth->arrival_rate_per_s,
                 "Poisson arrival rate per second (0: all arrive at once)")
    ->capture_default_str()
    ->check(CLI::NonNegativeNumber);
synth_cmd->add_option("--max-turns", synth->max_turns, "Cap on model turns per session")
    ->capture_default_str()
    ->check(CLI::PositiveNumber);
auto run = std::make_shared<RunArgs>();
CLI::App* run_cmd = replay->add_subcommand(
    "run",
    "Replay a trace against kvkeepd, once per policy, and report (kvkeep replay run "
    "TRACE --out DIR --spawn [--model DIR] --policy lru,none [-- kvkeepd flags])");
run_cmd->add_option("trace", run->trace, "Canonical trace (JSONL)")->required();
run_cmd->add_option("daemon_args", run->daemon_args, "kvkeepd flags, after --");
run_cmd->add_option("--out", run->out, "Output directory for the report and plots")->required();
run_cmd->add_option("--socket", run->socket, "Replay against this running kvkeepd");
run_cmd->add_flag("--spawn", run->spawn, "Start a fresh kvkeepd per policy");
run_cmd->add_option("--model", run->model,
                    "Model directory for --spawn (default: the daemon's tiny model)");
run_cmd->add_option("--kvkeepd", run->kvkeepd, "kvkeepd binary for --spawn")->capture_default_str();
run_cmd->add_option("--policy", run->policies, "Cache policies, comma-separated")
    ->delimiter(',')
    ->capture_default_str();
run_cmd->add_option("--agents", run->agents, "Concurrent agents")
    ->capture_default_str()
    ->check(CLI::Range(1, 4096));
run_cmd->add_option("--arrivals", run->arrivals, "recorded, poisson or burstgpt")
    ->capture_default_str();
run_cmd->add_option("--rate", run->rate, "Poisson arrivals per second")->capture_default_str();
run_cmd->add_option("--arrival-file", run->arrival_file, "BurstGPT CSV for --arrivals burstgpt");
run_cmd
    ->add_option("--time-scale", run->time_scale,
                 "Multiplies recorded tool waits, think gaps and arrivals")
    ->capture_default_str()
    ->check(CLI::NonNegativeNumber);
run_cmd->add_option("--max-turns", run->max_turns, "Model turns per session (0: all)")
    ->capture_default_str();
run_cmd
    ->add_option("--max-prompt-tokens", run->max_prompt_tokens,
                 "Stop a session before its context passes this (0: off)")
    ->capture_default_str();
run_cmd
    ->add_option("--max-message-tokens", run->max_message_tokens,
                 "With --max-prompt-tokens, clip each message to this (0: an eighth of it)")
    ->capture_default_str()
    ->check(CLI::NonNegativeNumber);
run_cmd
    ->add_option("--deadline-s", run->deadline_s,
                 "Stop every session at its next event after this many seconds (0: off); "
                 "cut sessions are reported with an error, finished ones as usual")
    ->check(CLI::NonNegativeNumber);
run_cmd->add_option("--sessions", run->max_sessions, "Replay only the first N sessions");
run_cmd->add_option("--seed", run->seed, "Seed (Poisson arrivals)")->capture_default_str();
run_cmd->add_option("--tool-history", run->tool_history,
                    "With --spawn, seed each daemon's tool statistics with this trace's tool "
                    "times (x --time-scale): what it would have learned serving those agents");
run_cmd->add_option("--cost-model", run->cost_model,
                    "With --spawn, each daemon prices hits with this cost_model.json");
run_cmd->add_flag("--no-plots", run->no_plots, "Skip the PNG plots");
run_cmd->callback([run] {
  Status st = RunReplayCommand(*run);
  if (!st.ok()) std::cerr << "kvkeep replay run: " << st.ToString() << "\n";
  SetExitCode(st.ok() ? 0 : 1);
});

synth_cmd->callback([synth] {
  synth->min_turns = std::min(synth->min_turns, synth->max_turns);
  SetExitCode(RunSynth(*synth));
});
}  // namespace kvkeep::tools

}  // namespace kvkeep::tools
