#include "tools/replay/accounting.h"

#include <algorithm>

namespace kvkeep::replay {
namespace {

int64_t Field(const nlohmann::json& j, const char* key) {
  return j.is_object() && j.contains(key) && j[key].is_number_integer() ? j[key].get<int64_t>() : 0;
}

}  // namespace

TurnTokens AccountTurn(const nlohmann::json& usage, int64_t context_before,
                       int64_t after_previous_reply) {
  TurnTokens t;
  const int64_t recomputed = std::max<int64_t>(0, Field(usage, "recomputed_tokens"));
  if (usage.is_object() && usage.contains("context_tokens") &&
      usage.contains("first_prefill_tokens") && usage.contains("reprefill_tokens")) {
    t.from_engine = true;
    t.context_tokens = Field(usage, "context_tokens");
    t.first_prefill_tokens = Field(usage, "first_prefill_tokens");
    t.reprefill_tokens = Field(usage, "reprefill_tokens");
  } else {
    t.context_tokens = std::max<int64_t>(0, context_before);
    const int64_t appended = std::max<int64_t>(0, context_before - after_previous_reply);
    t.first_prefill_tokens = std::min(recomputed, appended);
    t.reprefill_tokens = recomputed - t.first_prefill_tokens;
  }
  t.cached_tokens = std::clamp<int64_t>(Field(usage, "cached_tokens"), 0, t.context_tokens);
  return t;
}

}  // namespace kvkeep::replay
