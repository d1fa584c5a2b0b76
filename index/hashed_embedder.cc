#include "index/hashed_embedder.h"

#include <algorithm>
#include <cmath>
#include <unordered_map>

#include "base/hash64.h"

namespace kvkeep::index {
namespace {

bool IsWordByte(unsigned char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c >= 0x80;
}

}  // namespace

HashedEmbedder::HashedEmbedder(HashedEmbedderOptions options)
    : options_(options), doc_freq_(static_cast<size_t>(std::max(options.dim, 1)), 0) {
  options_.dim = std::max(options_.dim, 1);
}

std::vector<std::string> HashedEmbedder::Words(std::string_view text) {
  std::vector<std::string> words;
  std::string current;
  for (char ch : text) {
    const auto c = static_cast<unsigned char>(ch);
    if (IsWordByte(c)) {
      current.push_back(c < 0x80 ? static_cast<char>(std::tolower(c)) : ch);
    } else if (!current.empty()) {
      words.push_back(std::move(current));
      current.clear();
    }
  }
  if (!current.empty()) words.push_back(std::move(current));
  return words;
}

std::vector<HashedEmbedder::Feature> HashedEmbedder::Features(std::string_view text) const {
  const std::vector<std::string> words = Words(text);
  std::vector<Feature> features;
  features.reserve(words.size() * 2);
  auto add = [&](uint64_t h) {
    const uint64_t mixed = SplitMix64(h);
    features.push_back({static_cast<int32_t>((mixed >> 1) % static_cast<uint64_t>(options_.dim)),
                        (mixed & 1) ? 1.0f : -1.0f});
  };
  for (size_t i = 0; i < words.size(); ++i) {
    add(Fnv1a64(words[i]));
    if (options_.bigrams && i + 1 < words.size()) {
      add(Fnv1a64(words[i]) * 31 + Fnv1a64(words[i + 1]) + 0x5bd1e995);
    }
  }
  return features;
}

float HashedEmbedder::Idf(int32_t bucket) const {
  if (!options_.learn_idf) return 1.0f;
  return static_cast<float>(
      std::log((1.0 + static_cast<double>(num_observed_)) / (1.0 + doc_freq_[bucket])) + 1.0);
}

Status HashedEmbedder::SetIdfState(int64_t num_observed, std::vector<int64_t> doc_freq) {
  if (doc_freq.size() != doc_freq_.size()) {
    return Status::InvalidArgument("hashed IDF state has " + std::to_string(doc_freq.size()) +
                                   " buckets; the embedder has " +
                                   std::to_string(doc_freq_.size()));
  }
  if (num_observed < 0) return Status::InvalidArgument("hashed IDF state: negative count");
  for (int64_t df : doc_freq) {
    if (df < 0 || df > num_observed) {
      return Status::InvalidArgument("hashed IDF state: a document frequency out of range");
    }
  }
  doc_freq_ = std::move(doc_freq);
  num_observed_ = num_observed;
  return Status::OK();
}

void HashedEmbedder::Observe(const std::vector<std::string>& texts) {
  for (const std::string& text : texts) {
    std::vector<Feature> features = Features(text);
    std::vector<int32_t> buckets;
    buckets.reserve(features.size());
    for (const Feature& f : features) buckets.push_back(f.bucket);
    std::sort(buckets.begin(), buckets.end());
    buckets.erase(std::unique(buckets.begin(), buckets.end()), buckets.end());
    for (int32_t b : buckets) ++doc_freq_[b];
    ++num_observed_;
  }
}

Result<std::vector<float>> HashedEmbedder::Embed(const std::vector<std::string>& texts) {
  const int64_t dim = options_.dim;
  std::vector<float> out(texts.size() * static_cast<size_t>(dim), 0.0f);
  for (size_t r = 0; r < texts.size(); ++r) {
    // Term frequency per (bucket, sign): colliding features of opposite sign stay apart.
    std::unordered_map<int64_t, int32_t> tf;
    for (const Feature& f : Features(texts[r])) ++tf[f.bucket * 2 + (f.sign > 0 ? 1 : 0)];
    float* row = out.data() + r * dim;
    for (const auto& [key, count] : tf) {
      const auto bucket = static_cast<int32_t>(key / 2);
      const float sign = (key & 1) ? 1.0f : -1.0f;
      row[bucket] += sign * (1.0f + std::log(static_cast<float>(count))) * Idf(bucket);
    }
  }
  NormalizeRows(out.data(), static_cast<int64_t>(texts.size()), dim);
  return out;
}

}  // namespace kvkeep::index
