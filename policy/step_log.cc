#include "policy/step_log.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <sstream>

namespace kvkeep {
namespace {

constexpr char kHeader[] =
    "at_s,step_s,decode_sequences,decode_context_tokens,prefill_runs,prefill_tokens,"
    "attention_pairs,swapped_in_blocks,swapped_out_blocks";
constexpr int kColumns = 9;

bool ParseField(const std::string& text, double* out) {
  char* end = nullptr;
  *out = std::strtod(text.c_str(), &end);
  return !text.empty() && *end == '\0' && std::isfinite(*out) && *out >= 0;
}

}  // namespace

void StepLog::Add(const StepTiming& step) {
  if (steps_.size() < capacity_) {
    steps_.push_back(step);
  } else {
    ++dropped_;
  }
}

Status StepLog::Write(Env* env, const std::string& path) const {
  std::string out = std::string(kHeader) + "\n";
  char line[256];
  for (const StepTiming& s : steps_) {
    std::snprintf(line, sizeof(line), "%.6f,%.7f,%lld,%lld,%lld,%lld,%.0f,%lld,%lld\n", s.at_s,
                  s.step_s, static_cast<long long>(s.decode_sequences),
                  static_cast<long long>(s.decode_context_tokens),
                  static_cast<long long>(s.prefill_runs), static_cast<long long>(s.prefill_tokens),
                  s.attention_pairs, static_cast<long long>(s.swapped_in_blocks),
                  static_cast<long long>(s.swapped_out_blocks));
    out += line;
  }
  return env->WriteFileAtomic(path, out);
}

Result<std::vector<StepTiming>> ReadStepLog(Env* env, const std::string& path) {
  ASSIGN_OR_RETURN(std::string text, env->ReadFile(path));
  std::istringstream in(text);
  std::string line;
  if (!std::getline(in, line) || line != kHeader) {
    return Status::InvalidArgument(path + ": not a step log (first line must be \"" + kHeader +
                                   "\")");
  }
  std::vector<StepTiming> steps;
  for (int lineno = 2; std::getline(in, line); ++lineno) {
    if (line.empty()) continue;
    double v[kColumns];
    std::istringstream fields(line);
    std::string field;
    int n = 0;
    while (std::getline(fields, field, ',')) {
      if (n == kColumns || !ParseField(field, &v[n])) {
        n = -1;
        break;
      }
      ++n;
    }
    if (n != kColumns) {
      return Status::InvalidArgument(path + ":" + std::to_string(lineno) + ": expected " +
                                     std::to_string(kColumns) + " numbers >= 0");
    }
    auto count = [](double x) { return static_cast<int64_t>(std::min(x, 1e15)); };
    steps.push_back({v[0], v[1], count(v[2]), count(v[3]), count(v[4]), count(v[5]), v[6],
                     count(v[7]), count(v[8])});
  }
  return steps;
}

std::vector<TimingSample> StepSamples(const std::vector<StepTiming>& steps) {
  std::vector<TimingSample> samples;
  for (const StepTiming& s : steps) {
    if (s.swapped_in_blocks > 0 || s.swapped_out_blocks > 0 || !(s.step_s > 0)) continue;
    if (s.decode_sequences == 0 && s.prefill_tokens == 0) continue;
    TimingSample t;
    t.kind = TimingSample::Kind::kStep;
    t.new_tokens = s.prefill_tokens;
    t.context_tokens = s.decode_context_tokens;
    t.sequences = s.decode_sequences;
    t.attention_pairs = s.attention_pairs;
    t.seconds = s.step_s;
    samples.push_back(t);
  }
  return samples;
}

}  // namespace kvkeep
