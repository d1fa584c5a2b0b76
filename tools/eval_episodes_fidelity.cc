#include "tools/eval_episodes_fidelity.h"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <memory>
#include <set>

#include <nlohmann/json.hpp>

#include "daemon/backend_factory.h"
#include "engine/default_model.h"
#include "engine/embedder_factory.h"
#include "engine/layer_budget.h"
#include "engine/model_config.h"
#include "engine/model_identity.h"
#include "engine/model_weights.h"
#include "engine/tokenizer.h"
#include "tools/episode_fidelity_plan.h"

namespace kvkeep::tools {
namespace {

using Json = nlohmann::ordered_json;

Json MethodsJson(const std::vector<MethodFidelity>& methods) {
  Json out = Json::array();
  for (const MethodFidelity& m : methods) {
    out.push_back({{"method", m.method},
                   {"fraction", m.fraction},
                   {"mean_nll", m.mean_nll},
                   {"gap_closed", m.gap_closed},
                   {"kv_bytes", m.kv_bytes},
                   {"build_s", m.build_s},
                   {"score_s", m.score_s},
                   {"caches", m.num_caches},
                   {"kept_recent", m.kept_recent},
                   {"kept_sinks", m.kept_sinks},
                   {"wins_recent", m.wins_recent},
                   {"wins_snapkv", m.wins_snapkv}});
  }
  return out;
}

Json ReportJson(const FidelityReport& r, const std::string& model, const std::string& device,
                const FidelityPlan& plan, int32_t block_tokens) {
  Json per = Json::array();
  for (const ConversationFidelity& c : r.per_conversation) {
    per.push_back({{"sample_id", c.sample_id},
                   {"questions", c.questions},
                   {"answer_tokens", c.answer_tokens},
                   {"history_tokens", c.history_tokens},
                   {"forwarded_tokens", c.forwarded_tokens},
                   {"elapsed_s", c.elapsed_s},
                   {"methods", MethodsJson(c.methods)}});
  }
  return {{"model", model},
          {"device", device},
          {"embedder", plan.embedder},
          {"context_tokens", plan.context_tokens},
          {"block_tokens", block_tokens},
          {"conversations", r.conversations},
          {"conversations_left", r.conversations_left},
          {"complete", r.conversations_left == 0},
          {"questions", r.questions},
          {"answer_tokens", r.answer_tokens},
          {"history_tokens", r.history_tokens},
          {"forwarded_tokens", r.forwarded_tokens},
          {"elapsed_s", r.elapsed_s},
          {"tokens_per_s", r.forwarded_tokens / std::max(r.elapsed_s, 1e-9)},
          {"methods", MethodsJson(r.methods)},
          {"per_conversation", per}};
}

// The plan: read from args.plan, or prepared from the data (embedding and routing on the
// CPU); either way cut to args.conversations and --max-questions.
Result<FidelityPlan> LoadOrPreparePlan(Env* env, const FidelityCommandArgs& args,
                                       const std::string& model, const ModelConfig& config,
                                       const Tokenizer& tokenizer,
                                       const std::vector<LocomoConversation>& data) {
  const std::set<std::string> wanted(args.conversations.begin(), args.conversations.end());
  auto selected = [&](const std::string& id) { return wanted.empty() || wanted.count(id) > 0; };
  FidelityPlan plan;
  if (!args.plan.empty()) {
    ASSIGN_OR_RETURN(std::string text, env->ReadFile(args.plan));
    auto parsed = FidelityPlanFromJson(text);
    if (!parsed.ok()) return parsed.status().WithContext(args.plan);
    plan = std::move(parsed).value();
    if (std::filesystem::path(plan.model).filename() != std::filesystem::path(model).filename()) {
      spdlog::warn("fidelity: the plan was made with {}, scoring with {}", plan.model, model);
    }
    std::erase_if(plan.conversations, [&](const auto& c) { return !selected(c.sample_id); });
    const int32_t cap = args.options.max_questions;
    for (FidelityConversation& c : plan.conversations) {
      if (cap > 0 && c.questions.size() > size_t(cap)) c.questions.resize(cap);
    }
  } else {
    std::vector<LocomoConversation> convs;
    for (const LocomoConversation& c : data) {
      if (selected(c.sample_id)) convs.push_back(c);
    }
    EmbedderSpec spec;
    spec.name = args.embedder;
    spec.model_dir = args.model_dir;
    std::string embedder_name;
    auto make = [&]() { return MakeEmbedder(env, spec, &embedder_name); };
    ASSIGN_OR_RETURN(plan,
                     PrepareFidelity(convs, tokenizer, config.vocab_size, make, args.options));
    plan.model = model;
    plan.embedder = embedder_name;
  }
  for (const std::string& id : wanted) {
    if (std::none_of(plan.conversations.begin(), plan.conversations.end(),
                     [&](const auto& c) { return c.sample_id == id; })) {
      return Status::NotFound("fidelity: no conversation '" + id + "' with questions to score");
    }
  }
  if (plan.conversations.empty()) return Status::NotFound("fidelity: no conversation to score");
  return plan;
}

// The model's layer profile for --layer-alpha, cached in the state directory.
Result<std::vector<double>> LayerSimilarity(Env* env, const FidelityCommandArgs& args,
                                            const ModelConfig& config, const ModelWeights& weights,
                                            const Tokenizer& tokenizer, Backend* backend) {
  std::string state = args.state_dir;
  if (state.empty()) {
    const std::string xdg = env->GetEnvVar("XDG_STATE_HOME");
    state =
        JoinPath(xdg.empty() ? JoinPath(env->GetEnvVar("HOME"), ".local/state") : xdg, "kvkeep");
  }
  ASSIGN_OR_RETURN(LayerProfile profile,
                   LoadOrMeasureLayerProfileOfFile(
                       env, state, ModelIdentity(config, weights), backend, tokenizer,
                       args.calibration, args.calibration_tokens, args.options.block_tokens));
  return profile.similarity;
}

void PrintTable(const FidelityReport& r, const std::string& model, const std::string& device,
                const std::string& embedder) {
  std::printf(
      "model %s on %s, embedder %s: %d conversation(s) (%d not run), %d questions, %lld answer "
      "tokens, %lld history tokens, %lld tokens forwarded in %.1f s (%.0f tokens/s)\n",
      model.c_str(), device.c_str(), embedder.c_str(), r.conversations, r.conversations_left,
      r.questions, static_cast<long long>(r.answer_tokens),
      static_cast<long long>(r.history_tokens), static_cast<long long>(r.forwarded_tokens),
      r.elapsed_s, r.forwarded_tokens / std::max(r.elapsed_s, 1e-9));
  std::printf("%-17s %8s %9s %8s %12s %9s %9s %7s %7s %5s\n", "method", "budget", "nll/token",
              "gap", "kv_bytes", "build_s", "score_s", "recent", "sinks", "wins");
  for (const MethodFidelity& m : r.methods) {
    std::printf("%-17s %8.3f %9.4f %8.3f %12lld %9.1f %9.1f %7.3f %7.3f %2d/%-2d\n",
                m.method.c_str(), m.fraction, m.mean_nll, m.gap_closed,
                static_cast<long long>(m.kv_bytes), m.build_s, m.score_s, m.kept_recent,
                m.kept_sinks, m.wins_recent, r.conversations);
  }
}

}  // namespace

Status RunFidelityCommand(Env* env, const FidelityCommandArgs& args,
                          const std::vector<LocomoConversation>& conversations) {
  const auto start = std::chrono::steady_clock::now();
  ASSIGN_OR_RETURN(std::string model,
                   ResolveModelPath(env, args.llm, DefaultSyntheticModelDir(env)));
  ASSIGN_OR_RETURN(ModelConfig config, LoadModelConfig(env, model));
  ASSIGN_OR_RETURN(auto tokenizer, LoadTokenizer(env, model));
  ASSIGN_OR_RETURN(FidelityPlan plan,
                   LoadOrPreparePlan(env, args, model, config, *tokenizer, conversations));
  if (!args.plan_out.empty()) {
    RETURN_IF_ERROR(env->WriteFileAtomic(args.plan_out, FidelityPlanToJson(plan)));
    int64_t tokens = 0, questions = 0;
    for (const FidelityConversation& c : plan.conversations) {
      tokens += static_cast<int64_t>(c.history.size());
      questions += static_cast<int64_t>(c.questions.size());
    }
    spdlog::info("fidelity: plan of {} conversation(s), {} history tokens, {} questions in {}",
                 plan.conversations.size(), tokens, questions, args.plan_out);
    return Status::OK();
  }
  FidelityOptions options = args.options;
  options.context_tokens = plan.context_tokens;
  options.reserve_tokens = plan.reserve_tokens;
  options.max_prompt_tokens = plan.max_prompt_tokens;

  ASSIGN_OR_RETURN(auto weights, ModelWeights::Load(env, model, config));
  BackendOptions backend_options;
  backend_options.num_kv_blocks = FidelityPoolBlocks(options, backend_options.block_size);
  ASSIGN_OR_RETURN(auto backend, CreateBackendForDevice(args.device, *weights, backend_options));
  spdlog::info("fidelity: {} on {}, {} conversation(s), ready after {:.1f} s", model,
               backend->name(), plan.conversations.size(),
               std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
  if (options.layer_alpha > 0) {
    ASSIGN_OR_RETURN(options.layer_similarity,
                     LayerSimilarity(env, args, config, *weights, *tokenizer, backend.get()));
  }
  const std::string device = backend->name();
  FidelityHooks hooks;
  double slowest_s = 0;  // the longest conversation so far: the next may take as long
  if (args.deadline_s > 0) {
    hooks.should_stop = [&] {
      const double elapsed =
          std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
      return elapsed + slowest_s > args.deadline_s;
    };
  }
  Status write_status = Status::OK();
  hooks.on_conversation = [&](const FidelityReport& r) {
    slowest_s = std::max(slowest_s, r.per_conversation.back().elapsed_s);
    if (args.out.empty()) return;
    Status st = env->WriteFileAtomic(
        args.out, ReportJson(r, model, device, plan, options.block_tokens).dump(2) + "\n");
    if (!st.ok() && write_status.ok()) write_status = st.WithContext(args.out);
  };
  ASSIGN_OR_RETURN(FidelityReport r, EvaluateFidelity(plan, backend.get(), options, hooks));
  RETURN_IF_ERROR(write_status);
  if (args.json) {
    std::printf("%s\n", ReportJson(r, model, device, plan, options.block_tokens).dump().c_str());
  } else {
    PrintTable(r, model, device, plan.embedder);
  }
  return Status::OK();
}

}  // namespace kvkeep::tools
