#include "daemon/metrics.h"

#include <cmath>
#include <cstdio>

namespace kvkeep {

void LatencyHistogram::Observe(double ms) {
  if (!(ms >= 0)) ms = 0;
  size_t b = 0;
  while (b < kBoundsMs.size() && ms > kBoundsMs[b]) ++b;
  buckets_[b].fetch_add(1, std::memory_order_relaxed);
  count_.fetch_add(1, std::memory_order_relaxed);
  sum_us_.fetch_add(static_cast<int64_t>(std::llround(ms * 1000.0)), std::memory_order_relaxed);
}

nlohmann::json LatencyHistogram::ToJson() const {
  nlohmann::json buckets = nlohmann::json::array();
  int64_t cumulative = 0;
  for (size_t b = 0; b < kBoundsMs.size(); ++b) {
    cumulative += buckets_[b].load(std::memory_order_relaxed);
    buckets.push_back({kBoundsMs[b], cumulative});
  }
  cumulative += buckets_[kBoundsMs.size()].load(std::memory_order_relaxed);
  buckets.push_back({"+Inf", cumulative});
  return {{"count", count()}, {"sum", sum_ms()}, {"buckets", buckets}};
}

void LatencyHistogram::AppendPrometheus(const std::string& name, const std::string& help,
                                        std::string* out) const {
  *out += "# HELP " + name + " " + help + "\n# TYPE " + name + " histogram\n";
  int64_t cumulative = 0;
  char line[256];
  for (size_t b = 0; b <= kBoundsMs.size(); ++b) {
    cumulative += buckets_[b].load(std::memory_order_relaxed);
    if (b < kBoundsMs.size()) {
      std::snprintf(line, sizeof(line), "%s_bucket{le=\"%g\"} %lld\n", name.c_str(),
                    kBoundsMs[b] / 1000.0, static_cast<long long>(cumulative));
    } else {
      std::snprintf(line, sizeof(line), "%s_bucket{le=\"+Inf\"} %lld\n", name.c_str(),
                    static_cast<long long>(cumulative));
    }
    *out += line;
  }
  std::snprintf(line, sizeof(line), "%s_sum %.6f\n%s_count %lld\n", name.c_str(), sum_ms() / 1000.0,
                name.c_str(), static_cast<long long>(cumulative));
  *out += line;
}

}  // namespace kvkeep
