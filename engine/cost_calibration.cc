#include "engine/cost_calibration.h"

#include <algorithm>
#include <random>

namespace kvkeep {
namespace {

// Runs one request to completion and returns its usage.
Result<Usage> RunOne(Engine* engine, RequestId id, std::vector<int32_t> prompt, int32_t max_tokens,
                     uint64_t salt) {
  Usage usage;
  FinishReason reason = FinishReason::kNone;
  GenerateRequest r;
  r.id = id;
  r.cache_salt = salt;
  r.prompt = std::move(prompt);
  r.stop.max_tokens = max_tokens;
  r.stop.use_model_eos = false;
  r.on_event = [&](const GenerateEvent& ev) {
    if (ev.kind == GenerateEvent::Kind::kFinished) {
      usage = ev.usage;
      reason = ev.finish_reason;
    }
  };
  RETURN_IF_ERROR(engine->Submit(std::move(r)));
  RETURN_IF_ERROR(engine->RunUntilIdle());
  if (reason != FinishReason::kLength) return Status::Internal("calibration request did not run");
  return usage;
}

}  // namespace

Result<CostFit> CalibrateCostModel(Engine* engine, int64_t max_context_tokens,
                                   const CalibrationOptions& options) {
  const int32_t vocab = engine->config().vocab_size;
  std::mt19937_64 rng(0xCA11B);
  auto tokens = [&](int64_t n) {
    std::vector<int32_t> t(static_cast<size_t>(n));
    for (int32_t& x : t) x = static_cast<int32_t>(rng() % static_cast<uint64_t>(vocab));
    return t;
  };
  const int64_t largest = std::max<int64_t>(
      16, std::min(options.max_prompt_tokens, max_context_tokens / 2 - options.decode_tokens));
  const uint64_t salt = 0xC0575EEDull;  // no tenant's salt: calibration KV is never shared
  std::vector<TimingSample> samples;
  RequestId id = 1;
  for (int64_t n : {largest / 16, largest / 4, largest}) {
    ASSIGN_OR_RETURN(Usage u, RunOne(engine, id++, tokens(n), 1, salt));
    TimingSample s;
    s.kind = TimingSample::Kind::kPrefill;
    s.new_tokens = n;
    s.seconds = u.ttft_ms / 1000.0;
    s.note = "calibration prefill";
    samples.push_back(s);
  }
  for (int64_t ctx : {largest / 16, largest}) {
    ASSIGN_OR_RETURN(Usage u, RunOne(engine, id++, tokens(ctx), options.decode_tokens, salt));
    TimingSample s;
    s.kind = TimingSample::Kind::kDecode;
    s.context_tokens = ctx + options.decode_tokens / 2;
    s.seconds = u.decode_ms / 1000.0 / std::max(1, options.decode_tokens - 1);
    s.note = "calibration decode";
    samples.push_back(s);
  }
  CostModel base;
  base.source = "calibrated at start-up";
  return FitCostModel(samples, base);
}

}  // namespace kvkeep
