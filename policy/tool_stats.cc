#include "policy/tool_stats.h"

#include <algorithm>
#include <cmath>
#include <numeric>

namespace kvkeep {

const char* DistributionSourceName(DistributionSource s) {
  switch (s) {
    case DistributionSource::kKey:
      return "key";
    case DistributionSource::kBlended:
      return "blended";
    case DistributionSource::kPooled:
      return "pooled";
    case DistributionSource::kPrior:
      return "prior";
  }
  return "?";
}

DurationDistribution DurationDistribution::Exponential(double mean_s) {
  DurationDistribution d;
  d.source_ = DistributionSource::kPrior;
  d.prior_mean_s_ = std::max(mean_s, 1e-9);
  return d;
}

DurationDistribution DurationDistribution::Empirical(std::vector<double> values_s,
                                                     std::vector<double> weights,
                                                     DistributionSource source) {
  DurationDistribution d;
  d.source_ = source;
  std::vector<size_t> order(values_s.size());
  std::iota(order.begin(), order.end(), 0);
  std::sort(order.begin(), order.end(),
            [&](size_t a, size_t b) { return values_s[a] < values_s[b]; });
  double cum = 0;
  for (size_t i : order) {
    cum += weights[i];
    d.values_s_.push_back(values_s[i]);
    d.cum_weight_.push_back(cum);
  }
  d.total_weight_ = cum;
  return d;
}

double DurationDistribution::Cdf(double t_s) const {
  if (t_s < 0) return 0;
  if (values_s_.empty()) return 1.0 - std::exp(-t_s / prior_mean_s_);
  auto it = std::upper_bound(values_s_.begin(), values_s_.end(), t_s);
  if (it == values_s_.begin()) return 0;
  return cum_weight_[static_cast<size_t>(it - values_s_.begin()) - 1] / total_weight_;
}

double DurationDistribution::Quantile(double q) const {
  q = std::clamp(q, 0.0, 1.0);
  if (values_s_.empty()) return q >= 1.0 ? INFINITY : -prior_mean_s_ * std::log1p(-q);
  const double target = q * total_weight_;
  // Smallest value whose cumulative weight reaches q (with a little slack for rounding).
  auto it =
      std::lower_bound(cum_weight_.begin(), cum_weight_.end(), target - 1e-12 * total_weight_);
  if (it == cum_weight_.end()) return values_s_.back();
  return values_s_[static_cast<size_t>(it - cum_weight_.begin())];
}

double DurationDistribution::Mean() const {
  if (values_s_.empty()) return prior_mean_s_;
  double sum = 0, prev = 0;
  for (size_t i = 0; i < values_s_.size(); ++i) {
    sum += values_s_[i] * (cum_weight_[i] - prev);
    prev = cum_weight_[i];
  }
  return sum / total_weight_;
}

void DurationDistribution::AppendPoints(double total_weight, std::vector<double>* values,
                                        std::vector<double>* weights) const {
  if (values_s_.empty()) {
    for (int i = 0; i < kPriorPoints; ++i) {
      values->push_back(Quantile((i + 0.5) / kPriorPoints));
      weights->push_back(total_weight / kPriorPoints);
    }
    return;
  }
  double prev = 0;
  for (size_t i = 0; i < values_s_.size(); ++i) {
    values->push_back(values_s_[i]);
    weights->push_back((cum_weight_[i] - prev) / total_weight_ * total_weight);
    prev = cum_weight_[i];
  }
}

ToolLatencyStats::ToolLatencyStats(const ToolStatsOptions& options, const Clock* clock)
    : options_(options), clock_(clock) {}

void ToolLatencyStats::AddSample(const std::string& key, int64_t duration_us) {
  AddSampleAt(key, duration_us, clock_->NowMicros());
}

void ToolLatencyStats::AddSampleAt(const std::string& key, int64_t duration_us, int64_t at_us) {
  const Sample s{static_cast<double>(std::max<int64_t>(duration_us, 0)) / 1e6, at_us};
  std::deque<Sample>& mine = by_key_[key];
  mine.push_back(s);
  pooled_.push_back(s);
  Age(&mine);
  Age(&pooled_);
}

void ToolLatencyStats::SetOptions(const ToolStatsOptions& options) {
  options_ = options;
  for (auto& [key, samples] : by_key_) Age(&samples);
  Age(&pooled_);
}

void ToolLatencyStats::Load(const std::vector<ToolSample>& samples) {
  const int64_t wall_to_mono = clock_->NowMicros() - clock_->WallMicros();
  for (const ToolSample& s : samples) AddSampleAt(s.key, s.duration_us, s.at_us + wall_to_mono);
}

void ToolLatencyStats::Age(std::deque<Sample>* samples) const {
  if (options_.ageing == ToolStatsOptions::Ageing::kWindow) {
    while (static_cast<int64_t>(samples->size()) > std::max(options_.window_samples, 1)) {
      samples->pop_front();
    }
    return;
  }
  const int64_t now = clock_->NowMicros();
  // Samples arrive in time order, so the oldest are in front.
  while (!samples->empty()) {
    const double age_s = static_cast<double>(now - samples->front().at_us) / 1e6;
    if (std::exp2(-age_s / options_.half_life_s) >= options_.min_weight) break;
    samples->pop_front();
  }
}

DurationDistribution ToolLatencyStats::Build(const std::deque<Sample>& samples,
                                             DistributionSource src) const {
  std::vector<double> values, weights;
  const int64_t now = clock_->NowMicros();
  const bool decay = options_.ageing == ToolStatsOptions::Ageing::kDecay;
  for (const Sample& s : samples) {
    const double age_s = std::max(0.0, static_cast<double>(now - s.at_us) / 1e6);
    const double w = decay ? std::exp2(-age_s / options_.half_life_s) : 1.0;
    if (decay && w < options_.min_weight) continue;
    values.push_back(s.duration_s);
    weights.push_back(w);
  }
  if (values.empty()) return DurationDistribution::Exponential(options_.prior_mean_s);
  return DurationDistribution::Empirical(std::move(values), std::move(weights), src);
}

DurationDistribution ToolLatencyStats::Shrink(const std::deque<Sample>& samples,
                                              DistributionSource src,
                                              const DurationDistribution& parent) const {
  const double need = static_cast<double>(std::max(options_.min_samples_per_key, 1));
  DurationDistribution own = Build(samples, src);
  if (own.source() != src) return parent;  // no sample (or all aged out)
  const double n = own.effective_samples();
  if (n >= need - 1e-9) return own;
  std::vector<double> values, weights;
  own.AppendPoints(n, &values, &weights);
  parent.AppendPoints(need - n, &values, &weights);
  return DurationDistribution::Empirical(
      std::move(values), std::move(weights),
      src == DistributionSource::kKey ? DistributionSource::kBlended : DistributionSource::kPooled);
}

DurationDistribution ToolLatencyStats::Pooled() const {
  return Shrink(pooled_, DistributionSource::kPooled,
                DurationDistribution::Exponential(options_.prior_mean_s));
}

DurationDistribution ToolLatencyStats::ForKey(const std::string& key) const {
  const DurationDistribution pooled = Pooled();
  auto it = by_key_.find(key);
  if (it == by_key_.end()) return pooled;
  return Shrink(it->second, DistributionSource::kKey, pooled);
}

DurationDistribution ToolLatencyStats::KeyOnly(const std::string& key) const {
  auto it = by_key_.find(key);
  if (it == by_key_.end()) return DurationDistribution::Exponential(options_.prior_mean_s);
  return Build(it->second, DistributionSource::kKey);
}

bool ToolLatencyStats::HasSamples(const std::string& key) const {
  return KeyOnly(key).source() == DistributionSource::kKey;
}

ToolKeySummary ToolLatencyStats::Summary(const std::string& key) const {
  ToolKeySummary s;
  s.key = key;
  auto it = by_key_.find(key);
  if (it == by_key_.end()) return s;
  DurationDistribution d = Build(it->second, DistributionSource::kKey);
  if (d.source() != DistributionSource::kKey) return s;
  s.num_samples = static_cast<int64_t>(it->second.size());
  s.effective_samples = d.effective_samples();
  s.mean_s = d.Mean();
  s.p50_s = d.Quantile(0.5);
  s.p90_s = d.Quantile(0.9);
  s.p99_s = d.Quantile(0.99);
  return s;
}

std::vector<ToolKeySummary> ToolLatencyStats::Summaries() const {
  std::vector<ToolKeySummary> out;
  for (const auto& [key, samples] : by_key_) {
    ToolKeySummary s = Summary(key);
    if (s.num_samples > 0) out.push_back(std::move(s));
  }
  return out;
}

}  // namespace kvkeep
