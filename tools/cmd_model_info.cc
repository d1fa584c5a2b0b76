// kvkeep model-info DIR [--json]: the architecture and sizes of a model directory, its
// parameter count from config.json cross-checked against the tensors in the files, and
// its KV cache cost per token.
#include <cstdio>
#include <memory>
#include <string>

#include <nlohmann/json.hpp>

#include "base/file.h"
#include "engine/model_config.h"
#include "engine/model_weights.h"
#include "tools/commands.h"

namespace kvkeep::tools {
namespace {

struct ModelInfoArgs {
  std::string dir;
  bool json = false;
};

nlohmann::ordered_json Describe(const ModelConfig& c, const ModelWeights& w) {
  const TensorView* embed = w.Get("model.embed_tokens.weight");
  nlohmann::ordered_json rope = {{"theta", c.rope.theta}};
  if (c.rope.factor > 0) {
    rope["type"] = "llama3";
    rope["factor"] = c.rope.factor;
    rope["low_freq_factor"] = c.rope.low_freq_factor;
    rope["high_freq_factor"] = c.rope.high_freq_factor;
    rope["original_max_position_embeddings"] = c.rope.original_max_position;
  }
  // Tensors per stored type ("Q4_1": 210 in a GGUF file), in order of first appearance.
  nlohmann::ordered_json stored = nlohmann::ordered_json::object();
  for (const StoredTensorHeader& t : w.stored_tensors()) {
    stored[t.dtype] = stored.value(t.dtype, 0) + 1;
  }
  return {
      {"format", w.format() == WeightsFormat::kGguf ? "gguf" : "safetensors"},
      {"architecture", c.architecture},
      {"model_type", c.model_type},
      {"num_layers", c.num_layers},
      {"num_q_heads", c.num_q_heads},
      {"num_kv_heads", c.num_kv_heads},
      {"head_dim", c.head_dim},
      {"hidden_size", c.hidden_size},
      {"intermediate_size", c.intermediate_size},
      {"vocab_size", c.vocab_size},
      {"max_position_embeddings", c.max_position_embeddings},
      {"rope", rope},
      {"tie_word_embeddings", c.tie_word_embeddings},
      {"attention_bias", c.attention_bias},
      {"qk_norm", c.qk_norm},
      {"sliding_window", c.sliding_window},
      {"torch_dtype", c.torch_dtype},
      {"weights_dtype", embed ? DTypeName(embed->dtype) : "?"},
      {"stored_tensors", stored},
      {"parameters_config", c.NumParameters()},
      {"parameters_in_files", w.NumFileParameters()},
      {"kv_bytes_per_token_bf16", c.KvBytesPerToken(2)},
      {"kv_bytes_per_token_fp32", c.KvBytesPerToken(4)},
      {"eos_token_ids", c.eos_token_ids},
      {"bos_token_id", c.bos_token_id},
  };
}

void PrintText(const std::string& dir, const nlohmann::ordered_json& j) {
  auto i64 = [&](const char* k) { return static_cast<long long>(j[k].get<int64_t>()); };
  std::printf("model:              %s\n", dir.c_str());
  std::printf("architecture:       %s (%s)\n", j["architecture"].get<std::string>().c_str(),
              j["model_type"].get<std::string>().c_str());
  std::printf("layers:             %lld\n", i64("num_layers"));
  std::printf("heads (q / kv):     %lld / %lld, head_dim %lld\n", i64("num_q_heads"),
              i64("num_kv_heads"), i64("head_dim"));
  std::printf("hidden / mlp:       %lld / %lld\n", i64("hidden_size"), i64("intermediate_size"));
  std::printf("vocab:              %lld\n", i64("vocab_size"));
  std::printf("max positions:      %lld\n", i64("max_position_embeddings"));
  std::printf("rope:               %s\n", j["rope"].dump().c_str());
  std::printf("tied embeddings:    %s\n", j["tie_word_embeddings"].get<bool>() ? "yes" : "no");
  std::printf("dtype:              %s (weights %s)\n", j["torch_dtype"].get<std::string>().c_str(),
              j["weights_dtype"].get<std::string>().c_str());
  std::string stored;
  for (const auto& [dtype, n] : j["stored_tensors"].items()) {
    stored += (stored.empty() ? "" : ", ") + dtype + " x" + std::to_string(n.get<int64_t>());
  }
  std::printf("stored:             %s (%s)\n", stored.c_str(),
              j["format"].get<std::string>().c_str());
  const long long from_config = i64("parameters_config");
  const long long in_files = i64("parameters_in_files");
  std::printf("parameters:         %lld (%.3f B)\n", from_config, from_config / 1e9);
  std::printf("  in the files:     %lld%s\n", in_files,
              in_files == from_config ? " (matches)" : " (differs from config: extra tensors)");
  std::printf("KV bytes / token:   %lld (bf16), %lld (fp32)\n", i64("kv_bytes_per_token_bf16"),
              i64("kv_bytes_per_token_fp32"));
  std::printf("EOS ids:            %s\n", j["eos_token_ids"].dump().c_str());
  std::printf("BOS id:             %lld\n", i64("bos_token_id"));
}

int RunModelInfo(const ModelInfoArgs& args) {
  Env* env = DefaultEnv();
  Result<ModelConfig> config = LoadModelConfig(env, args.dir);
  if (!config.ok()) {
    std::fprintf(stderr, "kvkeep model-info: %s\n", config.status().ToString().c_str());
    return 1;
  }
  Result<std::unique_ptr<ModelWeights>> weights = ModelWeights::Load(env, args.dir, *config);
  if (!weights.ok()) {
    std::fprintf(stderr, "kvkeep model-info: %s\n", weights.status().ToString().c_str());
    return 1;
  }
  nlohmann::ordered_json j = Describe(*config, **weights);
  if (args.json) {
    std::printf("%s\n", j.dump(2).c_str());
  } else {
    PrintText(args.dir, j);
  }
  return 0;
}

}  // namespace

void AddModelInfoCommand(CLI::App& app) {
  auto args = std::make_shared<ModelInfoArgs>();
  CLI::App* cmd =
      app.add_subcommand("model-info", "Show a model's architecture, parameter count and KV cost");
  cmd->add_option("dir", args->dir,
                  "Model: an HF directory (config.json + safetensors) or a .gguf file")
      ->required();
  cmd->add_flag("--json", args->json, "Machine-readable output");
  cmd->callback([args] { SetExitCode(RunModelInfo(*args)); });
}

}  // namespace kvkeep::tools
