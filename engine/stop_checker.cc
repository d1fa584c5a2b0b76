#include "engine/stop_checker.h"

#include <algorithm>

namespace kvkeep {

StopChecker::StopChecker(const StopConditions& stop, const std::vector<int32_t>& model_eos_ids,
                         const Tokenizer* tokenizer)
    : stop_(stop), tokenizer_(tokenizer), decoder_(tokenizer) {
  stop_ids_ = stop.stop_token_ids;
  if (stop.use_model_eos) {
    stop_ids_.insert(stop_ids_.end(), model_eos_ids.begin(), model_eos_ids.end());
  }
  std::erase_if(stop_.stop_strings, [](const std::string& s) { return s.empty(); });
}

bool StopChecker::IsStopId(int32_t token) const {
  return std::find(stop_ids_.begin(), stop_ids_.end(), token) != stop_ids_.end();
}

std::string StopChecker::Flush() {
  std::string out = std::move(pending_);
  pending_.clear();
  if (tokenizer_ != nullptr) out += decoder_.Flush();
  return out;
}

std::string StopChecker::PushText(int32_t token, bool check_stop_strings, bool* matched) {
  *matched = false;
  if (tokenizer_ == nullptr) return {};
  pending_ += decoder_.Push(token);
  if (!check_stop_strings || stop_.stop_strings.empty()) return std::exchange(pending_, {});
  // Earliest complete stop string wins.
  size_t first = std::string::npos;
  for (const std::string& s : stop_.stop_strings) first = std::min(first, pending_.find(s));
  if (first != std::string::npos) {
    *matched = true;
    std::string out = pending_.substr(0, first);
    pending_.clear();
    return out;
  }
  // Hold back the longest tail that is a proper prefix of some stop string.
  size_t hold = 0;
  for (const std::string& s : stop_.stop_strings) {
    for (size_t n = std::min(s.size() - 1, pending_.size()); n > hold; --n) {
      if (pending_.compare(pending_.size() - n, n, s, 0, n) == 0) {
        hold = n;
        break;
      }
    }
  }
  std::string out = pending_.substr(0, pending_.size() - hold);
  pending_.erase(0, pending_.size() - hold);
  return out;
}

StopChecker::Outcome StopChecker::OnSampled(int32_t token, int64_t num_generated) {
  Outcome o;
  if (IsStopId(token)) {
    o.text = Flush();
    o.finish = FinishReason::kStop;
    return o;
  }
  bool matched = false;
  o.text = PushText(token, /*check_stop_strings=*/true, &matched);
  if (matched) {
    o.finish = FinishReason::kStop;
  } else if (num_generated >= stop_.max_tokens) {
    o.text += Flush();
    o.finish = FinishReason::kLength;
  }
  return o;
}

StopChecker::Outcome StopChecker::OnForced(int32_t token, bool is_last) {
  Outcome o;
  bool matched = false;
  o.text = PushText(token, /*check_stop_strings=*/false, &matched);
  if (is_last) {
    o.text += Flush();
    o.finish = FinishReason::kStop;
  }
  return o;
}

}  // namespace kvkeep
