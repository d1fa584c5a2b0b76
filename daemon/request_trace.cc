#include "daemon/request_trace.h"

#include <spdlog/spdlog.h>

namespace kvkeep {

std::shared_ptr<RequestTrace> RequestTrace::StartIfDebug(Clock* clock) {
  if (!spdlog::should_log(spdlog::level::debug)) return nullptr;
  return std::make_shared<RequestTrace>(clock);
}

RequestTrace::RequestTrace(Clock* clock)
    : clock_(clock), start_us_(clock->NowMicros()), last_us_(start_us_) {}

void RequestTrace::Mark(std::string_view step) {
  const int64_t now_us = clock_->NowMicros();
  std::lock_guard<std::mutex> lock(mu_);
  steps_.emplace_back(std::string(step), now_us - last_us_);
  last_us_ = now_us;
}

std::string RequestTrace::Line() const {
  std::lock_guard<std::mutex> lock(mu_);
  std::string line;
  for (const auto& [step, us] : steps_) line += step + "=" + std::to_string(us) + "us ";
  return line + "total=" + std::to_string(last_us_ - start_us_) + "us";
}

}  // namespace kvkeep
