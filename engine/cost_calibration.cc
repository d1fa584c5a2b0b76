#include "engine/cost_calibration.h"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <functional>
#include <random>

namespace kvkeep {
namespace {

constexpr int64_t kAlignTokens = 16;  // prompt lengths are whole blocks, so prefixes hit

struct Finished {
  Usage usage;
  FinishReason reason = FinishReason::kNone;
};

// Submits the prompts together (prompt i generating max_tokens[i] tokens), runs them to
// completion and returns their usages in order.
Result<std::vector<Usage>> RunBatch(Engine* engine, RequestId* next_id,
                                    const std::vector<std::vector<int32_t>>& prompts,
                                    const std::vector<int32_t>& max_tokens, uint64_t salt) {
  std::vector<Finished> done(prompts.size());
  for (size_t i = 0; i < prompts.size(); ++i) {
    GenerateRequest r;
    r.id = (*next_id)++;
    r.cache_salt = salt;
    r.prompt = prompts[i];
    r.stop.max_tokens = max_tokens[i];
    r.stop.use_model_eos = false;
    r.on_event = [&done, i](const GenerateEvent& ev) {
      if (ev.kind == GenerateEvent::Kind::kFinished) done[i] = {ev.usage, ev.finish_reason};
    };
    RETURN_IF_ERROR(engine->Submit(std::move(r)));
  }
  RETURN_IF_ERROR(engine->RunUntilIdle());
  std::vector<Usage> usages;
  for (const Finished& f : done) {
    if (f.reason != FinishReason::kLength)
      return Status::Internal("calibration request did not run");
    usages.push_back(f.usage);
  }
  return usages;
}
Result<std::vector<Usage>> RunBatch(Engine* engine, RequestId* next_id,
                                    const std::vector<std::vector<int32_t>>& prompts,
                                    int32_t max_tokens, uint64_t salt) {
  return RunBatch(engine, next_id, prompts, std::vector<int32_t>(prompts.size(), max_tokens), salt);
}

// Seconds a batch took on the engine's clock: submission to its last token.
double BatchSeconds(const std::vector<Usage>& usages) {
  double ms = 0;
  for (const Usage& u : usages) ms = std::max(ms, u.ttft_ms + u.decode_ms);
  return ms / 1000.0;
}

using TokenSource = std::function<std::vector<int32_t>(int64_t)>;

std::vector<int32_t> Concat(std::vector<int32_t> head, const std::vector<int32_t>& tail) {
  head.insert(head.end(), tail.begin(), tail.end());
  return head;
}

TimingSample PrefillSample(const Usage& u, const char* note) {
  TimingSample s;
  s.kind = TimingSample::Kind::kPrefill;
  s.new_tokens = u.recomputed_tokens;
  s.cached_tokens = u.cached_tokens;
  s.seconds = u.ttft_ms / 1000.0;
  s.note = note;
  return s;
}

// Prefills over long cached prefixes: `prompt` is prefilled up to each length in
// options.context_prefix_tokens (<= its size) in turn (each a prefill after the previous
// prefix, itself a sample), and after each, prefills of 256 and 1,024 new tokens (fresh
// tails) are timed over it. A longer prefix is skipped once these took more than
// options.max_context_seconds on the engine's clock (a slow device). *longest: the
// longest prefix timed (0: none).
Status SampleContextPrefill(Engine* engine, RequestId* id, const std::vector<int32_t>& prompt,
                            const CalibrationOptions& options, const TokenSource& tokens,
                            uint64_t salt, std::vector<TimingSample>* samples, int64_t* longest) {
  double spent_s = 0;
  *longest = 0;
  for (int64_t c : options.context_prefix_tokens) {
    c = c / kAlignTokens * kAlignTokens;
    if (c < kAlignTokens || c > static_cast<int64_t>(prompt.size())) continue;
    if (spent_s > options.max_context_seconds) {
      spdlog::warn(
          "calibration: prefills over cached prefixes timed only up to {} tokens "
          "(they took {:.1f} s)",
          *longest, spent_s);
      break;
    }
    const std::vector<int32_t> prefix(prompt.begin(), prompt.begin() + c);
    ASSIGN_OR_RETURN(std::vector<Usage> grow, RunBatch(engine, id, {prefix}, 1, salt));
    if (grow[0].recomputed_tokens > 0) {
      samples->push_back(PrefillSample(grow[0], "calibration prefill (prefix grown)"));
    }
    spent_s += BatchSeconds(grow);
    for (int64_t n : {256, 1024}) {
      ASSIGN_OR_RETURN(std::vector<Usage> u,
                       RunBatch(engine, id, {Concat(prefix, tokens(n))}, 1, salt));
      samples->push_back(PrefillSample(u[0], "calibration prefill over a cached prefix"));
      spent_s += BatchSeconds(u);
    }
    *longest = c;
  }
  return Status::OK();
}

// One mixed sample: the decode prompts (cached: their prefixes hit) decode
// options.decode_tokens tokens beside a prefill of `prefix` (cached) plus enough fresh
// tokens that a chunk runs in every one of their steps. Each timed step is `decodes`
// decodes plus one chunk of options.prefill_chunk_tokens.
Status SampleMixedStep(Engine* engine, RequestId* id,
                       const std::vector<std::vector<int32_t>>& decodes,
                       const std::vector<int32_t>& prefix, const CalibrationOptions& options,
                       const TokenSource& tokens, uint64_t salt,
                       std::vector<TimingSample>* samples) {
  const int32_t steps = std::max(1, options.decode_tokens - 1);
  const int64_t chunk = std::max(1, options.prefill_chunk_tokens);
  std::vector<std::vector<int32_t>> prompts = decodes;
  prompts.push_back(Concat(prefix, tokens(chunk * (options.decode_tokens + 3))));
  std::vector<int32_t> max_tokens(decodes.size(), options.decode_tokens);
  max_tokens.push_back(1);
  ASSIGN_OR_RETURN(std::vector<Usage> u, RunBatch(engine, id, prompts, max_tokens, salt));
  double decode_ms = 0, first_ms = u[0].ttft_ms, last_ms = u[0].ttft_ms;
  int64_t context = 0;
  for (size_t i = 0; i < decodes.size(); ++i) {
    decode_ms += u[i].decode_ms / static_cast<double>(decodes.size());
    first_ms = std::min(first_ms, u[i].ttft_ms);
    last_ms = std::max(last_ms, u[i].ttft_ms);
    context += static_cast<int64_t>(decodes[i].size()) + options.decode_tokens / 2;
  }
  const Usage& prefill = u.back();
  const double step_ms = decode_ms / steps;
  // The decodes must start together and the prefill outlast them (a chunk in every step).
  if (last_ms - first_ms > 0.5 * step_ms || prefill.ttft_ms < last_ms + decode_ms) {
    spdlog::warn("calibration: the mixed-step sample did not run as planned: not used");
    return Status::OK();
  }
  TimingSample s;
  s.kind = TimingSample::Kind::kMixedStep;
  s.sequences = static_cast<int64_t>(decodes.size());
  s.context_tokens = context;
  s.new_tokens = chunk;
  s.cached_tokens = prefill.cached_tokens + chunk * (1 + steps / 2);  // mid-sample chunk
  s.seconds = step_ms / 1000.0;
  s.note = "calibration mixed step";
  samples->push_back(s);
  return Status::OK();
}

// Decode samples, in two rounds: prefixes of len/8, then of len tokens, of `batch` random
// prompts. Each round first prefills the prompts to that length (the first alone, a
// prefill sample; the rest together), then batches of 1, batch/4 and batch sequences
// decode after those prefixes. The prefixes hit the prefix cache, so after one short
// prefill step every sequence decodes in the same steps: decode_ms / (decode_tokens - 1)
// is one step of B sequences reading B * (L + decode_tokens / 2) KV tokens on average.
// Each batch first runs 2 untimed decode steps. The second round is skipped when the
// first took more than options.max_decode_seconds on the engine's clock (a slow device).
Status SampleDecode(Engine* engine, RequestId* id, const std::vector<std::vector<int32_t>>& prompts,
                    const CalibrationOptions& options, uint64_t salt,
                    std::vector<TimingSample>* samples) {
  const int32_t batch = static_cast<int32_t>(prompts.size());
  const int64_t len = static_cast<int64_t>(prompts[0].size());
  auto prefixes = [&](int32_t from, int32_t to, int64_t l) {
    std::vector<std::vector<int32_t>> out;
    for (int32_t i = from; i < to; ++i)
      out.emplace_back(prompts[i].begin(), prompts[i].begin() + l);
    return out;
  };
  const int32_t steps = std::max(1, options.decode_tokens - 1);
  std::vector<int32_t> batches = {1, std::max(1, batch / 4), batch};
  batches.erase(std::unique(batches.begin(), batches.end()), batches.end());
  std::vector<int64_t> lens = {std::max(kAlignTokens, len / 8 / kAlignTokens * kAlignTokens), len};
  lens.erase(std::unique(lens.begin(), lens.end()), lens.end());
  double spent_s = 0;
  for (int64_t l : lens) {
    if (l != lens.front() && spent_s > options.max_decode_seconds) {
      spdlog::warn(
          "calibration: decode timed only at prefixes of {} tokens (they took {:.1f} s, over "
          "the {:.0f} s the calibration spends before longer ones)",
          lens.front(), spent_s, options.max_decode_seconds);
      break;
    }
    ASSIGN_OR_RETURN(std::vector<Usage> first, RunBatch(engine, id, prefixes(0, 1, l), 1, salt));
    if (l == len && first[0].recomputed_tokens > 0) {  // a long prefill: the attention term
      samples->push_back(PrefillSample(first[0], "calibration prefill (decode warm-up)"));
    }
    spent_s += BatchSeconds(first);
    if (batch > 1) {
      ASSIGN_OR_RETURN(std::vector<Usage> rest,
                       RunBatch(engine, id, prefixes(1, batch, l), 1, salt));
      spent_s += BatchSeconds(rest);
    }
    for (int32_t b : batches) {
      const std::vector<std::vector<int32_t>> run = prefixes(0, b, l);
      // A short untimed run first pays the one-off costs of a new batch shape (the CUDA
      // backend captures a decode graph per power-of-two batch and block-table width),
      // which a serving engine pays once and then replays.
      ASSIGN_OR_RETURN(std::vector<Usage> warm, RunBatch(engine, id, run, 3, salt));
      ASSIGN_OR_RETURN(std::vector<Usage> u,
                       RunBatch(engine, id, run, options.decode_tokens, salt));
      spent_s += BatchSeconds(warm) + BatchSeconds(u);
      double decode_ms = 0, first_ms = u[0].ttft_ms, last_ms = u[0].ttft_ms;
      for (const Usage& x : u) {
        decode_ms += x.decode_ms / static_cast<double>(u.size());
        first_ms = std::min(first_ms, x.ttft_ms);
        last_ms = std::max(last_ms, x.ttft_ms);
      }
      const double step_ms = decode_ms / steps;
      if (last_ms - first_ms > 0.5 * step_ms) {  // not one batch: some still prefilled
        spdlog::warn(
            "calibration: {} sequences of {} tokens did not decode as one batch (first tokens "
            "{:.1f} ms apart, a step {:.1f} ms; no prefix reuse?): sample not used",
            b, l, last_ms - first_ms, step_ms);
        continue;
      }
      TimingSample s;
      s.kind = TimingSample::Kind::kDecode;
      s.sequences = b;
      s.context_tokens = b * (l + options.decode_tokens / 2);
      s.seconds = step_ms / 1000.0;
      s.note = "calibration decode";
      samples->push_back(s);
    }
  }
  return Status::OK();
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
  // The longest context a sequence may reach: the pool's half, and the model's positions.
  int64_t max_len = max_context_tokens / 2;
  if (engine->config().max_position_embeddings > 0) {
    max_len = std::min<int64_t>(max_len, engine->config().max_position_embeddings);
  }
  max_len -= options.decode_tokens + 1;
  const int64_t largest = std::max<int64_t>(16, std::min(options.max_prompt_tokens, max_len));
  const uint64_t salt = 0xC0575EEDull;  // no tenant's salt: calibration KV is never shared
  std::vector<TimingSample> samples;
  RequestId id = 1;
  // An untimed first prefill pays the one-off costs (kernel loads, library handles) that
  // made the first timed one 10x slow on the H100.
  RETURN_IF_ERROR(RunBatch(engine, &id, {tokens(largest / 4)}, 1, salt).status());
  // Not shorter than L/4: a step of fewer tokens costs a whole weight read (about 260
  // tokens' worth on the 8B H100 fit), which the linear prefill model does not have.
  for (int64_t n : {largest / 4, largest}) {
    ASSIGN_OR_RETURN(std::vector<Usage> u, RunBatch(engine, &id, {tokens(n)}, 1, salt));
    samples.push_back(PrefillSample(u[0], "calibration prefill"));
  }
  // The long prompt the prefixes grow through, leaving room for the largest tail (and for
  // the mixed sample's tail, chunks for every decode step).
  const int64_t tail =
      std::max<int64_t>(1024, int64_t{options.prefill_chunk_tokens} * (options.decode_tokens + 3));
  int64_t longest = 0;
  for (int64_t c : options.context_prefix_tokens) {
    if (c + tail <= max_len) longest = std::max(longest, c);
  }
  const std::vector<int32_t> long_prompt = tokens(longest);
  int64_t mixed_prefix = 0;
  RETURN_IF_ERROR(SampleContextPrefill(engine, &id, long_prompt, options, tokens, salt, &samples,
                                       &mixed_prefix));
  const int64_t budget = std::max<int64_t>(
      kAlignTokens, std::min(options.max_decode_context_tokens, max_context_tokens / 2));
  const int32_t batch = static_cast<int32_t>(
      std::clamp<int64_t>(options.max_decode_batch, 1, std::max<int64_t>(1, budget / 64)));
  const int64_t len = std::max<int64_t>(
      kAlignTokens, std::min(budget / batch, max_len) / kAlignTokens * kAlignTokens);
  std::vector<std::vector<int32_t>> decode_prompts;
  for (int32_t b = 0; b < batch; ++b) decode_prompts.push_back(tokens(len));
  RETURN_IF_ERROR(SampleDecode(engine, &id, decode_prompts, options, salt, &samples));
  // The mixed step: the longest round's prompts decoding beside chunks after the longest
  // prefix timed above (both still cached, unless the pool is small: then recomputed).
  if (mixed_prefix > 0 && mixed_prefix + len * batch + tail <= max_context_tokens) {
    const std::vector<int32_t> prefix(long_prompt.begin(), long_prompt.begin() + mixed_prefix);
    RETURN_IF_ERROR(
        SampleMixedStep(engine, &id, decode_prompts, prefix, options, tokens, salt, &samples));
  }
  CostModel base = options.base;
  base.source = "calibrated at start-up";
  return FitCostModel(samples, base);
}

namespace {

// The host link through the backend's own swaps (cost_calibration.h): allocates the host
// tier of host_blocks slots and times n blocks out, n others in, and both queued
// together, each kSwapRepeats times; the fastest of each counts. The two directions take
// alternate blocks and slots, so no two blocks of a batch are adjacent on either side: a
// backend that merges adjacent blocks into one copy (CUDA's) would otherwise time one
// large copy, about 8% faster on an H100 than the scattered blocks promotions move.
struct SwapTimes {
  int64_t bytes = 0;
  int64_t out_us = 0, in_us = 0, both_us = 0;
};
constexpr int kSwapRepeats = 3;

Result<SwapTimes> TimeHostSwaps(Backend* backend, const Clock* clock, int32_t n,
                                int32_t host_blocks) {
  RETURN_IF_ERROR(backend->AllocateHostTier(host_blocks));
  std::vector<std::pair<int32_t, int32_t>> out, in;  // disjoint blocks and slots
  for (int32_t i = 0; i < n; ++i) {
    out.emplace_back(2 * i, 2 * i);
    in.emplace_back(2 * i + 1, 2 * i + 1);
  }
  auto fastest = [&](bool swap_out, bool swap_in) -> Result<int64_t> {
    int64_t best = 0;
    for (int r = 0; r < kSwapRepeats; ++r) {
      const int64_t t0 = clock->NowMicros();
      TransferFence out_fence, in_fence;
      if (swap_out) {
        ASSIGN_OR_RETURN(out_fence, backend->SwapOut(out));
      }
      if (swap_in) {
        ASSIGN_OR_RETURN(in_fence, backend->SwapIn(in));
      }
      RETURN_IF_ERROR(backend->WaitFence(out_fence));
      RETURN_IF_ERROR(backend->WaitFence(in_fence));
      const int64_t us = clock->NowMicros() - t0;
      if (r == 0 || us < best) best = us;
    }
    return best;
  };
  SwapTimes t;
  t.bytes = static_cast<int64_t>(backend->block_bytes()) * n;
  ASSIGN_OR_RETURN(t.out_us, fastest(true, false));
  ASSIGN_OR_RETURN(t.in_us, fastest(false, true));
  ASSIGN_OR_RETURN(t.both_us, fastest(true, true));
  return t;
}

}  // namespace

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

