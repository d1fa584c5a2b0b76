// `kvkeep eval-episodes --fidelity`: the command-line half of the answer-fidelity
// evaluation (tools/episode_fidelity.h): loads the model on the chosen device, prepares or
// reads the plan, runs it within an optional deadline, and prints or writes the report.
//
// Thread-safety: runs on the calling thread.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "base/file.h"
#include "base/status.h"
#include "tools/episode_fidelity.h"
#include "tools/locomo.h"

namespace kvkeep::tools {

struct FidelityCommandArgs {
  std::string llm;             // empty: the default model (or the synthetic tiny one)
  std::string device = "cpu";  // cpu or cuda (daemon/backend_factory.h)
  std::string embedder = "default";
  std::string model_dir;  // sentence model directory (empty: installed)
  FidelityOptions options;
  std::string plan;                        // read the plan from this file instead of preparing it
  std::string plan_out;                    // write the prepared plan here and stop
  std::string out;                         // the JSON report, rewritten after each conversation
  std::vector<std::string> conversations;  // sample ids; empty: all
  double deadline_s = 0;                   // 0: none
  bool json = false;                       // print the report as one JSON object
  std::string calibration;                 // --layer-alpha: calibration text file
  int32_t calibration_tokens = 0;          // 0: four blocks (4 B), as the pool allows
  std::string state_dir;                   // --layer-alpha: profile cache (empty: kvkeepd's)
};

// `conversations` is the loaded data; unused with args.plan.
Status RunFidelityCommand(Env* env, const FidelityCommandArgs& args,
                          const std::vector<LocomoConversation>& conversations);

}  // namespace kvkeep::tools
