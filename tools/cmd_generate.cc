// kvkeep generate --model DIR --prompt TEXT [...]: loads a model directory, runs the
// engine on the CPU (or CUDA when built with it) and streams the generated text to stdout
// as tokens arrive. Usage (token accounting and timings) goes to stderr at the end.
#include <cstdio>
#include <memory>
#include <string>

#include "base/clock.h"
#include "base/file.h"
#include "daemon/backend_factory.h"
#include "engine/backend.h"
#include "engine/chat_template.h"
#include "engine/default_model.h"
#include "engine/engine.h"
#include "engine/model_config.h"
#include "engine/model_identity.h"
#include "engine/model_weights.h"
#include "engine/tokenizer.h"
#include "tools/commands.h"

namespace kvkeep::tools {
namespace {

struct GenerateArgs {
  std::string model_dir;
  std::string prompt;
  std::string device = "cpu";
  int32_t max_tokens = 64;
  float temperature = 0.0f;
  int32_t top_k = 0;
  float top_p = 1.0f;
  uint64_t seed = 0;
  int32_t chunk_tokens = 256;
  std::string kv_dtype = "f32";
  int32_t threads = 0;
  int32_t kv_blocks = 0;
  bool no_special_tokens = false;
  bool chat = false;
};

Status RunGenerate(GenerateArgs args) {
  Env* env = DefaultEnv();
  // No --model: the installed default model, else the synthetic tiny model.
  ASSIGN_OR_RETURN(args.model_dir,
                   ResolveModelPath(env, args.model_dir, DefaultSyntheticModelDir(env)));
  ASSIGN_OR_RETURN(ModelConfig config, LoadModelConfig(env, args.model_dir));
  ASSIGN_OR_RETURN(auto weights, ModelWeights::Load(env, args.model_dir, config));
  ASSIGN_OR_RETURN(auto tokenizer, LoadTokenizer(env, args.model_dir));
  std::vector<int32_t> prompt;
  std::vector<int32_t> stop_ids;
  if (args.chat) {
    // --prompt is a JSON list of messages; plain text is one user message.
    ASSIGN_OR_RETURN(auto chat_template, LoadChatTemplate(env, args.model_dir));
    auto messages = nlohmann::json::parse(args.prompt, nullptr, /*allow_exceptions=*/false);
    if (!messages.is_array()) messages = {{{"role", "user"}, {"content", args.prompt}}};
    ASSIGN_OR_RETURN(prompt, RenderChatToTokens(*chat_template, *tokenizer, messages));
    if (auto eot = tokenizer->TokenToId(chat_template->end_of_turn())) stop_ids.push_back(*eot);
  } else {
    // As HF's encode(): the tokenizer's post-processor adds BOS where the model expects it.
    EncodeOptions encode;
    encode.add_special_tokens = !args.no_special_tokens;
    ASSIGN_OR_RETURN(prompt, tokenizer->EncodeWithOptions(args.prompt, encode));
  }

  EngineOptions options;
  options.model_id = ModelIdentity(config, *weights);
  options.prefill_chunk_tokens = args.chunk_tokens;
  options.max_batch_tokens = std::max(512, args.chunk_tokens);
  options.backend.num_threads = args.threads;
  if (args.kv_dtype == "f32") {
    options.backend.kv_dtype = KvDType::kF32;
  } else if (args.kv_dtype == "bf16") {
    options.backend.kv_dtype = KvDType::kBF16;
  } else {
    return Status::InvalidArgument("--kv-dtype must be f32 or bf16");
  }
  // Default pool: this one request's context plus a block of slack.
  const int64_t context = static_cast<int64_t>(prompt.size()) + args.max_tokens;
  options.backend.num_kv_blocks =
      args.kv_blocks > 0
          ? args.kv_blocks
          : static_cast<int32_t>(
                (context + options.backend.block_size - 1) / options.backend.block_size + 1);
  ASSIGN_OR_RETURN(auto backend, CreateBackendForDevice(args.device, *weights, options.backend));
  ASSIGN_OR_RETURN(auto engine,
                   Engine::Create(options, std::move(backend), tokenizer.get(), SystemClock()));

  GenerateRequest request;
  request.id = 1;
  request.prompt = std::move(prompt);
  request.sampling = {args.temperature, args.top_k, args.top_p, args.seed};
  request.stop.max_tokens = args.max_tokens;
  request.stop.stop_token_ids = std::move(stop_ids);
  GenerateEvent finished;
  request.on_event = [&finished](const GenerateEvent& ev) {
    if (ev.kind == GenerateEvent::Kind::kToken) {
      std::fwrite(ev.text.data(), 1, ev.text.size(), stdout);
      std::fflush(stdout);
    } else {
      finished = ev;
    }
  };
  RETURN_IF_ERROR(engine->Submit(std::move(request)));
  RETURN_IF_ERROR(engine->RunUntilIdle());
  std::fputc('\n', stdout);
  const Usage& u = finished.usage;
  std::fprintf(stderr,
               "finish=%s prompt_tokens=%lld cached_tokens=%lld recomputed_tokens=%lld "
               "generated_tokens=%lld ttft_ms=%.1f decode_ms=%.1f decode_tok_s=%.1f\n",
               std::string(FinishReasonName(finished.finish_reason)).c_str(),
               static_cast<long long>(u.prompt_tokens), static_cast<long long>(u.cached_tokens),
               static_cast<long long>(u.recomputed_tokens),
               static_cast<long long>(u.generated_tokens), u.ttft_ms, u.decode_ms,
               u.decode_ms > 0 ? (u.generated_tokens - 1) * 1000.0 / u.decode_ms : 0.0);
  return finished.error;
}

}  // namespace

void AddGenerateCommand(CLI::App& app) {
  auto args = std::make_shared<GenerateArgs>();
  CLI::App* cmd = app.add_subcommand("generate", "Generate text from a prompt with a local model");
  cmd->add_option("--model", args->model_dir,
                  "Model: an HF directory (config.json, safetensors, tokenizer.json) or a "
                  ".gguf file (default: the installed SmolLM2 model, else the synthetic tiny "
                  "model)");
  cmd->add_option("--prompt", args->prompt, "Prompt text")->required();
  cmd->add_option("--device", args->device, "cpu or cuda")
      ->capture_default_str()
      ->check(CLI::IsMember({"cpu", "cuda"}));
  cmd->add_option("--max-tokens", args->max_tokens, "Tokens to generate at most")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  cmd->add_option("--temperature", args->temperature, "0: greedy")->capture_default_str();
  cmd->add_option("--top-k", args->top_k, "0: off")->capture_default_str();
  cmd->add_option("--top-p", args->top_p, "1: off")->capture_default_str();
  cmd->add_option("--seed", args->seed, "Sampling seed")->capture_default_str();
  cmd->add_option("--chunk-tokens", args->chunk_tokens, "Prefill chunk size in tokens")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  cmd->add_option("--kv-dtype", args->kv_dtype, "KV cache element type: f32 or bf16")
      ->capture_default_str()
      ->check(CLI::IsMember({"f32", "bf16"}));
  cmd->add_option("--threads", args->threads, "CPU threads (0: all cores)")->capture_default_str();
  cmd->add_option("--kv-blocks", args->kv_blocks, "KV pool size in blocks (0: fit the request)")
      ->capture_default_str();
  cmd->add_flag("--no-special-tokens", args->no_special_tokens,
                "Do not let the tokenizer's post-processor add BOS");
  cmd->add_flag("--chat", args->chat,
                "Render --prompt, a JSON list of {role, content} messages (or plain text as one "
                "user message), with the model's chat template");
  cmd->callback([args] {
    Status st = RunGenerate(*args);
    if (!st.ok()) {
      std::fprintf(stderr, "kvkeep generate: %s\n", st.ToString().c_str());
      SetExitCode(1);
    }
  });
}

}  // namespace kvkeep::tools
