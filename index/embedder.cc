#include "index/embedder.h"

#include <cmath>

namespace kvkeep::index {

void NormalizeRows(float* data, int64_t rows, int64_t dim) {
  for (int64_t r = 0; r < rows; ++r) {
    float* row = data + r * dim;
    double sum_sq = 0.0;
    for (int64_t i = 0; i < dim; ++i) sum_sq += static_cast<double>(row[i]) * row[i];
    if (sum_sq <= 0.0) continue;
    const float inv = static_cast<float>(1.0 / std::sqrt(sum_sq));
    for (int64_t i = 0; i < dim; ++i) row[i] *= inv;
  }
}

float Dot(const float* a, const float* b, int64_t dim) {
  float sum = 0.0f;
  for (int64_t i = 0; i < dim; ++i) sum += a[i] * b[i];
  return sum;
}

std::vector<float> ConcatWeighted(const std::vector<const std::vector<float>*>& parts,
                                  const std::vector<int32_t>& dims,
                                  const std::vector<float>& weights, int64_t rows) {
  int64_t total_dim = 0;
  for (int32_t d : dims) total_dim += d;
  std::vector<float> out(static_cast<size_t>(rows * total_dim), 0.0f);
  int64_t offset = 0;
  for (size_t p = 0; p < parts.size(); ++p) {
    const int64_t d = dims[p];
    const float scale = std::sqrt(weights[p]);
    const std::vector<float>& part = *parts[p];
    for (int64_t r = 0; r < rows; ++r) {
      for (int64_t i = 0; i < d; ++i) out[r * total_dim + offset + i] = scale * part[r * d + i];
    }
    offset += d;
  }
  NormalizeRows(out.data(), rows, total_dim);
  return out;
}

CombinedEmbedder::CombinedEmbedder(std::vector<Part> parts, std::string name)
    : parts_(std::move(parts)), name_(std::move(name)) {
  for (const Part& p : parts_) dim_ += p.embedder->dim();
}

Result<std::vector<float>> CombinedEmbedder::Embed(const std::vector<std::string>& texts) {
  std::vector<std::vector<float>> vectors;
  std::vector<const std::vector<float>*> parts;
  std::vector<int32_t> dims;
  std::vector<float> weights;
  vectors.reserve(parts_.size());
  for (Part& p : parts_) {
    ASSIGN_OR_RETURN(std::vector<float> part, p.embedder->Embed(texts));
    vectors.push_back(std::move(part));
    dims.push_back(p.embedder->dim());
    weights.push_back(p.weight);
  }
  for (const auto& v : vectors) parts.push_back(&v);
  return ConcatWeighted(parts, dims, weights, static_cast<int64_t>(texts.size()));
}

void CombinedEmbedder::Observe(const std::vector<std::string>& texts) {
  for (Part& p : parts_) p.embedder->Observe(texts);
}

}  // namespace kvkeep::index
