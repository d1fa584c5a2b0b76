#include "engine/backend_parity.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <string>

#include "engine/sampler.h"

namespace kvkeep {
namespace {

int32_t BlocksNeeded(int64_t tokens, int32_t block_size) {
  return static_cast<int32_t>((tokens + block_size - 1) / block_size);
}

// One sequence's step over tokens [start, start + n) of `tokens`, block table 0..blocks-1,
// so slot == position.
ForwardBatch MakeStep(const std::vector<int32_t>& tokens, int32_t start, int32_t n,
                      int32_t blocks) {
  ForwardBatch b;
  b.token_ids.assign(tokens.begin() + start, tokens.begin() + start + n);
  for (int32_t i = start; i < start + n; ++i) {
    b.positions.push_back(i);
    b.slot_mapping.push_back(i);
  }
  b.q_start = {0, n};
  b.kv_len = {start + n};
  b.max_blocks_per_seq = blocks;
  for (int32_t i = 0; i < blocks; ++i) b.block_tables.push_back(i);
  b.logit_rows = {n - 1};
  return b;
}

Status CheckPool(const Backend& backend, const char* role, int64_t tokens) {
  const KvPoolShape& shape = backend.kv_shape();
  if (shape.block_size <= 0) return Status::InvalidArgument(std::string(role) + ": block size 0");
  const int32_t need = BlocksNeeded(tokens, shape.block_size);
  if (shape.num_blocks < need) {
    return Status::InvalidArgument(std::string(role) + " backend " + backend.name() + " has " +
                                   std::to_string(shape.num_blocks) + " KV blocks; parity over " +
                                   std::to_string(tokens) + " tokens needs " +
                                   std::to_string(need));
  }
  return Status::OK();
}

}  // namespace

Result<ParityReport> TeacherForcedParity(Backend& reference, Backend& candidate,
                                         const std::vector<int32_t>& prompt,
                                         const ParityOptions& options) {
  if (prompt.empty()) return Status::InvalidArgument("parity needs a non-empty prompt");
  if (options.max_new_tokens < 1 || options.chunk_tokens < 1) {
    return Status::InvalidArgument("parity needs max_new_tokens >= 1 and chunk_tokens >= 1");
  }
  const int32_t vocab = reference.config().vocab_size;
  if (candidate.config().vocab_size != vocab) {
    return Status::InvalidArgument("vocab sizes differ: " + std::to_string(vocab) + " vs " +
                                   std::to_string(candidate.config().vocab_size));
  }
  // The last reference token is only compared, never fed.
  const int64_t total = static_cast<int64_t>(prompt.size()) + options.max_new_tokens - 1;
  RETURN_IF_ERROR(CheckPool(reference, "reference", total));
  RETURN_IF_ERROR(CheckPool(candidate, "candidate", total));
  const int32_t ref_blocks = BlocksNeeded(total, reference.kv_shape().block_size);
  const int32_t cand_blocks = BlocksNeeded(total, candidate.kv_shape().block_size);

  ParityReport report;
  report.prompt_tokens = static_cast<int32_t>(prompt.size());
  std::vector<int32_t> tokens = prompt;
  std::vector<float> ref_logits, cand_logits;
  auto forward = [&](int32_t start, int32_t n) -> Status {
    RETURN_IF_ERROR(reference.Forward(MakeStep(tokens, start, n, ref_blocks), &ref_logits));
    RETURN_IF_ERROR(candidate.Forward(MakeStep(tokens, start, n, cand_blocks), &cand_logits));
    if (ref_logits.size() != static_cast<size_t>(vocab) ||
        cand_logits.size() != ref_logits.size()) {
      return Status::Internal("a backend returned " + std::to_string(ref_logits.size()) + " / " +
                              std::to_string(cand_logits.size()) + " logits, want " +
                              std::to_string(vocab));
    }
    return Status::OK();
  };

  // Prefill in chunks, as the engine does; only the last chunk's logits are compared.
  const int32_t n_prompt = report.prompt_tokens;
  for (int32_t start = 0; start < n_prompt; start += options.chunk_tokens) {
    RETURN_IF_ERROR(forward(start, std::min(options.chunk_tokens, n_prompt - start)));
  }

  for (int32_t step = 0; step < options.max_new_tokens; ++step) {
    if (step > 0) RETURN_IF_ERROR(forward(static_cast<int32_t>(tokens.size()) - 1, 1));
    ParityStep s;
    const float* r = ref_logits.data();
    const float* c = cand_logits.data();
    bool bad = false;
    for (int32_t v = 0; v < vocab; ++v) {
      const double d = std::fabs(double{r[v]} - double{c[v]});
      if (!std::isfinite(d)) bad = true;  // a NaN or inf logit on either side
      s.max_abs_dlogit = std::max(s.max_abs_dlogit, d);
      s.max_abs_logit = std::max(s.max_abs_logit, std::fabs(double{r[v]}));
    }
    if (bad) s.max_abs_dlogit = std::numeric_limits<double>::infinity();
    const double allowed = options.max_rel_logit_error * s.max_abs_logit;
    const double rel = s.max_abs_logit > 0    ? s.max_abs_dlogit / s.max_abs_logit
                       : s.max_abs_dlogit > 0 ? std::numeric_limits<double>::infinity()
                                              : 0.0;
    const bool over_error = s.max_abs_dlogit > 0 && !(s.max_abs_dlogit < allowed);
    s.reference_token = Sampler::Argmax(r, vocab);
    s.candidate_token = Sampler::Argmax(c, vocab);
    bool flip_ok = true;
    if (s.candidate_token != s.reference_token) {
      s.margin = double{r[s.reference_token]} - double{r[s.candidate_token]};
      flip_ok = s.margin <= 2 * std::min(s.max_abs_dlogit, allowed);
      ++report.flips;
      if (!flip_ok) ++report.flips_outside_tolerance;
      if (report.first_flip_step < 0) {
        report.first_flip_step = step;
        report.first_flip_margin = s.margin;
        report.first_flip_error = s.max_abs_dlogit;
      }
    }
    if (over_error) ++report.steps_over_error;
    s.within_tolerance = flip_ok && !over_error;
    if (report.worst_step < 0 || rel > report.worst_rel_logit_error) {
      report.worst_rel_logit_error = rel;
      report.worst_step = step;
    }
    report.reference_tokens.push_back(s.reference_token);
    report.per_step.push_back(s);
    tokens.push_back(s.reference_token);  // teacher forcing: both continue from the reference
  }
  report.steps = options.max_new_tokens;
  report.pass = report.steps_over_error == 0 && report.flips_outside_tolerance == 0;
  return report;
}

}  // namespace kvkeep
