// The engine's step log: each step's work and its measured time, as `kvkeepd --step-log`
// writes it (a CSV file, written when the daemon stops), and the cost model samples it
// gives (`policy_bench --fit-step-log`: the simulator priced by a run's own steps).
//
// Thread-safety: StepLog is not thread-safe (the engine thread adds, the daemon writes
// after the engine has stopped); the functions are pure.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "base/file.h"
#include "base/status.h"
#include "policy/cost_model.h"

namespace kvkeep {

// One engine step that ran the model.
struct StepTiming {
  double at_s = 0;    // when the step began, seconds on the engine's clock
  double step_s = 0;  // the whole step: schedule, transfers, forward pass, sampling, events
  int64_t decode_sequences = 0;
  int64_t decode_context_tokens = 0;  // KV tokens the decoding sequences read, in all
  int64_t prefill_runs = 0;
  int64_t prefill_tokens = 0;     // new tokens of the prefill runs, in all
  double attention_pairs = 0;     // each run's n * (c + n / 2), in all
  int64_t swapped_in_blocks = 0;  // host -> device copies the step waited for
  int64_t swapped_out_blocks = 0;
  bool operator==(const StepTiming&) const = default;
};

// The first `capacity` steps (a run's steps are alike; the bound keeps a long-lived
// daemon's memory flat), and how many came after.
class StepLog {
 public:
  // kvkeepd's and policy_bench's bound: about 72 MB of steps.
  static constexpr size_t kDefaultCapacity = 1'000'000;

  explicit StepLog(size_t capacity) : capacity_(capacity) {}
  void Add(const StepTiming& step);
  // The simulator's clock stands still within a step: it sets the step's price after.
  void SetLastStepSeconds(double seconds) {
    if (!steps_.empty() && dropped_ == 0) steps_.back().step_s = seconds;
  }
  void Clear() {
    steps_.clear();
    dropped_ = 0;
  }
  const std::vector<StepTiming>& steps() const { return steps_; }
  int64_t dropped() const { return dropped_; }
  // The CSV file: a header line, then one line a step.
  Status Write(Env* env, const std::string& path) const;

 private:
  size_t capacity_;
  std::vector<StepTiming> steps_;
  int64_t dropped_ = 0;
};

// Reads a file StepLog::Write wrote; errors name the file and line.
Result<std::vector<StepTiming>> ReadStepLog(Env* env, const std::string& path);

// The steps a cost model can be fitted to, as TimingSample::Kind::kStep samples: those
// without swaps (their time includes the copies, which the model prices apart).
std::vector<TimingSample> StepSamples(const std::vector<StepTiming>& steps);

}  // namespace kvkeep
