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

// Programs that arrived in the same microsecond (a simulator's recorded arrivals, or a
// batch of agents started together) keep one order across their turns: by program, not by
// which turn was enqueued first, else the order falls back to FCFS by turn and every
// program progresses a little, which under memory pressure means every program thrashes.
TEST(AdmissionOrder, ProgramsThatArrivedTogetherKeepOneOrder) {
  const int64_t now = 10 * kSecond;
  AdmissionOptions o;
  // id, preempted, returning_pinned, program_arrival, enqueued, program
  std::vector<AdmissionCandidate> q = {
      {1, false, false, 0, 3 * kSecond, 7},  // program 7's turn, enqueued first
      {2, false, false, 0, 4 * kSecond, 2},  // program 2's, later
      {3, false, false, 0, 5 * kSecond, 5},
  };
  SortForAdmission(&q, now, o);
  EXPECT_EQ(Ids(q), (std::vector<uint64_t>{2, 3, 1}));
  // The next round of turns comes in another enqueue order; the programs' order stands.
  q = {{4, false, false, 0, 6 * kSecond, 5},
       {5, false, false, 0, 7 * kSecond, 7},
       {6, false, false, 0, 8 * kSecond, 2}};
  SortForAdmission(&q, now, o);
  EXPECT_EQ(Ids(q), (std::vector<uint64_t>{6, 4, 5}));
  // An earlier program still goes first, whatever its id.
  q.push_back({7, false, false, -1, 9 * kSecond, 99});
  SortForAdmission(&q, now, o);
  EXPECT_EQ(Ids(q), (std::vector<uint64_t>{7, 6, 4, 5}));
}

TEST(AdmissionOrder, IsAStrictWeakOrder) {
  AdmissionOptions o;
  o.starvation_bound_us = 10;
  std::vector<AdmissionCandidate> all;
  uint64_t id = 0;
  for (bool pre : {false, true}) {
    for (bool pin : {false, true}) {
      for (int64_t arr : {0, 5}) {
        for (int64_t enq : {0, 50}) {
          for (uint64_t program : {1, 2}) all.push_back({id++, pre, pin, arr, enq, program});
        }
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
