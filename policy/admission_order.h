// Program-aware admission order (docs/policy.md, "Admission order"). Among waiting
// requests, under `ttl` and `fixed-ttl`:
//   1. preempted requests;
//   2. requests that have waited starvation_bound_us or longer (so newcomers cannot be
//      kept out forever by returning programs);
//   3. turns of programs returning from a tool within their pin;
//   4. the rest;
// each class by program arrival (the agent's first request), then by program (so programs
// that arrived together keep one order: ordered by their turns' enqueue times instead, they
// would take turns, which is FCFS by turn), then by the request's own enqueue time, then id.
// `lru`, `none` and `ttl-fcfs` keep plain FCFS: enqueue time, then id.
//
// Thread-safety: pure functions.
#pragma once

#include <cstdint>
#include <vector>

namespace kvkeep {

struct AdmissionCandidate {
  uint64_t request_id = 0;
  bool preempted = false;
  bool returning_pinned = false;  // its session's pin was live when its tool returned
  int64_t program_arrival_us = 0;
  int64_t enqueued_us = 0;
  uint64_t program = 0;  // the session (0: none)
};

struct AdmissionOptions {
  bool program_aware = true;                 // false: FCFS
  int64_t starvation_bound_us = 30'000'000;  // --admission-starvation-bound-s
};

// 0..3 above (FCFS: always 3).
int AdmissionClass(const AdmissionCandidate& c, int64_t now_us, const AdmissionOptions& options);
// A strict weak order for a fixed now_us: true when a is admitted before b.
bool AdmitsBefore(const AdmissionCandidate& a, const AdmissionCandidate& b, int64_t now_us,
                  const AdmissionOptions& options);
// Sorts *queue into admission order.
void SortForAdmission(std::vector<AdmissionCandidate>* queue, int64_t now_us,
                      const AdmissionOptions& options);

}  // namespace kvkeep
