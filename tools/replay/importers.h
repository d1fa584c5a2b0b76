// Importers: real agent trajectories and request workloads -> canonical sessions.
//
// Formats (examples under ../shared/data; docs/trace-format.md maps each field):
//   mini-swe-agent  trajectory_format "mini-swe-agent-1" (bash block in the assistant text,
//                   next user message is the observation) and "mini-swe-agent-1.1"
//                   (OpenAI tool_calls, tool messages, extra.timestamp per message)
//   swe-agent       .traj files of SWE-agent 0.x and 1.x
//   nebius          rows of nebius/SWE-agent-trajectories (roles system/user/ai)
//   openhands       output.jsonl rows (history events with ISO timestamps)
//   mooncake        request traces {timestamp ms, input_length, output_length, hash_ids}
//   burstgpt        BurstGPT CSVs (with sessions where the CSV has a Session ID column)
//
// A malformed file or record is skipped and counted, with an error that names the file
// and the record; importing never aborts on bad input.
#pragma once

#include <string>
#include <vector>

#include "base/status.h"
#include "tools/replay/timing_model.h"
#include "tools/replay/trace.h"

namespace kvkeep::replay {

struct ImportOptions {
  TimingModel timing;
  uint64_t seed = 0;  // seeds synthetic token content of workload formats
};

struct ImportReport {
  int files = 0;
  int sessions = 0;
  int skipped = 0;                  // files or records skipped
  std::vector<std::string> errors;  // one per skip: "file:record: what is wrong"
};

// Names accepted by ImportFiles, in a stable order.
const std::vector<std::string>& ImportFormats();

// Imports every file; appends sessions to *out. NotFound/InvalidArgument only for an
// unknown format; bad files are reported in *report and skipped.
Status ImportFiles(const std::string& format, const std::vector<std::string>& paths,
                   const ImportOptions& options, std::vector<Session>* out, ImportReport* report);

// Per-format entry points (one file each). On a bad file they return an error naming the
// record; record-level importers (mooncake, burstgpt) skip bad records into *report.
Status ImportMiniSweAgent(const std::string& path, const ImportOptions& options,
                          std::vector<Session>* out);
Status ImportSweAgent(const std::string& path, const ImportOptions& options,
                      std::vector<Session>* out);
Status ImportNebius(const std::string& path, const ImportOptions& options,
                    std::vector<Session>* out);
Status ImportOpenHands(const std::string& path, const ImportOptions& options,
                       std::vector<Session>* out, ImportReport* report);
Status ImportMooncake(const std::string& path, const ImportOptions& options,
                      std::vector<Session>* out, ImportReport* report);
Status ImportBurstGpt(const std::string& path, const ImportOptions& options,
                      std::vector<Session>* out, ImportReport* report);

// The shell command in a fenced ```bash (or ```sh / plain ```) block of an assistant
// message; empty when there is none or more than one.
std::string ExtractFencedCommand(std::string_view text);

}  // namespace kvkeep::replay
