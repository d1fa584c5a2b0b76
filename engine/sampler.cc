#include "engine/sampler.h"

#include <algorithm>
#include <cmath>

namespace kvkeep {

Sampler::Sampler(const SamplingParams& params) : params_(params), rng_(params.seed) {}

int32_t Sampler::Argmax(const float* logits, int32_t vocab_size) {
  int32_t best = 0;
  float best_value = -INFINITY;
  bool found = false;
  for (int32_t i = 0; i < vocab_size; ++i) {
    float v = logits[i];
    if (std::isnan(v)) continue;
    if (!found || v > best_value) {
      best = i;
      best_value = v;
      found = true;
    }
  }
  return best;
}

std::vector<std::pair<int32_t, float>> Sampler::Candidates(const SamplingParams& params,
                                                           const float* logits,
                                                           int32_t vocab_size) {
  std::vector<std::pair<int32_t, float>> c;  // (token, scaled logit), later probability
  c.reserve(vocab_size);
  const float inv_t = params.temperature > 0.0f ? 1.0f / params.temperature : 1.0f;
  for (int32_t i = 0; i < vocab_size; ++i) {
    if (!std::isnan(logits[i])) c.emplace_back(i, logits[i] * inv_t);
  }
  if (c.empty()) return {{0, 1.0f}};
  auto more_likely = [](const auto& a, const auto& b) {
    return a.second > b.second || (a.second == b.second && a.first < b.first);
  };
  size_t keep = c.size();
  if (params.top_k > 0 && static_cast<size_t>(params.top_k) < keep) {
    keep = params.top_k;
    std::nth_element(c.begin(), c.begin() + keep - 1, c.end(), more_likely);
    c.resize(keep);
  }
  std::sort(c.begin(), c.end(), more_likely);
  // Softmax in double for a stable nucleus boundary.
  const double max_logit = c.front().second;
  std::vector<double> p(c.size());
  double sum = 0;
  for (size_t i = 0; i < c.size(); ++i) sum += p[i] = std::exp(double{c[i].second} - max_logit);
  for (double& x : p) x /= sum;
  if (params.top_p < 1.0f) {
    double mass = 0;
    size_t n = 0;
    while (n < p.size()) {
      mass += p[n++];
      if (mass >= params.top_p) break;
    }
    keep = std::max<size_t>(n, 1);
    c.resize(keep);
    p.resize(keep);
    sum = 0;
    for (double x : p) sum += x;
    for (double& x : p) x /= sum;
  }
  for (size_t i = 0; i < c.size(); ++i) c[i].second = static_cast<float>(p[i]);
  return c;
}

double Sampler::NextUniform() { return static_cast<double>(rng_() >> 11) * 0x1.0p-53; }

int32_t Sampler::Sample(const float* logits, int32_t vocab_size) {
  if (is_greedy()) return Argmax(logits, vocab_size);
  auto c = Candidates(params_, logits, vocab_size);
  const double u = NextUniform();
  double acc = 0;
  for (const auto& [token, prob] : c) {
    acc += prob;
    if (u < acc) return token;
  }
  return c.back().first;  // rounding: u landed past the accumulated mass
}

}  // namespace kvkeep
