// Tool latency statistics: what the TTL policy knows about how long a tool call lasts.
//
// Samples (duration, time taken) are kept per tool key and pooled over all keys. The
// distribution used for a key (k = min_samples_per_key, n = the key's effective samples):
//   1. n >= k: the key's own empirical CDF;
//   2. 0 < n < k: the key's samples shrunk toward the parent, which weighs k - n:
//      F = (n F_key + (k - n) F_parent) / k ("blended");
//   3. n = 0: the parent.
// The parent is the pooled CDF over every key, built by the same rule one level up: the
// pooled samples alone once they reach k, else shrunk toward the exponential prior with
// mean prior_mean_s (the prior alone with no sample at all). So a key's first samples
// count at once, and its tail comes from what the other tools did, not from the prior.
// Old samples age out in one of two ways (ToolStatsOptions::ageing):
//   - kWindow: only the newest window_samples samples per key (and pooled) count;
//   - kDecay:  a sample taken at t weighs 0.5^((now - t) / half_life_s); samples below
//              min_weight are dropped. Quantiles and the CDF are weighted.
// All time comes from the Clock given at construction.
//
// Thread-safety: not thread-safe; the owner (the engine thread) serialises calls.
// Ownership: does not own the clock, which must outlive it.
#pragma once

#include <cstdint>
#include <deque>
#include <map>
#include <string>
#include <vector>

#include "base/clock.h"

namespace kvkeep {

struct ToolStatsOptions {
  enum class Ageing { kWindow, kDecay };
  int min_samples_per_key = 20;  // effective samples before a key's own CDF is used
  double prior_mean_s = 5.0;     // mean of the exponential prior with no samples at all
  Ageing ageing = Ageing::kWindow;
  int window_samples = 256;         // kWindow: newest samples kept per key and pooled
  double half_life_s = 6 * 3600.0;  // kDecay: a sample's weight halves every half_life_s
  double min_weight = 0.01;         // kDecay: lighter samples are dropped
};

// Where a distribution came from.
enum class DistributionSource { kKey, kBlended, kPooled, kPrior };
const char* DistributionSourceName(DistributionSource s);

// A duration distribution: a weighted empirical CDF, or the exponential prior.
// Value type; cheap to copy for the sizes kept here.
class DurationDistribution {
 public:
  static DurationDistribution Exponential(double mean_s);
  // REQUIRES: values_s and weights the same length, weights > 0.
  static DurationDistribution Empirical(std::vector<double> values_s, std::vector<double> weights,
                                        DistributionSource source);

  DistributionSource source() const { return source_; }
  // P(duration <= t_s).
  double Cdf(double t_s) const;
  // The smallest duration d with Cdf(d) >= q; q in (0, 1).
  double Quantile(double q) const;
  double Mean() const;
  double effective_samples() const { return total_weight_; }
  // Appends this distribution as weighted points whose weights sum to total_weight: an
  // empirical CDF's own points, or the prior's quantiles at (i + 0.5) / kPriorPoints.
  void AppendPoints(double total_weight, std::vector<double>* values,
                    std::vector<double>* weights) const;
  static constexpr int kPriorPoints = 64;

 private:
  DistributionSource source_ = DistributionSource::kPrior;
  double prior_mean_s_ = 0;
  std::vector<double> values_s_;    // ascending
  std::vector<double> cum_weight_;  // cumulative weights, same order
  double total_weight_ = 0;
};

// One key's figures, for stats, persistence and the docs.
struct ToolKeySummary {
  std::string key;
  int64_t num_samples = 0;  // samples held (after ageing)
  double effective_samples = 0;
  double mean_s = 0, p50_s = 0, p90_s = 0, p99_s = 0;
};

// A persisted sample (daemon/store.h): its time is wall-clock, so it survives a restart.
struct ToolSample {
  std::string key;
  int64_t duration_us = 0;
  int64_t at_us = 0;  // Clock::WallMicros() when it was taken
};

class ToolLatencyStats {
 public:
  // REQUIRES: clock != nullptr.
  ToolLatencyStats(const ToolStatsOptions& options, const Clock* clock);

  // A sample taken now. Negative durations are clamped to 0.
  void AddSample(const std::string& key, int64_t duration_us);
  // A sample taken at at_us (Clock::NowMicros() time).
  void AddSampleAt(const std::string& key, int64_t duration_us, int64_t at_us);
  // Persisted samples (wall-clock times, oldest first), e.g. Store::ToolSamples at start-up.
  void Load(const std::vector<ToolSample>& samples);

  // The distribution the policy uses for key (per key, pooled or prior; see above).
  DurationDistribution ForKey(const std::string& key) const;
  // The key's own samples, whatever their number (empty: Exponential prior).
  DurationDistribution KeyOnly(const std::string& key) const;
  bool HasSamples(const std::string& key) const;
  // Figures of every key with samples, by key.
  std::vector<ToolKeySummary> Summaries() const;
  ToolKeySummary Summary(const std::string& key) const;
  const ToolStatsOptions& options() const { return options_; }
  // New knobs (SIGHUP): the prior, min samples and ageing apply from now on; a smaller
  // window drops the oldest samples at once (a larger one cannot bring them back).
  void SetOptions(const ToolStatsOptions& options);

 private:
  struct Sample {
    double duration_s;
    int64_t at_us;
  };
  void Age(std::deque<Sample>* samples) const;
  DurationDistribution Build(const std::deque<Sample>& samples, DistributionSource src) const;
  // samples shrunk toward parent (rules 1-3 above); src names the result when it is pure.
  DurationDistribution Shrink(const std::deque<Sample>& samples, DistributionSource src,
                              const DurationDistribution& parent) const;
  DurationDistribution Pooled() const;

  ToolStatsOptions options_;
  const Clock* clock_;
  std::map<std::string, std::deque<Sample>> by_key_;  // mutable only through Add*
  std::deque<Sample> pooled_;
};

}  // namespace kvkeep
