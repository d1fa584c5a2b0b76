#include "policy/admission_order.h"

#include <algorithm>
#include <tuple>

namespace kvkeep {

int AdmissionClass(const AdmissionCandidate& c, int64_t now_us, const AdmissionOptions& options) {
  if (!options.program_aware) return 3;
  if (c.preempted) return 0;
  if (now_us - c.enqueued_us >= options.starvation_bound_us) return 1;
  if (c.returning_pinned) return 2;
  return 3;
}

bool AdmitsBefore(const AdmissionCandidate& a, const AdmissionCandidate& b, int64_t now_us,
                  const AdmissionOptions& options) {
  if (!options.program_aware) {
    return std::tie(a.enqueued_us, a.request_id) < std::tie(b.enqueued_us, b.request_id);
  }
  const int ca = AdmissionClass(a, now_us, options), cb = AdmissionClass(b, now_us, options);
  return std::tie(ca, a.program_arrival_us, a.program, a.enqueued_us, a.request_id) <
         std::tie(cb, b.program_arrival_us, b.program, b.enqueued_us, b.request_id);
}

void SortForAdmission(std::vector<AdmissionCandidate>* queue, int64_t now_us,
                      const AdmissionOptions& options) {
  std::sort(queue->begin(), queue->end(),
            [&](const auto& a, const auto& b) { return AdmitsBefore(a, b, now_us, options); });
}

}  // namespace kvkeep
