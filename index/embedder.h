// Embedder: text -> a fixed-size vector of unit length, the one interface the index,
// the episode clustering and the router see. Implementations: HashedEmbedder (index/,
// no weights), BertEmbedder (engine/, a sentence encoder) and CombinedEmbedder (a
// weighted concatenation of others, so one inner product mixes lexical and dense scores).
//
// Thread-safety: implementations say; none of today's is safe for concurrent Embed calls
// on one object.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "base/status.h"

namespace kvkeep::index {

class Embedder {
 public:
  virtual ~Embedder() = default;
  // A short stable name: "hashed", "bert", "hybrid".
  virtual std::string name() const = 0;
  virtual int32_t dim() const = 0;
  // Returns texts.size() rows of dim() floats, row-major. Each row has unit L2 norm,
  // except a text with nothing to embed (no word at all), whose row is all zeros.
  virtual Result<std::vector<float>> Embed(const std::vector<std::string>& texts) = 0;
  // Lets an embedder with corpus statistics (the hashed IDF) learn from texts added to
  // the history. The default learns nothing.
  virtual void Observe(const std::vector<std::string>& texts) {}
};

// Scales each of `rows` rows of `dim` floats to unit L2 norm; all-zero rows stay zero.
void NormalizeRows(float* data, int64_t rows, int64_t dim);

// Inner product of two dim-length vectors.
float Dot(const float* a, const float* b, int64_t dim);

// Row-wise concatenation of parts (each rows x dims[i]), part i scaled by
// sqrt(weights[i]), rows renormalised: the vectors CombinedEmbedder makes.
std::vector<float> ConcatWeighted(const std::vector<const std::vector<float>*>& parts,
                                  const std::vector<int32_t>& dims,
                                  const std::vector<float>& weights, int64_t rows);

// Concatenates parts' vectors, each scaled by sqrt(weight), then renormalises, so that
// for unit-length parts <x, y> = sum_i weight_i <x_i, y_i> (weights summing to 1).
// Owns its parts. Observe is forwarded to every part.
class CombinedEmbedder final : public Embedder {
 public:
  struct Part {
    std::unique_ptr<Embedder> embedder;
    float weight = 1.0f;
  };
  // REQUIRES: parts non-empty, weights > 0.
  explicit CombinedEmbedder(std::vector<Part> parts, std::string name = "hybrid");
  std::string name() const override { return name_; }
  int32_t dim() const override { return dim_; }
  Result<std::vector<float>> Embed(const std::vector<std::string>& texts) override;
  void Observe(const std::vector<std::string>& texts) override;

 private:
  std::vector<Part> parts_;
  std::string name_;
  int32_t dim_ = 0;
};

}  // namespace kvkeep::index
