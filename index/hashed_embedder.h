// HashedEmbedder: TF-IDF over feature-hashed word unigrams and bigrams. Needs no weights,
// so it is always available (the fallback embedder).
//
//   words:    lower-cased runs of ASCII letters/digits (bytes >= 0x80 count as letters);
//   features: each word, and each adjacent pair "a b", hashed (FNV-1a, then SplitMix64)
//             to a bucket in [0, dim) with a sign from a separate hash bit;
//   weight:   (1 + ln tf) * idf, idf = ln((1 + N) / (1 + df)) + 1 over the N texts
//             Observe()d so far (df counted per bucket), then L2-normalised.
//
// The IDF is learned online: one HashedEmbedder per tenant (or per session) observes the
// texts added to its history. Vectors embedded earlier keep the IDF of their time.
//
// Thread-safety: none; callers serialise Embed and Observe.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "index/embedder.h"

namespace kvkeep::index {

struct HashedEmbedderOptions {
  int32_t dim = 4096;     // buckets; a power of two is not required
  bool bigrams = true;    // add adjacent word pairs as features
  bool learn_idf = true;  // false: idf = 1 for every feature (plain sublinear TF)
};

class HashedEmbedder final : public Embedder {
 public:
  explicit HashedEmbedder(HashedEmbedderOptions options = {});
  std::string name() const override { return "hashed"; }
  int32_t dim() const override { return options_.dim; }
  Result<std::vector<float>> Embed(const std::vector<std::string>& texts) override;
  void Observe(const std::vector<std::string>& texts) override;

  int64_t num_observed() const { return num_observed_; }
  // The learned IDF state (texts observed, document frequency per bucket), so a tenant's
  // IDF survives a restart (daemon/episode_codec.h persists it).
  const std::vector<int64_t>& doc_freq() const { return doc_freq_; }
  // Replaces the learned state. InvalidArgument when doc_freq.size() != dim(), a count is
  // negative or above num_observed.
  Status SetIdfState(int64_t num_observed, std::vector<int64_t> doc_freq);
  // The lower-cased words of text, as the embedder sees them (exposed for tests).
  static std::vector<std::string> Words(std::string_view text);

 private:
  struct Feature {
    int32_t bucket;
    float sign;
  };
  std::vector<Feature> Features(std::string_view text) const;
  float Idf(int32_t bucket) const;

  HashedEmbedderOptions options_;
  std::vector<int64_t> doc_freq_;  // per bucket
  int64_t num_observed_ = 0;
};

}  // namespace kvkeep::index
