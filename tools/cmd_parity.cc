// kvkeep parity --model DIR --device cuda [--against cpu] --prompt TEXT: teacher-forced
// parity of two backends on one model (engine/backend_parity.h). Both backends get the
// reference's greedy tokens, so a near-tie (two best logits closer than the candidate's
// rounding error) shows up as one flip within tolerance instead of a different text.
// Exit code 0: the candidate agrees within tolerance; 1: a real mismatch or an error.
#include <cstdio>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>

#include "base/file.h"
#include "daemon/backend_factory.h"
#include "engine/backend.h"
#include "engine/backend_parity.h"
#include "engine/model_config.h"
#include "engine/model_weights.h"
#include "engine/tokenizer.h"
#include "tools/commands.h"

namespace kvkeep::tools {
namespace {

struct ParityArgs {
  std::string model_dir;
  std::string prompt;
  std::string device = "cuda";
  std::string against = "cpu";
  int32_t max_tokens = 64;
  int32_t chunk_tokens = 256;
  std::string kv_dtype = "f32";  // the CPU side (see OptionsFor)
  double max_rel_error = 0.05;
  int32_t threads = 0;
  bool no_special_tokens = false;
  bool json = false;
};

// The CUDA backend only stores bf16 KV. A CPU backend takes --kv-dtype, except the reference
// of a cpu-against-cpu run, which stays f32 (the exact reference) so that
// `--device cpu --against cpu --kv-dtype bf16` measures the bf16 KV cache alone.
BackendOptions OptionsFor(const std::string& device, const ParityArgs& args, int64_t tokens,
                          bool reference) {
  BackendOptions o;
  o.num_threads = args.threads;
  o.cpu_quantized_weights = false;  // the CPU runs the exact fp32-weight path (no Q8 kernels)
  const bool exact_reference = reference && args.device == "cpu";
  if (device == "cuda" || (!exact_reference && args.kv_dtype == "bf16")) {
    o.kv_dtype = KvDType::kBF16;
  }
  // The one sequence's context plus a block of slack (TeacherForcedParity's requirement).
  o.num_kv_blocks = static_cast<int32_t>((tokens + o.block_size - 1) / o.block_size + 1);
  return o;
}

nlohmann::ordered_json ToJson(const ParityArgs& args, const std::string& ref_name,
                              const std::string& cand_name, const ParityReport& r) {
  nlohmann::ordered_json steps = nlohmann::json::array();
  for (const ParityStep& s : r.per_step) {
    steps.push_back({{"reference_token", s.reference_token},
                     {"candidate_token", s.candidate_token},
                     {"max_abs_dlogit", s.max_abs_dlogit},
                     {"max_abs_logit", s.max_abs_logit},
                     {"margin", s.margin},
                     {"within_tolerance", s.within_tolerance}});
  }
  return {{"model", args.model_dir},
          {"reference", ref_name},
          {"candidate", cand_name},
          {"pass", r.pass},
          {"prompt_tokens", r.prompt_tokens},
          {"steps", r.steps},
          {"flips", r.flips},
          {"flips_outside_tolerance", r.flips_outside_tolerance},
          {"steps_over_error", r.steps_over_error},
          {"max_rel_logit_error", args.max_rel_error},
          {"worst_rel_logit_error", r.worst_rel_logit_error},
          {"worst_step", r.worst_step},
          {"first_flip_step", r.first_flip_step},
          {"first_flip_margin", r.first_flip_margin},
          {"first_flip_error", r.first_flip_error},
          {"free_running_first_difference", r.first_flip_step},
          {"reference_tokens", r.reference_tokens},
          {"per_step", steps}};
}

Status RunParity(const ParityArgs& args) {
  Env* env = DefaultEnv();
  ASSIGN_OR_RETURN(ModelConfig config, LoadModelConfig(env, args.model_dir));
  ASSIGN_OR_RETURN(auto weights, ModelWeights::Load(env, args.model_dir, config));
  ASSIGN_OR_RETURN(auto tokenizer, LoadTokenizer(env, args.model_dir));
  // As `generate`: the tokenizer's post-processor adds BOS where the model expects it.
  EncodeOptions encode;
  encode.add_special_tokens = !args.no_special_tokens;
  ASSIGN_OR_RETURN(std::vector<int32_t> prompt, tokenizer->EncodeWithOptions(args.prompt, encode));
  if (prompt.empty()) return Status::InvalidArgument("--prompt encodes to no tokens");

  const int64_t tokens = static_cast<int64_t>(prompt.size()) + args.max_tokens;
  ASSIGN_OR_RETURN(
      auto reference,
      CreateBackendForDevice(args.against, *weights, OptionsFor(args.against, args, tokens, true)));
  ASSIGN_OR_RETURN(
      auto candidate,
      CreateBackendForDevice(args.device, *weights, OptionsFor(args.device, args, tokens, false)));
  ParityOptions options;
  options.max_new_tokens = args.max_tokens;
  options.chunk_tokens = args.chunk_tokens;
  options.max_rel_logit_error = args.max_rel_error;
  ASSIGN_OR_RETURN(ParityReport r, TeacherForcedParity(*reference, *candidate, prompt, options));

  const std::string ref_name = reference->name(), cand_name = candidate->name();
  if (args.json) {
    std::printf("%s\n", ToJson(args, ref_name, cand_name, r).dump(2).c_str());
  } else {
    std::printf("parity %s: %s against %s, %d prompt tokens, %d teacher-forced steps\n",
                r.pass ? "PASS" : "FAIL", cand_name.c_str(), ref_name.c_str(), r.prompt_tokens,
                r.steps);
    std::printf("  worst max|dlogit|/max|logit| %.4f at step %d (limit %.4f), %d steps over it\n",
                r.worst_rel_logit_error, r.worst_step, args.max_rel_error, r.steps_over_error);
    std::printf("  argmax flips %d, outside tolerance %d\n", r.flips, r.flips_outside_tolerance);
    if (r.first_flip_step >= 0) {
      std::printf(
          "  first flip at step %d: reference margin %.5f, max|dlogit| %.5f (%s)\n"
          "  free-running greedy output of %s first differs from %s at generated token %d\n",
          r.first_flip_step, r.first_flip_margin, r.first_flip_error,
          r.per_step[r.first_flip_step].within_tolerance ? "within tolerance: a near-tie"
                                                         : "outside tolerance: a real mismatch",
          cand_name.c_str(), ref_name.c_str(), r.first_flip_step);
    } else {
      std::printf("  free-running greedy output: identical for all %d tokens\n", r.steps);
    }
  }
  if (!r.pass) SetExitCode(1);
  return Status::OK();
}

}  // namespace

void AddParityCommand(CLI::App& app) {
  auto args = std::make_shared<ParityArgs>();
  CLI::App* cmd = app.add_subcommand(
      "parity", "Teacher-forced logit parity of two backends (e.g. cuda against cpu) on a model");
  cmd->add_option("--model", args->model_dir,
                  "Model: an HF directory (config.json, safetensors, tokenizer.json) or a "
                  ".gguf file")
      ->required();
  cmd->add_option("--prompt", args->prompt, "Prompt text")->required();
  cmd->add_option("--device", args->device, "Candidate backend: cpu or cuda")
      ->capture_default_str()
      ->check(CLI::IsMember({"cpu", "cuda"}));
  cmd->add_option("--against", args->against, "Reference backend: cpu or cuda")
      ->capture_default_str()
      ->check(CLI::IsMember({"cpu", "cuda"}));
  cmd->add_option("--max-tokens", args->max_tokens, "Greedy steps to compare")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  cmd->add_option("--chunk-tokens", args->chunk_tokens, "Prefill chunk size in tokens")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  cmd->add_option("--kv-dtype", args->kv_dtype,
                  "KV element type of the CPU side(s): f32 or bf16 (CUDA is always bf16)")
      ->capture_default_str()
      ->check(CLI::IsMember({"f32", "bf16"}));
  cmd->add_option("--max-rel-error", args->max_rel_error,
                  "Fail a step when max|dlogit| >= this * max|logit| of the reference")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  cmd->add_option("--threads", args->threads, "CPU threads (0: all cores)")->capture_default_str();
  cmd->add_flag("--no-special-tokens", args->no_special_tokens,
                "Do not let the tokenizer's post-processor add BOS");
  cmd->add_flag("--json", args->json, "Print the report (with every step) as JSON");
  cmd->callback([args] {
    Status st = RunParity(*args);
    if (!st.ok()) {
      std::fprintf(stderr, "kvkeep parity: %s\n", st.ToString().c_str());
      SetExitCode(1);
    }
  });
}

}  // namespace kvkeep::tools
