// What `kvkeep replay run --spawn` puts in a spawned kvkeepd's state directory before it
// starts, so every policy's daemon begins from the same learned state:
//   --tool-history TRACE  the trace's recorded tool durations (x time_scale) as tool-latency
//                         samples in the store, keyed as the daemon keys a tool_begin: what
//                         a daemon that had already served those agents would have learned
//                         (the TTL rule's CDFs, fixed-ttl's per-key means);
//   --cost-model FILE     a fitted cost model (policy/cost_model.h) as cost_model.json, the
//                         file a daemon loads at start (docs/policy.md, "The cost model").
//
// Thread-safety: a free function; one call per state directory at a time.
#pragma once

#include <string>

#include "base/status.h"

namespace kvkeep::tools {

struct DaemonStateSeed {
  std::string tool_history_trace;  // empty: none
  double time_scale = 1.0;         // multiplies the recorded durations
  std::string cost_model_file;     // empty: none
};

// Creates state_dir (mode 0700) and writes what `seed` names into it. A bad trace or cost
// model is an error that names the file; nothing is written for it.
Status SeedDaemonState(const DaemonStateSeed& seed, const std::string& state_dir);

}  // namespace kvkeep::tools
