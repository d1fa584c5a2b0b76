// Metrics: the daemon's counters and latency histograms, rendered as JSON (stats verb)
// or Prometheus text exposition format (stats with format "prometheus").
//
// Thread-safety: all members are atomics; Observe/Add may be called from any thread.
#pragma once

#include <array>
#include <atomic>
#include <cstdint>
#include <string>

#include <nlohmann/json.hpp>

namespace kvkeep {

// A fixed-bucket latency histogram in milliseconds (bounds in kBoundsMs, then +Inf).
class LatencyHistogram {
 public:
  static constexpr std::array<double, 14> kBoundsMs = {1,   2,   5,    10,   20,   50,    100,
                                                       200, 500, 1000, 2000, 5000, 10000, 30000};
  void Observe(double ms);
  int64_t count() const { return count_.load(std::memory_order_relaxed); }
  double sum_ms() const { return static_cast<double>(sum_us_.load()) / 1000.0; }
  // {"count", "sum", "buckets": [[le, cumulative count], ..., ["+Inf", count]]}
  nlohmann::json ToJson() const;
  // Appends the _bucket/_sum/_count series of a histogram named `name` (seconds).
  void AppendPrometheus(const std::string& name, const std::string& help, std::string* out) const;

 private:
  std::array<std::atomic<int64_t>, kBoundsMs.size() + 1> buckets_{};  // non-cumulative
  std::atomic<int64_t> count_{0};
  std::atomic<int64_t> sum_us_{0};
};

struct DaemonMetrics {
  std::atomic<int64_t> connections{0};        // open now
  std::atomic<int64_t> connections_total{0};  // accepted since start
  std::atomic<int64_t> requests{0};
  std::atomic<int64_t> errors{0};
  std::atomic<int64_t> slow_readers_dropped{0};
  LatencyHistogram ttft;              // submit -> first generated token
  LatencyHistogram decode_per_token;  // decode_ms / (generated - 1)
  LatencyHistogram request;           // session.generate, received -> terminal line queued
  LatencyHistogram tool;              // tool_begin -> tool_end
};

}  // namespace kvkeep
