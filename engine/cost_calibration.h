// Cost-model calibration: times a few prefills and decode steps of this engine and model
// and fits the TTL policy's CostModel to them (policy/cost_model.h, docs/policy.md "The
// cost model"). Run once at start-up on request (kvkeepd --calibrate-cost-model), before
// the engine thread starts; the daemon saves the fit in the state directory.
//
// Thread-safety: drives the engine with RunUntilIdle, so the engine must not be started.
#pragma once

#include <cstdint>

#include "base/status.h"
#include "engine/engine.h"
#include "policy/cost_model.h"

namespace kvkeep {

struct CalibrationOptions {
  int64_t max_prompt_tokens = 1024;  // largest prefill timed (clamped to the pool / model)
  int32_t decode_tokens = 17;        // tokens per decode sample (16 timed steps)
};

// REQUIRES: engine not started; its pool empty enough for one max_prompt_tokens request.
// The calibration prompts stay in the prefix cache under a salt no tenant uses.
Result<CostFit> CalibrateCostModel(Engine* engine, int64_t max_context_tokens,
                                   const CalibrationOptions& options = {});

}  // namespace kvkeep
