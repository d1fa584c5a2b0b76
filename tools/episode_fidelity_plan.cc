#include "tools/episode_fidelity_plan.h"

#include <nlohmann/json.hpp>

namespace kvkeep::tools {
namespace {

constexpr const char* kFormat = "kvkeep-fidelity-plan";
constexpr int kVersion = 1;

using Json = nlohmann::ordered_json;

Json ConversationToJson(const FidelityConversation& c) {
  Json questions = Json::array();
  for (const FidelityQuestion& q : c.questions) {
    questions.push_back({{"prompt", q.prompt}, {"answer", q.answer}, {"episode", q.episode}});
  }
  return {{"sample_id", c.sample_id},
          {"history", c.history},
          {"medoid_prompts", c.medoid_prompts},
          {"questions", questions}};
}

// Throws nlohmann::json::exception on a missing key or a wrong type.
FidelityConversation ConversationFromJson(const Json& j) {
  FidelityConversation c;
  c.sample_id = j.at("sample_id").get<std::string>();
  c.history = j.at("history").get<std::vector<int32_t>>();
  c.medoid_prompts = j.at("medoid_prompts").get<std::vector<std::vector<int32_t>>>();
  for (const Json& q : j.at("questions")) {
    FidelityQuestion fq;
    fq.prompt = q.at("prompt").get<std::vector<int32_t>>();
    fq.answer = q.at("answer").get<std::vector<int32_t>>();
    fq.episode = q.at("episode").get<int32_t>();
    c.questions.push_back(std::move(fq));
  }
  return c;
}

}  // namespace

std::string FidelityPlanToJson(const FidelityPlan& plan) {
  Json conversations = Json::array();
  for (const FidelityConversation& c : plan.conversations) {
    conversations.push_back(ConversationToJson(c));
  }
  const Json j = {{"format", kFormat},
                  {"version", kVersion},
                  {"model", plan.model},
                  {"vocab_size", plan.vocab_size},
                  {"embedder", plan.embedder},
                  {"context_tokens", plan.context_tokens},
                  {"reserve_tokens", plan.reserve_tokens},
                  {"max_prompt_tokens", plan.max_prompt_tokens},
                  {"num_episodes", plan.num_episodes},
                  {"conversations", conversations}};
  return j.dump() + "\n";
}

Result<FidelityPlan> FidelityPlanFromJson(std::string_view text) {
  const Json j = Json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded() || !j.is_object()) {
    return Status::InvalidArgument("fidelity plan: not a JSON object");
  }
  if (j.value("format", "") != kFormat || j.value("version", 0) != kVersion) {
    return Status::InvalidArgument(std::string("fidelity plan: not a ") + kFormat + " v" +
                                   std::to_string(kVersion) + " file");
  }
  FidelityPlan plan;
  try {
    plan.model = j.at("model").get<std::string>();
    plan.vocab_size = j.at("vocab_size").get<int32_t>();
    plan.embedder = j.at("embedder").get<std::string>();
    plan.context_tokens = j.at("context_tokens").get<int32_t>();
    plan.reserve_tokens = j.at("reserve_tokens").get<int32_t>();
    plan.max_prompt_tokens = j.at("max_prompt_tokens").get<int32_t>();
    plan.num_episodes = j.at("num_episodes").get<int32_t>();
    for (const Json& c : j.at("conversations")) {
      plan.conversations.push_back(ConversationFromJson(c));
    }
  } catch (const nlohmann::json::exception& e) {
    return Status::InvalidArgument(std::string("fidelity plan: ") + e.what());
  }
  if (plan.vocab_size < 1 || plan.reserve_tokens < 1 ||
      plan.context_tokens <= plan.reserve_tokens || plan.max_prompt_tokens < 1 ||
      plan.conversations.empty()) {
    return Status::InvalidArgument("fidelity plan: sizes out of range or no conversation");
  }
  return plan;
}

}  // namespace kvkeep::tools
