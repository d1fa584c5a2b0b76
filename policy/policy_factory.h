// The policy factory: one place that turns a policy name and its knobs into the
// ReclaimPolicy the engine runs (docs/policy.md, "Policies").
//
//   lru        retains sessions, reclaims the least recently used first; no pins.
//   none       no KV reuse across requests.
//   ttl        the tool-aware TTL rule (policy/ttl_policy.h) pins a session on tool_begin;
//              unpinned sessions go by GDSF priority; program-aware admission.
//   ttl-fcfs   ttl's pins with the engine's plain FCFS admission.
//   fixed-ttl  Continuum's released rule (FixedTtl) with program-aware admission.
//
// Thread-safety: the factory is a pure function; the policies it builds are engine-thread
// objects (policy/reclaim_policy.h). Ownership: a policy reads *tool_stats (owned by the
// engine, which outlives it) and never writes it.
#pragma once

#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "base/status.h"
#include "policy/admission_order.h"
#include "policy/cost_model.h"
#include "policy/reclaim_policy.h"
#include "policy/tool_stats.h"
#include "policy/ttl_policy.h"

namespace kvkeep {

struct PolicyOptions {
  std::string name = "lru";     // --policy: lru | none | ttl | ttl-fcfs | fixed-ttl
  TtlOptions ttl;               // max_ttl_s is --max-ttl-s
  FixedTtlOptions fixed_ttl;    // ttl_s is --fixed-ttl-s
  ToolStatsOptions tool_stats;  // prior mean, min samples, ageing window
  AdmissionOptions admission;   // starvation bound (program_aware is the policy's)
  CostModel cost_model;         // prices a hit; DefaultCostModel() unless calibrated
  // The turn boundary (ttl, ttl-fcfs, fixed-ttl; docs/policy.md, "The turn boundary"):
  // a turn that ends in a session that has called tools is pinned for this long, or until
  // its tool_begin replaces the pin (0: no grace pin).
  double turn_end_grace_s = 0.5;
};

// Every policy name, in the order the docs list them.
const std::vector<std::string_view>& PolicyNames();
// OK for a known name; InvalidArgument listing the names otherwise.
Status ValidatePolicyName(std::string_view name);
// Whether the named policy keeps KV across requests at all (false only for "none").
bool PolicyReusesKv(std::string_view name);

// The cost model used until a calibration replaces it: the 8B-shape H100 fit of
// bench/data/h100_8b_timings.json (docs/policy.md, "The cost model").
CostModel DefaultCostModel();

// Builds options.name. REQUIRES: tool_stats != nullptr and outlives the policy.
Result<std::unique_ptr<ReclaimPolicy>> NewReclaimPolicy(const PolicyOptions& options,
                                                        const ToolLatencyStats* tool_stats);

}  // namespace kvkeep
