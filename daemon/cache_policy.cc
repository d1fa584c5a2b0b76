#include "daemon/cache_policy.h"

namespace kvkeep {

const std::vector<CachePolicy>& CachePolicies() {
  static const std::vector<CachePolicy>* policies = new std::vector<CachePolicy>{
      {"lru", "prefix caching; finished requests' full blocks stay cached, evicted LRU",
       [](EngineOptions* o) { o->prefix_caching = true; }},
      {"none", "no KV reuse across requests: every turn re-prefills its whole context",
       [](EngineOptions* o) { o->prefix_caching = false; }},
  };
  return *policies;
}

Result<const CachePolicy*> FindCachePolicy(std::string_view name) {
  std::string known;
  for (const CachePolicy& p : CachePolicies()) {
    if (p.name == name) return &p;
    known += (known.empty() ? "" : ", ") + p.name;
  }
  return Status::NotFound("unknown cache policy '" + std::string(name) + "' (known: " + known +
                          ")");
}

}  // namespace kvkeep
