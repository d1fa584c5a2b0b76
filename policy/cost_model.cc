#include "policy/cost_model.h"

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdio>
#include <limits>

namespace kvkeep {
namespace {

constexpr int kParams = 2;
using Row = std::array<double, kParams>;

// Least squares on rows scaled by 1/measured (relative error), with coefficients held
// non-negative by fixing negative ones at zero and refitting the rest.
Result<Row> SolveNonNegative(const std::vector<Row>& x, const std::vector<double>& y,
                             const std::array<const char*, kParams>& names) {
  std::array<bool, kParams> active{};
  active.fill(true);
  for (int round = 0; round < kParams; ++round) {
    double a[kParams][kParams] = {};
    double b[kParams] = {};
    for (size_t r = 0; r < x.size(); ++r) {
      const double w = 1.0 / (y[r] * y[r]);
      for (int i = 0; i < kParams; ++i) {
        b[i] += w * x[r][i] * y[r];
        for (int j = 0; j < kParams; ++j) a[i][j] += w * x[r][i] * x[r][j];
      }
    }
    Row c{};
    // Gaussian elimination over the active coefficients (2x2: solve directly).
    std::vector<int> idx;
    for (int i = 0; i < kParams; ++i) {
      if (active[i]) idx.push_back(i);
    }
    if (idx.size() == 2) {
      const int i = idx[0], j = idx[1];
      const double det = a[i][i] * a[j][j] - a[i][j] * a[j][i];
      if (std::abs(det) <= 1e-12 * std::abs(a[i][i] * a[j][j])) {
        return Status::InvalidArgument(std::string("cost model: the samples cannot separate ") +
                                       names[i] + " from " + names[j]);
      }
      c[i] = (b[i] * a[j][j] - b[j] * a[i][j]) / det;
      c[j] = (a[i][i] * b[j] - a[j][i] * b[i]) / det;
    } else if (idx.size() == 1) {
      const int i = idx[0];
      if (a[i][i] <= 0) {
        return Status::InvalidArgument(std::string("cost model: no sample constrains ") + names[i]);
      }
      c[i] = b[i] / a[i][i];
    }
    for (int i = 0; i < kParams; ++i) {
      if (active[i] && a[i][i] <= 0) {
        return Status::InvalidArgument(std::string("cost model: no sample constrains ") + names[i]);
      }
    }
    int most_negative = -1;
    for (int i = 0; i < kParams; ++i) {
      if (active[i] && c[i] < 0 && (most_negative < 0 || c[i] < c[most_negative])) {
        most_negative = i;
      }
    }
    if (most_negative < 0) return c;
    active[most_negative] = false;
  }
  return Row{};
}

double Predict(const CostModel& m, const TimingSample& s) {
  switch (s.kind) {
    case TimingSample::Kind::kPrefill:
      return m.PrefillSeconds(s.new_tokens, s.cached_tokens);
    case TimingSample::Kind::kPrefillAttention:
      return m.prefill_attention_s * static_cast<double>(s.new_tokens) *
             (static_cast<double>(s.cached_tokens) + static_cast<double>(s.new_tokens) / 2);
    case TimingSample::Kind::kDecode:
      return m.DecodeStepSeconds(s.context_tokens);
    case TimingSample::Kind::kDecodeAttention:
      return m.decode_per_context_token_s * static_cast<double>(s.context_tokens);
  }
  return 0;
}

}  // namespace

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
  }
  return "?";
}

double CostModel::PrefillSeconds(int64_t new_tokens, int64_t cached_tokens) const {
  const double n = static_cast<double>(std::max<int64_t>(new_tokens, 0));
  const double c = static_cast<double>(std::max<int64_t>(cached_tokens, 0));
  return prefill_per_token_s * n + prefill_attention_s * n * (c + n / 2);
}

double CostModel::DecodeStepSeconds(int64_t context_tokens) const {
  return decode_fixed_s +
         decode_per_context_token_s * static_cast<double>(std::max<int64_t>(context_tokens, 0));
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

Result<CostFit> FitCostModel(const std::vector<TimingSample>& samples, const CostModel& base) {
  std::vector<Row> px, dx;
  std::vector<double> py, dy;
  for (const TimingSample& s : samples) {
    if (!(s.seconds > 0) || !std::isfinite(s.seconds)) {
      return Status::InvalidArgument("cost model: a sample's seconds must be > 0 (" + s.note + ")");
    }
    const double n = static_cast<double>(s.new_tokens);
    const double attn = n * (static_cast<double>(s.cached_tokens) + n / 2);
    const double ctx = static_cast<double>(s.context_tokens);
    switch (s.kind) {
      case TimingSample::Kind::kPrefill:
        px.push_back({n, attn});
        py.push_back(s.seconds);
        break;
      case TimingSample::Kind::kPrefillAttention:
        px.push_back({0, attn});
        py.push_back(s.seconds);
        break;
      case TimingSample::Kind::kDecode:
        dx.push_back({1, ctx});
        dy.push_back(s.seconds);
        break;
      case TimingSample::Kind::kDecodeAttention:
        dx.push_back({0, ctx});
        dy.push_back(s.seconds);
        break;
    }
  }
  CostFit fit;
  fit.model = base;
  ASSIGN_OR_RETURN(Row p, SolveNonNegative(px, py, {"prefill_per_token_s", "prefill_attention_s"}));
  ASSIGN_OR_RETURN(Row d,
                   SolveNonNegative(dx, dy, {"decode_fixed_s", "decode_per_context_token_s"}));
  fit.model.prefill_per_token_s = p[0];
  fit.model.prefill_attention_s = p[1];
  fit.model.decode_fixed_s = d[0];
  fit.model.decode_per_context_token_s = d[1];
  for (const TimingSample& s : samples) {
    CostFitRow row{s, Predict(fit.model, s)};
    fit.max_relative_error =
        std::max(fit.max_relative_error, std::abs(row.predicted_s - s.seconds) / s.seconds);
    fit.rows.push_back(std::move(row));
  }
  return fit;
}

std::string FormatCostFit(const CostFit& fit) {
  std::string out;
  char line[256];
  const CostModel& m = fit.model;
  std::snprintf(line, sizeof(line),
                "prefill_s(n, c) = %.4g * n + %.4g * n * (c + n/2)\n"
                "decode_step_s(ctx) = %.4g + %.4g * ctx\n",
                m.prefill_per_token_s, m.prefill_attention_s, m.decode_fixed_s,
                m.decode_per_context_token_s);
  out += line;
  std::snprintf(line, sizeof(line), "%-18s %8s %8s %9s %11s %11s %7s\n", "sample", "new", "cached",
                "context", "measured_s", "fitted_s", "error");
  out += line;
  for (const CostFitRow& r : fit.rows) {
    const TimingSample& s = r.sample;
    std::snprintf(line, sizeof(line), "%-18s %8lld %8lld %9lld %11.5f %11.5f %+6.1f%%\n",
                  TimingSampleKindName(s.kind), static_cast<long long>(s.new_tokens),
                  static_cast<long long>(s.cached_tokens), static_cast<long long>(s.context_tokens),
                  s.seconds, r.predicted_s, 100.0 * (r.predicted_s - s.seconds) / s.seconds);
    out += line;
  }
  std::snprintf(line, sizeof(line), "max relative error %.1f%%\n", 100.0 * fit.max_relative_error);
  return out + line;
}

}  // namespace kvkeep
