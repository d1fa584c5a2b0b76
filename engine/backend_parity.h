// Teacher-forced parity of two backends on one sequence: how far a candidate backend's
// logits are from a reference backend's (usually the exact CPU backend) on the same model
// and the same tokens. Both backends are fed the reference's greedy tokens, so one early
// near-tie flip does not turn every later step into a comparison of different texts.
//
// Why teacher forcing: a free-running greedy comparison diverges for good at the first
// near-tie (two best logits closer than the candidate's rounding error), after which the
// outputs say nothing about the kernels. The first flip's step is still reported: it is
// exactly where the candidate's own free-running greedy output first differs, since up to
// that step both have seen the same tokens.
//
// Thread-safety: runs on the calling thread; the backends must not be used concurrently.
#pragma once

#include <cstdint>
#include <vector>

#include "base/status.h"
#include "engine/backend.h"

namespace kvkeep {

struct ParityOptions {
  // Greedy steps compared after the prompt (step 0 is the prompt's last-token logits).
  int32_t max_new_tokens = 64;
  // Prefill chunk size in tokens, as EngineOptions::prefill_chunk_tokens.
  int32_t chunk_tokens = 256;
  // A step fails when max|dlogit| >= max_rel_logit_error * max|logit of the reference|.
  double max_rel_logit_error = 0.05;
};

struct ParityStep {
  int32_t reference_token = 0;  // the reference's argmax (fed to both next)
  int32_t candidate_token = 0;  // the candidate's argmax
  double max_abs_dlogit = 0;    // max over the vocab of |ref - cand| (inf if cand is NaN)
  double max_abs_logit = 0;     // max over the vocab of |ref|
  // Flips only: ref[reference_token] - ref[candidate_token] (>= 0).
  double margin = 0;
  bool within_tolerance = true;  // false: over the error bound, or a flip outside tolerance
};

struct ParityReport {
  int32_t prompt_tokens = 0;
  int32_t steps = 0;
  int32_t flips = 0;                    // steps whose argmaxes differ
  int32_t flips_outside_tolerance = 0;  // see TeacherForcedParity
  int32_t steps_over_error = 0;         // max|dlogit| >= max_rel_logit_error * max|logit|
  double worst_rel_logit_error = 0;     // max over steps of max|dlogit| / max|logit|
  int32_t worst_step = -1;
  // The first flip (-1: none). It is also where the candidate's free-running greedy output
  // first differs from the reference's.
  int32_t first_flip_step = -1;
  double first_flip_margin = 0;
  double first_flip_error = 0;            // that step's max|dlogit|
  std::vector<int32_t> reference_tokens;  // the reference's greedy tokens, one per step
  std::vector<ParityStep> per_step;
  bool pass = false;
};

// Prefills `prompt` on both backends in chunks of options.chunk_tokens, then runs
// options.max_new_tokens greedy steps, feeding both the reference's argmax (Sampler::Argmax).
//
// A flip (argmaxes differ) is within tolerance when
//   ref[want] - ref[got] <= 2 * min(max|dlogit|, max_rel_logit_error * max|logit|)
// of that step. The cap matters: a flip always has max|dlogit| >= margin / 2 (one of the two
// logits moved by at least half the margin), so the uncapped rule of cuda_backend_test can
// never fail; with the cap a flip is outside tolerance only when the margin exceeds twice
// the allowed error. pass iff every step is under the error bound and no flip is outside
// tolerance.
//
// Block tables: each backend uses blocks 0..n-1 of its own pool, n = ceil((prompt.size() +
// max_new_tokens - 1) / block_size) with its own kv_shape().block_size; the caller sizes the
// pools (BackendOptions::num_kv_blocks >= n). Existing contents of those blocks are
// overwritten.
//
// InvalidArgument: empty prompt, max_new_tokens or chunk_tokens < 1, differing vocab sizes,
// or a pool smaller than n blocks. Errors of either backend's Forward are returned as they are.
Result<ParityReport> TeacherForcedParity(Backend& reference, Backend& candidate,
                                         const std::vector<int32_t>& prompt,
                                         const ParityOptions& options = {});

}  // namespace kvkeep
