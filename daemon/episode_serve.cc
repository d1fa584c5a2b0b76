#include "daemon/episode_serve.h"

#include <algorithm>
#include <limits>

#include "engine/layer_budget.h"

namespace kvkeep {

EpisodeServeFn MakeEpisodeServeFn(const EpisodeServeOptions& options) {
  return [options](const EpisodeTurn& turn, GenerateRequest* req) -> Result<bool> {
    const int64_t budget = options.budget_tokens > 0 ? options.budget_tokens : turn.budget_tokens;
    if (turn.medoid_tokens.empty() || budget < 1 || turn.history_tokens <= 0 ||
        turn.history_tokens >= static_cast<int64_t>(req->prompt.size())) {
      return false;
    }
    EpisodeServeRequest e;
    e.episode = turn.episode;
    e.version = turn.version;
    e.history_tokens = turn.history_tokens;
    e.query = turn.medoid_tokens;
    e.budget_tokens =
        static_cast<int32_t>(std::min<int64_t>(budget, std::numeric_limits<int32_t>::max()));
    e.block_tokens = options.block_tokens;
    if (options.layer_alpha > 0 && !options.layer_similarity.empty()) {
      ASSIGN_OR_RETURN(e.layer_budget_tokens, LayerBudgets(options.layer_similarity,
                                                           e.budget_tokens, options.layer_alpha));
    }
    req->episode = std::move(e);
    return true;
  };
}

}  // namespace kvkeep
