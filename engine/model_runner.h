// ModelRunner: turns a ScheduledBatch into one Backend::Forward call. It performs the
// step's copy-on-write copies, lays the scheduled runs out as a varlen ForwardBatch
// (token ids, positions from each sequence's KvView, slots from its BlockTable, block tables padded
// to the longest), and returns one row of logits per sequence that samples this step. The
// ForwardBatch and logits buffers are reused across steps.
//
// Thread-safety: none; engine thread only.
#pragma once

#include <vector>

#include "engine/backend.h"
#include "engine/scheduler.h"

namespace kvkeep {

// Fills *out from batch. REQUIRES: each sequence's table has room for its new tokens
// (Scheduler::Schedule reserved it).
void BuildForwardBatch(const ScheduledBatch& batch, ForwardBatch* out);

class ModelRunner {
 public:
  explicit ModelRunner(Backend* backend) : backend_(backend) {}

  // Runs the step. On success logits() holds [num sampling seqs][vocab_size], in the order
  // of batch.seqs restricted to those with sample == true.
  Status Run(const ScheduledBatch& batch);
  const std::vector<float>& logits() const { return logits_; }

 private:
  Backend* backend_;
  ForwardBatch forward_;
  std::vector<float> logits_;
};

}  // namespace kvkeep
