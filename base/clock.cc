#include "base/clock.h"

#include <time.h>

namespace kvkeep {
namespace {

int64_t ReadClock(clockid_t id) {
  timespec ts{};
  clock_gettime(id, &ts);
  return int64_t{ts.tv_sec} * 1'000'000 + ts.tv_nsec / 1000;
}

class RealClock final : public Clock {
 public:
  int64_t NowMicros() const override { return ReadClock(CLOCK_MONOTONIC); }
  int64_t WallMicros() const override { return ReadClock(CLOCK_REALTIME); }
};

}  // namespace

Clock* SystemClock() {
  static RealClock clock;
  return &clock;
}

}  // namespace kvkeep
