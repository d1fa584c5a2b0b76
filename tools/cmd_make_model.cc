// kvkeep make-model: writes a synthetic Hugging Face-style model directory (see
// engine/synthetic_model.h and docs/models.md). Prints the directory on stdout so that
// `kvkeep generate --model $(kvkeep make-model --preset tiny --out /tmp/m)` works;
// progress goes to stderr.
#include <cstdio>
#include <memory>
#include <string>

#include "base/file.h"
#include "engine/synthetic_model.h"
#include "tools/commands.h"

namespace kvkeep::tools {
namespace {

struct MakeModelArgs {
  std::string preset = "tiny";
  uint64_t seed = 0;
  std::string out;
  std::string dtype;  // "", "bf16", "f32"
  bool force = false;
};

// Prints "written X of Y GiB (Z%)" to stderr at every whole 5% step.
class ProgressPrinter {
 public:
  void operator()(uint64_t done_bytes, uint64_t total_bytes) {
    if (total_bytes == 0) return;
    int pct = static_cast<int>(done_bytes * 100 / total_bytes);
    if (pct / 5 == last_step_) return;
    last_step_ = pct / 5;
    constexpr double kGiB = 1024.0 * 1024.0 * 1024.0;
    std::fprintf(stderr, "make-model: written %.2f of %.2f GiB (%d%%)\n", done_bytes / kGiB,
                 total_bytes / kGiB, pct);
  }

 private:
  int last_step_ = -1;
};

int RunMakeModel(const MakeModelArgs& args) {
  SyntheticModelOptions options;
  options.preset = args.preset;
  options.seed = args.seed;
  options.force = args.force;
  if (args.dtype == "bf16") {
    options.dtype = DType::kBF16;
  } else if (args.dtype == "f32") {
    options.dtype = DType::kF32;
  }
  // Progress only where writing takes long enough to wonder (not for tiny).
  if (args.preset != "tiny") options.progress = ProgressPrinter();
  Status st = MakeSyntheticModel(DefaultEnv(), args.out, options);
  if (!st.ok()) {
    std::fprintf(stderr, "kvkeep make-model: %s\n", st.ToString().c_str());
    return 1;
  }
  std::printf("%s\n", args.out.c_str());
  return 0;
}

}  // namespace

void AddMakeModelCommand(CLI::App& app) {
  auto args = std::make_shared<MakeModelArgs>();
  CLI::App* cmd = app.add_subcommand(
      "make-model", "Write a synthetic HF-style Llama model directory with seeded random weights");
  cmd->add_option("--preset", args->preset, "tiny, small (~100M) or llama3-8b-shape (~16 GB)")
      ->check(CLI::IsMember(SyntheticPresetNames()))
      ->capture_default_str();
  cmd->add_option("--seed", args->seed, "Seed of the weights")->capture_default_str();
  cmd->add_option("--out", args->out, "Output directory (created)")->required();
  cmd->add_option("--dtype", args->dtype, "Weight dtype (default: f32 for tiny, else bf16)")
      ->check(CLI::IsMember({"bf16", "f32"}));
  cmd->add_flag("--force", args->force, "Write into a non-empty directory");
  cmd->callback([args] { SetExitCode(RunMakeModel(*args)); });
}

}  // namespace kvkeep::tools
