// kvkeep's side of the llama.cpp anchor (bench/gguf_cpu_bench.sh runs both): the CPU
// backend on a GGUF file, batch 1.
//   prefill: tok/s of one forward over the whole prompt (the prompt as given, e.g. 512
//            tokens), best of --reps;
//   decode:  tok/s of --decode greedy steps after that prompt, one token per forward.
// Writes <out>/kvkeep.json (figures, greedy ids) and <out>/kvkeep.logits.f32 (the logits of
// the prompt's last position and of every decode step, [1 + decode][vocab] fp32) for the
// comparison with llama.cpp.
//
//   gguf_cpu_bench --model FILE --prompt-ids ids.json --threads 2 --decode 64 --out DIR
//                  [--weights quantized|f32] [--reps 3]
#include <spdlog/spdlog.h>
#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <string>
#include <vector>

#include "base/file.h"
#include "engine/backend.h"
#include "engine/default_model.h"
#include "engine/model_config.h"
#include "engine/model_weights.h"
#include "kernels/cpu/quant_matmul.h"

namespace kvkeep {
namespace {

constexpr int32_t kBlockSize = 16;

// One sequence in blocks 0..max_blocks-1: token p lives in slot p; logits for the last.
ForwardBatch MakeBatch(const std::vector<int32_t>& tokens, int32_t first_pos, int32_t max_blocks) {
  ForwardBatch b;
  b.token_ids = tokens;
  const int32_t n = static_cast<int32_t>(tokens.size());
  for (int32_t i = 0; i < n; ++i) {
    b.positions.push_back(first_pos + i);
    b.slot_mapping.push_back(first_pos + i);
  }
  b.logit_rows = {n - 1};
  b.q_start = {0, n};
  b.kv_len = {first_pos + n};
  b.max_blocks_per_seq = max_blocks;
  for (int32_t i = 0; i < max_blocks; ++i) b.block_tables.push_back(i);
  return b;
}

double Seconds(std::chrono::steady_clock::time_point since) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - since).count();
}

int32_t Argmax(const std::vector<float>& v) {
  return static_cast<int32_t>(std::max_element(v.begin(), v.end()) - v.begin());
}

struct Args {
  std::string model, prompt_ids, out, weights = "quantized";
  int32_t threads = 2, decode = 64, reps = 3;
};

Status Run(const Args& args) {
  Env* env = DefaultEnv();
  const std::string path = args.model.empty() ? DefaultModelPath(env) : args.model;
  ASSIGN_OR_RETURN(std::string ids_text, env->ReadFile(args.prompt_ids));
  const auto ids_json = nlohmann::json::parse(ids_text, nullptr, false);
  if (!ids_json.is_array()) return Status::InvalidArgument(args.prompt_ids + ": not a JSON array");
  const auto prompt = ids_json.get<std::vector<int32_t>>();
  if (prompt.empty()) return Status::InvalidArgument("empty prompt");
  ASSIGN_OR_RETURN(ModelConfig config, LoadModelConfig(env, path));
  ASSIGN_OR_RETURN(auto weights, ModelWeights::Load(env, path, config));
  BackendOptions o;
  o.num_threads = args.threads;
  o.block_size = kBlockSize;
  const int32_t total = static_cast<int32_t>(prompt.size()) + args.decode;
  o.num_kv_blocks = (total + kBlockSize - 1) / kBlockSize;
  o.cpu_quantized_weights = args.weights == "quantized";
  ASSIGN_OR_RETURN(auto backend, CreateCpuBackend(*weights, o));
  const int32_t max_blocks = o.num_kv_blocks;

  std::vector<float> logits, all_logits;
  double prefill_s = 1e30;
  for (int32_t r = 0; r < std::max(1, args.reps); ++r) {  // rewrites the same slots each time
    const auto t0 = std::chrono::steady_clock::now();
    RETURN_IF_ERROR(backend->Forward(MakeBatch(prompt, 0, max_blocks), &logits));
    prefill_s = std::min(prefill_s, Seconds(t0));
  }
  all_logits = logits;
  std::vector<int32_t> greedy = {Argmax(logits)};
  const auto t0 = std::chrono::steady_clock::now();
  for (int32_t s = 0; s < args.decode; ++s) {
    const int32_t pos = static_cast<int32_t>(prompt.size()) + s;
    RETURN_IF_ERROR(backend->Forward(MakeBatch({greedy.back()}, pos, max_blocks), &logits));
    all_logits.insert(all_logits.end(), logits.begin(), logits.end());
    greedy.push_back(Argmax(logits));
  }
  const double decode_s = Seconds(t0);
  greedy.pop_back();  // the token after the last step was not fed back
  const nlohmann::json result = {{"engine", "kvkeep"},
                                 {"weights", args.weights},
                                 {"kernels", cpu::QuantIsaName(cpu::DetectQuantIsa())},
                                 {"threads", args.threads},
                                 {"prompt_tokens", prompt.size()},
                                 {"prefill_s", prefill_s},
                                 {"prefill_tok_s", static_cast<double>(prompt.size()) / prefill_s},
                                 {"decode_steps", args.decode},
                                 {"decode_tok_s", args.decode / decode_s},
                                 {"greedy", greedy},
                                 {"vocab", config.vocab_size}};
  std::ofstream(args.out + "/kvkeep.json") << result.dump(2) << "\n";
  std::ofstream bin(args.out + "/kvkeep.logits.f32", std::ios::binary);
  bin.write(reinterpret_cast<const char*>(all_logits.data()),
            static_cast<std::streamsize>(all_logits.size() * sizeof(float)));
  std::printf(
      "kvkeep (%s weights, %d threads): prefill %.1f tok/s (%zu tokens), decode %.1f tok/s\n",
      args.weights.c_str(), args.threads, result["prefill_tok_s"].get<double>(), prompt.size(),
      result["decode_tok_s"].get<double>());
  return Status::OK();
}

}  // namespace
}  // namespace kvkeep

int main(int argc, char** argv) {
  kvkeep::Args args;
  CLI::App app{"kvkeep's CPU figures on a GGUF file (bench/gguf_cpu_bench.sh)"};
  app.add_option("--model", args.model, "GGUF file (default: the installed default model)");
  app.add_option("--prompt-ids", args.prompt_ids, "JSON array of prompt token ids")->required();
  app.add_option("--out", args.out, "output directory")->required();
  app.add_option("--threads", args.threads, "CPU threads");
  app.add_option("--decode", args.decode, "greedy decode steps after the prompt");
  app.add_option("--reps", args.reps, "prefill repetitions (best is reported)");
  app.add_option("--weights", args.weights, "quantized (Q8_0/Q4_1 kernels) or f32")
      ->check(CLI::IsMember({"quantized", "f32"}));
  CLI11_PARSE(app, argc, argv);
  spdlog::set_level(spdlog::level::warn);
  const kvkeep::Status st = kvkeep::Run(args);
  if (!st.ok()) {
    std::fprintf(stderr, "gguf_cpu_bench: %s\n", st.ToString().c_str());
    return 1;
  }
  return 0;
}
