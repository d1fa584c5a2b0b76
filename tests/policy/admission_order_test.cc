// Program-aware admission order: preempted, then starving, then returning pinned programs,
// then the rest by program arrival; FCFS when program-aware ordering is off.
#include "policy/admission_order.h"

#include <gtest/gtest.h>

namespace kvkeep {
namespace {

constexpr int64_t kSecond = 1'000'000;

std::vector<uint64_t> Ids(const std::vector<AdmissionCandidate>& q) {
  std::vector<uint64_t> out;
  for (const auto& c : q) out.push_back(c.request_id);
  return out;
}

TEST(AdmissionOrder, PreemptedThenReturningPinnedThenByProgramArrival) {
  const int64_t now = 100 * kSecond;
  // id, preempted, returning_pinned, program_arrival, enqueued
  std::vector<AdmissionCandidate> q = {
      {1, false, false, 10 * kSecond, 95 * kSecond},  // old program, not pinned
      {2, false, true, 50 * kSecond, 99 * kSecond},   // returning within its pin
      {3, true, false, 60 * kSecond, 98 * kSecond},   // preempted
      {4, false, false, 5 * kSecond, 99 * kSecond},   // oldest program
      {5, false, true, 20 * kSecond, 99 * kSecond},   // returning, older program than 2
      {6, false, false, 90 * kSecond, 90 * kSecond},  // newcomer
  };
  AdmissionOptions o;
  o.starvation_bound_us = 30 * kSecond;
  SortForAdmission(&q, now, o);
  EXPECT_EQ(Ids(q), (std::vector<uint64_t>{3, 5, 2, 4, 1, 6}));

  // A newcomer that has waited past the bound goes ahead of returning programs.
  SortForAdmission(&q, 121 * kSecond, o);  // 6 waited 31 s; 1 waited 26 s
  EXPECT_EQ(Ids(q), (std::vector<uint64_t>{3, 6, 5, 2, 4, 1}));

  // FCFS (lru, none, ttl-fcfs): enqueue time only.
  o.program_aware = false;
  SortForAdmission(&q, now, o);
  EXPECT_EQ(Ids(q), (std::vector<uint64_t>{6, 1, 3, 2, 4, 5}));
}

TEST(AdmissionOrder, IsAStrictWeakOrder) {
  AdmissionOptions o;
  o.starvation_bound_us = 10;
  std::vector<AdmissionCandidate> all;
  uint64_t id = 0;
  for (bool pre : {false, true}) {
    for (bool pin : {false, true}) {
      for (int64_t arr : {0, 5}) {
        for (int64_t enq : {0, 50}) all.push_back({id++, pre, pin, arr, enq});
      }
    }
  }
  for (const auto& a : all) {
    EXPECT_FALSE(AdmitsBefore(a, a, 55, o));
    for (const auto& b : all) {
      if (AdmitsBefore(a, b, 55, o)) {
        EXPECT_FALSE(AdmitsBefore(b, a, 55, o));
      }
      for (const auto& c : all) {
        if (AdmitsBefore(a, b, 55, o) && AdmitsBefore(b, c, 55, o)) {
          EXPECT_TRUE(AdmitsBefore(a, c, 55, o));
        }
      }
    }
  }
}

}  // namespace
}  // namespace kvkeep