  // With a host tier, promotions are its swaps: they set the host figure.
  const int32_t swap_blocks =
      std::min({std::max<int32_t>(blocks, static_cast<int32_t>(options.min_swap_bytes /
                                                               std::max<size_t>(block_bytes, 1))),
                shape.num_blocks / 2, options.host_blocks / 2});
  if (options.host_blocks > 0 && swap_blocks >= 1) {
    ASSIGN_OR_RETURN(const SwapTimes swaps,
                     TimeHostSwaps(backend, clock, swap_blocks, options.host_blocks));
    if (swaps.in_us > 0) {
      out.host_to_device_bytes_per_s = static_cast<double>(swaps.bytes) * 1e6 / swaps.in_us;
      out.swap_bytes_timed = swaps.bytes;
    }
    if (swaps.out_us > 0 && swaps.in_us > 0 && swaps.both_us > 0) {
      // A share outside [0.5, 1] is timing noise: the directions at worst take turns.
      out.host_duplex_share = std::clamp(
          static_cast<double>(swaps.out_us + swaps.in_us) / 2.0 / swaps.both_us, 0.5, 1.0);
    }
  }
  if (out.swap_bytes_timed == 0) {  // no swaps timed: WriteBlock from pageable memory
    const int64_t t0 = clock->NowMicros();
    for (int32_t b = 0; b < blocks; ++b) {
      RETURN_IF_ERROR(backend->WriteBlock(b, buf.data() + block_bytes * static_cast<size_t>(b)));
    }
    out.host_to_device_bytes_per_s = rate(clock->NowMicros() - t0);
  }

  if (options.scratch_dir.empty()) return out;
  RETURN_IF_ERROR(env->CreateDirs(options.scratch_dir, 0700));
  const std::string path = JoinPath(options.scratch_dir, "bandwidth_probe.tmp");
  {
    ASSIGN_OR_RETURN(std::unique_ptr<RandomRWFile> file, env->OpenRandomRWFile(path, true));
    RETURN_IF_ERROR(file->WriteAt(0, buf.data(), buf.size()));
  }
  const int64_t t0 = clock->NowMicros();
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
