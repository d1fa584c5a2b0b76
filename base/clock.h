// Clock: the only way kvkeep code reads time. Policies and the engine take a Clock*
// so tests and the replay tool's simulated mode can drive time by hand.
//
// Thread-safety: SystemClock is stateless; FakeClock is safe for concurrent use.
#pragma once

#include <atomic>
#include <cstdint>

namespace kvkeep {

class Clock {
 public:
  virtual ~Clock() = default;
  // Monotonic microseconds since an arbitrary origin; never goes back.
  virtual int64_t NowMicros() const = 0;
  // Wall-clock microseconds since the Unix epoch, for persisted timestamps.
  virtual int64_t WallMicros() const = 0;
};

// The real clocks (CLOCK_MONOTONIC and CLOCK_REALTIME). Process-wide singleton.
Clock* SystemClock();

// A clock that moves only when told to.
class FakeClock final : public Clock {
 public:
  explicit FakeClock(int64_t start_us = 1'000'000) : now_us_(start_us) {}
  int64_t NowMicros() const override { return now_us_.load(); }
  int64_t WallMicros() const override { return kWallOffsetUs + now_us_.load(); }
  void AdvanceMicros(int64_t delta_us) { now_us_.fetch_add(delta_us); }
  void SetMicros(int64_t now_us) { now_us_.store(now_us); }

 private:
  static constexpr int64_t kWallOffsetUs = 1'700'000'000'000'000;
  std::atomic<int64_t> now_us_;
};

}  // namespace kvkeep
