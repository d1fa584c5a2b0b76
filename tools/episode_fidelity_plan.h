// A FidelityPlan (tools/episode_fidelity.h) as a JSON file, so the routing pass (which
// needs the sentence model) and the scoring pass (which needs the LLM, on a GPU) can run
// on different machines:
//   {"format": "kvkeep-fidelity-plan", "version": 1, "model", "vocab_size", "embedder",
//    "context_tokens", "reserve_tokens", "max_prompt_tokens", "num_episodes",
//    "conversations": [{"sample_id", "history": [ids], "medoid_prompts": [[ids]],
//                       "questions": [{"prompt": [ids], "answer": [ids], "episode"}]}]}
// Token ids are the model's; EvaluateFidelity checks them against the backend.
//
// Thread-safety: free functions, no shared state.
#pragma once

#include <string>
#include <string_view>

#include "base/status.h"
#include "tools/episode_fidelity.h"

namespace kvkeep::tools {

std::string FidelityPlanToJson(const FidelityPlan& plan);

// InvalidArgument (with what is wrong) for text that is not such a plan.
Result<FidelityPlan> FidelityPlanFromJson(std::string_view text);

}  // namespace kvkeep::tools
