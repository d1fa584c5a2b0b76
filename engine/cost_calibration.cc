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
  CostModel base = options.base;
  base.source = "calibrated at start-up";
  return FitCostModel(samples, base);
}

Result<TierBandwidths> MeasureTierBandwidths(Backend* backend, Env* env, const Clock* clock,
                                             const TierBandwidthOptions& options) {
  const KvPoolShape& shape = backend->kv_shape();
  const size_t block_bytes = backend->block_bytes();
  const int32_t blocks = std::clamp(options.blocks, 1, std::max(shape.num_blocks, 1));
  TierBandwidths out;
  out.kv_bytes_per_token =
      static_cast<int64_t>(block_bytes) / std::max<int64_t>(shape.block_size, 1);
  out.bytes_timed = static_cast<int64_t>(block_bytes) * blocks;
  std::vector<uint8_t> buf(block_bytes * static_cast<size_t>(blocks));
  std::mt19937_64 rng(0xBA4D);
  for (uint8_t& b : buf) b = static_cast<uint8_t>(rng());
  auto rate = [&](int64_t elapsed_us) {
    return elapsed_us > 0 ? static_cast<double>(out.bytes_timed) * 1e6 / elapsed_us : 0.0;
  };

  int64_t t0 = clock->NowMicros();
  for (int32_t b = 0; b < blocks; ++b) {
    RETURN_IF_ERROR(backend->WriteBlock(b, buf.data() + block_bytes * static_cast<size_t>(b)));
  }
  out.host_to_device_bytes_per_s = rate(clock->NowMicros() - t0);

  if (options.scratch_dir.empty()) return out;
  RETURN_IF_ERROR(env->CreateDirs(options.scratch_dir, 0700));
  const std::string path = JoinPath(options.scratch_dir, "bandwidth_probe.tmp");
  {
    ASSIGN_OR_RETURN(std::unique_ptr<RandomRWFile> file, env->OpenRandomRWFile(path, true));
    RETURN_IF_ERROR(file->WriteAt(0, buf.data(), buf.size()));
  }
  t0 = clock->NowMicros();
  Status read = [&]() -> Status {
    ASSIGN_OR_RETURN(std::unique_ptr<RandomRWFile> file, env->OpenRandomRWFile(path, false));
    for (int32_t b = 0; b < blocks; ++b) {
      const size_t at = block_bytes * static_cast<size_t>(b);
      RETURN_IF_ERROR(file->ReadAt(at, buf.data() + at, block_bytes));
    }
    return Status::OK();
  }();
  const double disk_read = rate(clock->NowMicros() - t0);
  Status removed = env->RemoveFile(path);
  RETURN_IF_ERROR(read);
  RETURN_IF_ERROR(removed);
  if (disk_read > 0 && out.host_to_device_bytes_per_s > 0) {
    out.disk_to_device_bytes_per_s = 1.0 / (1.0 / disk_read + 1.0 / out.host_to_device_bytes_per_s);
  }
  return out;
}

}  // namespace kvkeep
