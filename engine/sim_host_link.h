// SimHostLink: the simulator's model of the link between the device KV pool and the host
// tier, as the CUDA backend drives it (engine/cuda/cuda_swaps.h): a queue per direction,
// batches of one direction one after another from when they are issued, and a batch that
// shares a device block or a host slot with a pending batch of the other direction
// starting only after it.
//
// The two directions share the link as a fluid: a direction moving alone runs at its full
// rate; while both move, each runs at duplex_share of it (measured by
// bench/gpu/tiers_swap_bench: one-way time / time of both at once). duplex_share 1 is a
// full-duplex link, 0.5 one that the directions only take turns on. A batch's finish time
// therefore depends on what the other direction queues later, so the model keeps each
// pending batch's remaining work and projects finish times on demand, assuming nothing
// more is queued: the engine thread queues nothing while a step waits.
//
// Thread-safety: none; owned by SimBackend.
#pragma once

#include <cstdint>
#include <deque>
#include <span>
#include <vector>

namespace kvkeep {

class SimHostLink {
 public:
  // Directions index arrays: kOut (device to host) and kIn (host to device).
  static constexpr int kOut = 0, kIn = 1;

  // REQUIRES: 0.5 <= duplex_share <= 1; num_device_blocks, num_host_slots >= 0.
  SimHostLink(double duplex_share, int32_t num_device_blocks, int32_t num_host_slots);

  // Queues a batch of `seconds` (at the one-way rate) in direction `dir`, issued at `now_s`
  // (not before an earlier call's now_s), over these device blocks and host slots.
  void Queue(double now_s, int dir, double seconds, std::span<const int32_t> device_blocks,
             std::span<const int32_t> host_slots);
  // When the last pending batch that touches one of `device_blocks` finishes (now_s if
  // none), projected from now_s with nothing more queued.
  double ReadyAt(double now_s, std::span<const int32_t> device_blocks);
  // When every pending batch finishes (now_s if none).
  double IdleAt(double now_s);
  // Whether a batch is still pending at now_s.
  bool Busy(double now_s);

 private:
  struct Batch {
    double remaining_s = 0;  // at the one-way rate
    int64_t after = -1;      // index of the other direction's batch it waits for; -1: none
  };
  struct State {
    std::deque<Batch> pending[2];  // front: running or next
    int64_t done[2] = {0, 0};      // batches finished per direction (index of the front)
    double now_s = 0;
  };
  // Runs the link to now_s with nothing more queued (the link is idle from then if empty).
  void AdvanceTo(double now_s);
  // When batches wait_for (an index per direction; one already finished: nothing to wait
  // for) finish, projected from the current state with nothing more queued; now_s if they
  // have.
  double Projected(double now_s, const int64_t wait_for[2]) const;
  // Moves `s` forward to `until_s`, or until both batch indices `wait_for` (per direction,
  // -1: none) have finished if that is sooner; returns the time it stopped.
  double Run(State* s, double until_s, const int64_t wait_for[2]) const;

  double duplex_share_;
  State state_;
  // Per device block and host slot: the direction and index of the last batch that
  // touched it (index -1: none).
  struct Touch {
    int dir = 0;
    int64_t index = -1;
  };
  std::vector<Touch> block_touch_, slot_touch_;
};

}  // namespace kvkeep
