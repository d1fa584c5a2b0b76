#include "policy/cost_model.h"

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdio>
#include <limits>
#include <map>

namespace kvkeep {
namespace {

constexpr int kMaxParams = 3;
using Row = std::array<double, kMaxParams>;

// Solves a * c = b over the coefficients in `idx` (Gaussian elimination with partial
// pivoting on the matrix scaled to unit diagonal). Returns the index of a coefficient the
// samples cannot separate from the others, or -1.
int SolveActive(double a[kMaxParams][kMaxParams], const double b[kMaxParams],
                const std::vector<int>& idx, Row* c) {
  const size_t k = idx.size();
  double m[kMaxParams][kMaxParams + 1] = {};
  double scale[kMaxParams] = {};
  for (size_t r = 0; r < k; ++r) scale[r] = std::sqrt(a[idx[r]][idx[r]]);
  for (size_t r = 0; r < k; ++r) {
    for (size_t q = 0; q < k; ++q) m[r][q] = a[idx[r]][idx[q]] / (scale[r] * scale[q]);
    m[r][k] = b[idx[r]] / scale[r];
  }
  for (size_t p = 0; p < k; ++p) {
    size_t best = p;
    for (size_t r = p + 1; r < k; ++r) {
      if (std::abs(m[r][p]) > std::abs(m[best][p])) best = r;
    }
    // Unit diagonal: a pivot this small means two columns are (nearly) proportional.
    if (std::abs(m[best][p]) < 1e-10) return idx[p];
    for (size_t q = 0; q <= k; ++q) std::swap(m[p][q], m[best][q]);
    for (size_t r = 0; r < k; ++r) {
      if (r == p) continue;
      const double f = m[r][p] / m[p][p];
      for (size_t q = p; q <= k; ++q) m[r][q] -= f * m[p][q];
    }
  }
  *c = Row{};
  for (size_t r = 0; r < k; ++r) (*c)[idx[r]] = m[r][k] / m[r][r] / scale[r];
  return -1;
}

// Least squares on rows scaled by 1/measured (relative error), with coefficients held
// non-negative by fixing negative ones at zero and refitting the rest. Only the first
// `num_params` columns of each row are fitted; the rest stay 0.
Result<Row> SolveNonNegative(const std::vector<Row>& x, const std::vector<double>& y,
                             const std::array<const char*, kMaxParams>& names, int num_params) {
  std::array<bool, kMaxParams> active{};
  for (int i = 0; i < num_params; ++i) active[i] = true;
  double a[kMaxParams][kMaxParams] = {};
  double b[kMaxParams] = {};
  for (size_t r = 0; r < x.size(); ++r) {
    const double w = 1.0 / (y[r] * y[r]);
    for (int i = 0; i < num_params; ++i) {
      b[i] += w * x[r][i] * y[r];
      for (int j = 0; j < num_params; ++j) a[i][j] += w * x[r][i] * x[r][j];
    }
  }
  for (int i = 0; i < num_params; ++i) {
    if (a[i][i] <= 0) {
      return Status::InvalidArgument(std::string("cost model: no sample constrains ") + names[i]);
    }
  }
  for (int round = 0; round < num_params; ++round) {
    std::vector<int> idx;
    for (int i = 0; i < num_params; ++i) {
      if (active[i]) idx.push_back(i);
    }
    Row c{};
    const int stuck = SolveActive(a, b, idx, &c);
    if (stuck >= 0) {
      std::string others;
      for (int i : idx) {
        if (i != stuck) others += std::string(others.empty() ? "" : " and ") + names[i];
      }
      return Status::InvalidArgument(std::string("cost model: the samples cannot separate ") +
                                     names[stuck] + " from " + others);
    }
    int most_negative = -1;
    for (int i : idx) {
      if (c[i] < 0 && (most_negative < 0 || c[i] < c[most_negative])) most_negative = i;
    }
    if (most_negative < 0) return c;
    active[most_negative] = false;
  }
  return Row{};
}

// step_s (cost_model.h) with the prefill runs summed: their tokens and attention pairs.
double StepSecondsOf(const CostModel& m, int64_t decode_sequences, int64_t decode_context_tokens,
                     int64_t prefill_tokens, double attention_pairs, bool has_prefill) {
  const int64_t sequences = std::max<int64_t>(decode_sequences, 0);
  const int64_t tokens = sequences + std::max<int64_t>(prefill_tokens, 0);
  const double per_context =
      m.decode_per_context_token_s + (has_prefill ? m.mixed_decode_extra_per_context_token_s : 0.0);
  return m.prefill_attention_s * attention_pairs +
         per_context * static_cast<double>(std::max<int64_t>(decode_context_tokens, 0)) +
         m.decode_per_sequence_s * static_cast<double>(sequences) +
         std::max(m.decode_fixed_s, m.prefill_per_token_s * static_cast<double>(tokens));
}

double Predict(const CostModel& m, const TimingSample& s) {
  const int64_t seqs = std::max<int64_t>(s.sequences, 1);
  switch (s.kind) {
    case TimingSample::Kind::kPrefill:
      return m.PrefillSeconds(s.new_tokens, s.cached_tokens);
    case TimingSample::Kind::kPrefillAttention:  // a kernel benchmark: one pass
      return m.PrefillRunAttentionSeconds(s.new_tokens, s.cached_tokens);
    case TimingSample::Kind::kDecode:
      return m.DecodeStepSeconds(s.context_tokens, seqs);
    case TimingSample::Kind::kDecodeAttention:
      return m.decode_per_context_token_s * static_cast<double>(s.context_tokens);
    case TimingSample::Kind::kMixedStep:
      return m.StepSeconds(seqs, s.context_tokens, {{s.new_tokens, s.cached_tokens}});
    case TimingSample::Kind::kStep:
      return StepSecondsOf(m, s.sequences, s.context_tokens, s.new_tokens, s.attention_pairs,
                           s.new_tokens > 0);
  }
  return 0;
}

// A decode-only kStep fits as a decode sample, a prefill-only one as a prefill sample, a
// step with both as a mixed one (TimingSample's comment).
bool IsDecodeStep(const TimingSample& s) {
  return s.kind == TimingSample::Kind::kStep && s.new_tokens == 0 && s.sequences > 0;
}
bool IsPrefillStep(const TimingSample& s) {
  return s.kind == TimingSample::Kind::kStep && s.sequences == 0 &&
         s.new_tokens >= kMinFittedPrefillStepTokens;
}
bool IsMixedStep(const TimingSample& s) {
  return s.kind == TimingSample::Kind::kMixedStep ||
         (s.kind == TimingSample::Kind::kStep && s.new_tokens > 0 && s.sequences > 0);
}

// The mixed steps' extra per decode context token: least squares (relative error) on what
// the rest of the model leaves of each kMixedStep sample, held >= 0. 0 without such samples.
double FitMixedExtra(const std::vector<TimingSample>& samples, CostModel m) {
  m.mixed_decode_extra_per_context_token_s = 0;
  double xy = 0, xx = 0;
  for (const TimingSample& s : samples) {
    if (!IsMixedStep(s)) continue;
    const double w = 1.0 / (s.seconds * s.seconds);
    const double x = static_cast<double>(s.context_tokens);
    xy += w * x * (s.seconds - Predict(m, s));
    xx += w * x * x;
  }
  return xx > 0 ? std::max(0.0, xy / xx) : 0.0;
}

}  // namespace

double AttentionPairs(int64_t new_tokens, int64_t cached_tokens) {
  const double n = static_cast<double>(std::max<int64_t>(new_tokens, 0));
  return n * (static_cast<double>(std::max<int64_t>(cached_tokens, 0)) + n / 2);
}

const char* RebuildSourceName(RebuildSource s) {
  switch (s) {
    case RebuildSource::kHost:
      return "host";
    case RebuildSource::kDisk:
      return "disk";
    case RebuildSource::kPrefill:
      return "prefill";
  }
  return "?";
}

const char* TimingSampleKindName(TimingSample::Kind k) {
  switch (k) {
    case TimingSample::Kind::kPrefill:
      return "prefill";
    case TimingSample::Kind::kPrefillAttention:
      return "prefill_attention";
    case TimingSample::Kind::kDecode:
      return "decode";
    case TimingSample::Kind::kDecodeAttention:
      return "decode_attention";
    case TimingSample::Kind::kMixedStep:
      return "mixed";
    case TimingSample::Kind::kStep:
      return "step";
  }
  return "?";
}

double CostModel::PrefillSeconds(int64_t new_tokens, int64_t cached_tokens) const {
  return prefill_per_token_s * static_cast<double>(std::max<int64_t>(new_tokens, 0)) +
         PrefillRunAttentionSeconds(new_tokens, cached_tokens);
}

double CostModel::PrefillRunAttentionSeconds(int64_t new_tokens, int64_t cached_tokens) const {
  return prefill_attention_s * AttentionPairs(new_tokens, cached_tokens);
}

double CostModel::StepSeconds(int64_t decode_sequences, int64_t decode_context_tokens,
                              const std::vector<PrefillRun>& prefills) const {
  int64_t prefill_tokens = 0;
  double pairs = 0;
  for (const PrefillRun& r : prefills) {
    prefill_tokens += std::max<int64_t>(r.new_tokens, 0);
    pairs += AttentionPairs(r.new_tokens, r.cached_tokens);
  }
  // A run of 0 tokens still makes the step a mixed one, as it always has.
  return StepSecondsOf(*this, decode_sequences, decode_context_tokens, prefill_tokens, pairs,
                       !prefills.empty());
}

double CostModel::DecodeStepSeconds(int64_t context_tokens, int64_t sequences) const {
  return decode_fixed_s +
         decode_per_context_token_s * static_cast<double>(std::max<int64_t>(context_tokens, 0)) +
         decode_per_sequence_s * static_cast<double>(std::max<int64_t>(sequences, 0));
}

double CostModel::RebuildSeconds(RebuildSource from, int64_t tokens) const {
  const double bytes =
      static_cast<double>(std::max<int64_t>(tokens, 0)) * static_cast<double>(kv_bytes_per_token);
  switch (from) {
    case RebuildSource::kHost:
      return host_to_device_bytes_per_s > 0 ? bytes / host_to_device_bytes_per_s
                                            : std::numeric_limits<double>::infinity();
    case RebuildSource::kDisk:
      return disk_to_device_bytes_per_s > 0 ? bytes / disk_to_device_bytes_per_s
                                            : std::numeric_limits<double>::infinity();
    case RebuildSource::kPrefill:
      return PrefillSeconds(tokens, 0);
  }
  return 0;
}

namespace {

// A logged step measured at under 1/kBilledToNextStepRatio of its fitted price is left out
// of the fit (FitCostModel says why), re-decided over at most kMaxTrimRounds refits.
constexpr double kBilledToNextStepRatio = 3;
constexpr int kMaxTrimRounds = 4;

// One least-squares pass over `samples`: the prices only (no rows).
Result<CostModel> FitPrices(const std::vector<TimingSample>& samples, const CostModel& base) {
  std::vector<Row> px, dx;
  std::vector<double> py, dy;
  std::vector<int64_t> batch_sizes;                // of whole-step decode samples
  std::vector<const TimingSample*> step_prefills;  // kStep without decodes
  for (const TimingSample& s : samples) {
    const double n = static_cast<double>(s.new_tokens);
    const double attn = AttentionPairs(s.new_tokens, s.cached_tokens);
    const double ctx = static_cast<double>(s.context_tokens);
    switch (s.kind) {
      case TimingSample::Kind::kPrefill:
        px.push_back({n, attn, 0});
        py.push_back(s.seconds);
        break;
      case TimingSample::Kind::kPrefillAttention:
        px.push_back({0, attn, 0});
        py.push_back(s.seconds);
        break;
      case TimingSample::Kind::kMixedStep:  // fitted last, on what the other terms leave
        break;
      case TimingSample::Kind::kStep:
        if (IsDecodeStep(s)) {
          dx.push_back({1, ctx, static_cast<double>(s.sequences)});
          dy.push_back(s.seconds);
          batch_sizes.push_back(s.sequences);
        } else if (s.sequences == 0) {
          step_prefills.push_back(&s);  // added below: which ones depends on the fit
        }
        break;
      case TimingSample::Kind::kDecode: {
        const int64_t seqs = std::max<int64_t>(s.sequences, 1);
        dx.push_back({1, ctx, static_cast<double>(seqs)});
        dy.push_back(s.seconds);
        batch_sizes.push_back(seqs);
        break;
      }
      case TimingSample::Kind::kDecodeAttention:
        dx.push_back({0, ctx, 0});
        dy.push_back(s.seconds);
        break;
    }
  }
  CostModel model = base;
  // A logged prefill step is priced by its tokens only past decode_fixed_s (step_s's max).
  // First the steps of at least kMinFittedPrefillStepTokens; then, once decode_fixed_s is
  // known too, every step whose tokens price it past decode_fixed_s.
  const size_t num_prefill_samples = px.size();
  auto add_prefill_steps = [&](double per_token_s, double fixed_s) {
    px.resize(num_prefill_samples);
    py.resize(num_prefill_samples);
    for (const TimingSample* s : step_prefills) {
      const bool priced_by_tokens =
          fixed_s < 0 ? IsPrefillStep(*s)
                      : per_token_s * static_cast<double>(s->new_tokens) >= fixed_s;
      if (!priced_by_tokens) continue;
      px.push_back({static_cast<double>(s->new_tokens), s->attention_pairs, 0});
      py.push_back(s->seconds);
    }
  };
  const std::array<const char*, kMaxParams> prefill_names = {"prefill_per_token_s",
                                                             "prefill_attention_s", ""};
  add_prefill_steps(0, -1);
  ASSIGN_OR_RETURN(Row p, SolveNonNegative(px, py, prefill_names, 2));
  // One batch size cannot tell a per-sequence cost from the fixed one: fit it only when
  // the whole-step samples vary the batch (and not in proportion to the context).
  std::sort(batch_sizes.begin(), batch_sizes.end());
  const bool fit_per_sequence =
      std::unique(batch_sizes.begin(), batch_sizes.end()) - batch_sizes.begin() >= 2;
  const std::array<const char*, kMaxParams> decode_names = {
      "decode_fixed_s", "decode_per_context_token_s", "decode_per_sequence_s"};
  Result<Row> solved = SolveNonNegative(dx, dy, decode_names, fit_per_sequence ? 3 : 2);
  // Batch sizes proportional to the contexts (B sequences of one length) cannot separate
  // the per-sequence term either: fit without it.
  if (!solved.ok() && fit_per_sequence) solved = SolveNonNegative(dx, dy, decode_names, 2);
  ASSIGN_OR_RETURN(Row d, std::move(solved));
  if (!step_prefills.empty()) {
    add_prefill_steps(p[0], d[0]);
    // A first fit that prices no step past decode_fixed_s (one skewed by steps FitCostModel
    // leaves out next) keeps its prices.
    if (!px.empty()) {
      ASSIGN_OR_RETURN(p, SolveNonNegative(px, py, prefill_names, 2));
    }
  }
  model.prefill_per_token_s = p[0];
  model.prefill_attention_s = p[1];
  model.decode_fixed_s = d[0];
  model.decode_per_context_token_s = d[1];
  model.decode_per_sequence_s = d[2];
  model.mixed_decode_extra_per_context_token_s = FitMixedExtra(samples, model);
  return model;
}

}  // namespace

Result<CostFit> FitCostModel(const std::vector<TimingSample>& samples, const CostModel& base) {
  for (const TimingSample& s : samples) {
    if (!(s.seconds > 0) || !std::isfinite(s.seconds)) {
      return Status::InvalidArgument("cost model: a sample's seconds must be > 0 (" + s.note + ")");
    }
  }
  // A logged step measured at a small fraction of its price did not wait for its own GPU
  // work: the CUDA backend synchronises a step that reads no logits only at the next step's
  // start, so that work is billed to the next step. Relative least squares weighs such a
  // step heavily, so refit without those steps until the set is stable (a few rounds).
  ASSIGN_OR_RETURN(CostModel model, FitPrices(samples, base));
  std::vector<bool> trimmed(samples.size(), false);
  for (int round = 0; round < kMaxTrimRounds; ++round) {
    std::vector<TimingSample> kept;
    bool changed = false;
    for (size_t i = 0; i < samples.size(); ++i) {
      const bool trim = samples[i].kind == TimingSample::Kind::kStep &&
                        samples[i].seconds * kBilledToNextStepRatio < Predict(model, samples[i]);
      changed |= trim != trimmed[i];
      trimmed[i] = trim;
      if (!trim) kept.push_back(samples[i]);
    }
    if (!changed) break;
    ASSIGN_OR_RETURN(model, FitPrices(kept, base));
  }
  CostFit fit;
  fit.model = model;
  for (size_t i = 0; i < samples.size(); ++i) {
    if (trimmed[i]) {
      ++fit.num_trimmed;
      continue;
    }
    CostFitRow row{samples[i], Predict(fit.model, samples[i])};
    fit.max_relative_error =
        std::max(fit.max_relative_error,
                 std::abs(row.predicted_s - samples[i].seconds) / samples[i].seconds);
    fit.rows.push_back(std::move(row));
  }
  return fit;
}

namespace {

constexpr size_t kMaxListedRows = 40;

// A fit to many samples (a run's logged steps): per kind of step, the count, the total
// measured and fitted seconds, and quantiles of the relative error.
std::string FormatErrorSummary(const CostFit& fit) {
  std::map<std::string, std::vector<const CostFitRow*>> by_kind;
  for (const CostFitRow& r : fit.rows) {
    const TimingSample& s = r.sample;
    const char* kind = TimingSampleKindName(s.kind);
    if (s.kind == TimingSample::Kind::kStep) {
      kind = IsDecodeStep(s) ? "step: decode" : IsMixedStep(s) ? "step: mixed" : "step: prefill";
    }
    by_kind[kind].push_back(&r);
  }
  std::string out;
  char line[256];
  std::snprintf(line, sizeof(line), "%-16s %8s %11s %11s %8s %8s %8s\n", "samples", "count",
                "measured_s", "fitted_s", "err p10", "err p50", "err p90");
  out += line;
  for (const auto& [kind, rows] : by_kind) {
    std::vector<double> errors;
    double measured = 0, fitted = 0;
    for (const CostFitRow* r : rows) {
      measured += r->sample.seconds;
      fitted += r->predicted_s;
      errors.push_back((r->predicted_s - r->sample.seconds) / r->sample.seconds);
    }
    std::sort(errors.begin(), errors.end());
    auto q = [&](double p) { return 100.0 * errors[static_cast<size_t>(p * (errors.size() - 1))]; };
    std::snprintf(line, sizeof(line), "%-16s %8zu %11.3f %11.3f %+7.1f%% %+7.1f%% %+7.1f%%\n",
                  kind.c_str(), rows.size(), measured, fitted, q(0.1), q(0.5), q(0.9));
    out += line;
  }
  return out;
}

}  // namespace

std::string FormatCostFit(const CostFit& fit) {
  std::string out;
  char line[256];
  const CostModel& m = fit.model;
  std::snprintf(line, sizeof(line),
                "prefill_s(n, c) = %.4g * n + %.4g * n * (c + n/2)\n"
                "decode_step_s(ctx, B) = %.4g + %.4g * ctx + %.4g * B; beside a prefill + %.4g * "
                "ctx\n",
                m.prefill_per_token_s, m.prefill_attention_s, m.decode_fixed_s,
                m.decode_per_context_token_s, m.decode_per_sequence_s,
                m.mixed_decode_extra_per_context_token_s);
  out += line;
  std::snprintf(line, sizeof(line), "%-18s %8s %8s %9s %4s %11s %11s %7s\n", "sample", "new",
                "cached", "context", "B", "measured_s", "fitted_s", "error");
  out += fit.rows.size() > kMaxListedRows ? FormatErrorSummary(fit) : std::string(line);
  for (const CostFitRow& r : fit.rows) {
    if (fit.rows.size() > kMaxListedRows) break;
    const TimingSample& s = r.sample;
    std::snprintf(line, sizeof(line), "%-18s %8lld %8lld %9lld %4lld %11.5f %11.5f %+6.1f%%\n",
                  TimingSampleKindName(s.kind), static_cast<long long>(s.new_tokens),
                  static_cast<long long>(s.cached_tokens), static_cast<long long>(s.context_tokens),
                  static_cast<long long>(s.sequences), s.seconds, r.predicted_s,
                  100.0 * (r.predicted_s - s.seconds) / s.seconds);
    out += line;
  }
  if (fit.num_trimmed > 0) {
    std::snprintf(line, sizeof(line),
                  "%lld logged steps under a third of their price left out (their GPU work "
                  "billed to the next step)\n",
                  static_cast<long long>(fit.num_trimmed));
    out += line;
  }
  std::snprintf(line, sizeof(line), "max relative error %.1f%%\n", 100.0 * fit.max_relative_error);
  return out + line;
}

}  // namespace kvkeep
