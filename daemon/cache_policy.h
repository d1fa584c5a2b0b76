// Cache-policy registry: `--policy NAME` picks how the engine keeps KV between turns.
// A policy configures EngineOptions before the engine is created; later policies (the
// tool-aware TTL) register here too, with their run-time knobs.
//
//   lru   prefix caching on: finished requests' full blocks stay cached, evicted LRU.
//   none  prefix caching off: every turn re-prefills its whole context (the baseline).
//
// Thread-safety: the registry is immutable after static initialisation.
#pragma once

#include <functional>
#include <string>
#include <string_view>
#include <vector>

#include "base/status.h"
#include "engine/engine.h"

namespace kvkeep {

struct CachePolicy {
  std::string name;
  std::string description;
  std::function<void(EngineOptions*)> configure;
};

// The registered policies, in registration order.
const std::vector<CachePolicy>& CachePolicies();
// NotFound (listing the known names) for an unknown name.
Result<const CachePolicy*> FindCachePolicy(std::string_view name);

}  // namespace kvkeep
