// RequestTrace: where one request's time goes, as a list of steps, each the monotonic
// time since the step before it, logged as one debug line by its owner. Two owners:
//   - the HTTP server (daemon/http_server.h): started when a request's headers arrive;
//     the handler marks its steps (parse, match, append, submit...), the generation's
//     callbacks mark theirs from the engine and I/O threads, and the server marks `write`
//     once the response is sent, then logs
//       trace http POST /v1/chat/completions 200: read=41us parse=95us ... total=...us
//   - session.generate in the Service, for both front ends: validation, submission, first
//     token, the engine's finish, the hop to an I/O thread, the store commit, the reply:
//       trace generate s-...: submit=30us first_token=2100us ... total=...us
// A trace exists only while the log level is debug (StartIfDebug returns null
// otherwise), so production pays one level check per request.
// bench/http_overhead.py --trace reads these lines.
//
// Thread-safety: Mark and Line may be called from any thread.
#pragma once

#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "base/clock.h"

namespace kvkeep {

class RequestTrace {
 public:
  // A trace starting now, or null unless spdlog logs at debug.
  static std::shared_ptr<RequestTrace> StartIfDebug(Clock* clock);

  explicit RequestTrace(Clock* clock);
  // Records `step` as the time since the previous mark (or the start).
  void Mark(std::string_view step);
  // "step=Nus ... total=Nus".
  std::string Line() const;

 private:
  Clock* const clock_;
  const int64_t start_us_;
  mutable std::mutex mu_;
  int64_t last_us_;                                     // guarded by mu_
  std::vector<std::pair<std::string, int64_t>> steps_;  // guarded by mu_
};

// Marks a step on a trace that may be null (tracing off).
inline void TraceMark(const std::shared_ptr<RequestTrace>& trace, std::string_view step) {
  if (trace) trace->Mark(step);
}

}  // namespace kvkeep
