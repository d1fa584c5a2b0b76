#include "engine/sim_host_link.h"

#include <algorithm>
#include <limits>

namespace kvkeep {

SimHostLink::SimHostLink(double duplex_share, int32_t num_device_blocks, int32_t num_host_slots)
    : duplex_share_(std::clamp(duplex_share, 0.5, 1.0)),
      block_touch_(static_cast<size_t>(std::max(num_device_blocks, 0))),
      slot_touch_(static_cast<size_t>(std::max(num_host_slots, 0))) {}

double SimHostLink::Run(State* s, double until_s, const int64_t wait_for[2]) const {
  auto finished = [&](int d) { return wait_for[d] < s->done[d]; };
  while (s->now_s < until_s && !(finished(kOut) && finished(kIn))) {
    // A direction moves when its front batch's dependency on the other one has finished.
    bool moving[2];
    for (int d = 0; d < 2; ++d) {
      moving[d] = !s->pending[d].empty() && s->pending[d].front().after < s->done[1 - d];
    }
    if (!moving[kOut] && !moving[kIn]) break;  // idle (a dependency is always earlier)
    const double rate = moving[kOut] && moving[kIn] ? duplex_share_ : 1.0;
    double step_s = until_s - s->now_s;
    for (int d = 0; d < 2; ++d) {
      if (moving[d]) step_s = std::min(step_s, s->pending[d].front().remaining_s / rate);
    }
    s->now_s += step_s;
    for (int d = 0; d < 2; ++d) {
      if (!moving[d]) continue;
      Batch& front = s->pending[d].front();
      front.remaining_s -= step_s * rate;
      if (front.remaining_s <= 1e-15) {
        s->pending[d].pop_front();
        ++s->done[d];
      }
    }
  }
  return s->now_s;
}

void SimHostLink::AdvanceTo(double now_s) {
  const int64_t never[2] = {std::numeric_limits<int64_t>::max(),
                            std::numeric_limits<int64_t>::max()};
  Run(&state_, now_s, never);
  state_.now_s = std::max(state_.now_s, now_s);  // idle until now
}

void SimHostLink::Queue(double now_s, int dir, double seconds,
                        std::span<const int32_t> device_blocks,
                        std::span<const int32_t> host_slots) {
  AdvanceTo(now_s);
  const int other = 1 - dir;
  const int64_t index = state_.done[dir] + static_cast<int64_t>(state_.pending[dir].size());
  Batch batch{seconds, -1};
  auto touch = [&](std::vector<Touch>& touches, std::span<const int32_t> ids) {
    for (int32_t id : ids) {
      if (id < 0 || static_cast<size_t>(id) >= touches.size()) continue;
      Touch& t = touches[static_cast<size_t>(id)];
      if (t.dir == other && t.index >= state_.done[other])
        batch.after = std::max(batch.after, t.index);
      t = Touch{dir, index};
    }
  };
  touch(block_touch_, device_blocks);
  touch(slot_touch_, host_slots);
  state_.pending[dir].push_back(batch);
}

double SimHostLink::ReadyAt(double now_s, std::span<const int32_t> device_blocks) {
  AdvanceTo(now_s);
  int64_t wait_for[2] = {-1, -1};
  for (int32_t b : device_blocks) {
    if (b < 0 || static_cast<size_t>(b) >= block_touch_.size()) continue;
    const Touch& t = block_touch_[static_cast<size_t>(b)];
    if (t.index >= state_.done[t.dir]) wait_for[t.dir] = std::max(wait_for[t.dir], t.index);
  }
  return Projected(now_s, wait_for);
}

bool SimHostLink::Busy(double now_s) {
  AdvanceTo(now_s);
  return !state_.pending[kOut].empty() || !state_.pending[kIn].empty();
}

double SimHostLink::IdleAt(double now_s) {
  AdvanceTo(now_s);
  const int64_t last[2] = {
      state_.done[kOut] + static_cast<int64_t>(state_.pending[kOut].size()) - 1,
      state_.done[kIn] + static_cast<int64_t>(state_.pending[kIn].size()) - 1};
  return Projected(now_s, last);
}

double SimHostLink::Projected(double now_s, const int64_t wait_for[2]) const {
  if (wait_for[kOut] < state_.done[kOut] && wait_for[kIn] < state_.done[kIn]) return now_s;
  State projected = state_;
  return std::max(now_s, Run(&projected, std::numeric_limits<double>::infinity(), wait_for));
}

}  // namespace kvkeep
