// HashedEmbedder against an independent dense TF-IDF: with enough buckets that no two
// features collide, its vectors equal sublinear TF x smoothed IDF computed here from
// word counts, up to the per-feature sign.
#include "index/hashed_embedder.h"

#include <gtest/gtest.h>

#include <cmath>
#include <map>
#include <set>

namespace kvkeep::index {
namespace {

TEST(HashedEmbedder, WordsAreLowerCasedAlphanumericRuns) {
  EXPECT_EQ(HashedEmbedder::Words("Hello, WORLD! it's 2023."),
            (std::vector<std::string>{"hello", "world", "it", "s", "2023"}));
}

TEST(HashedEmbedder, UnitLengthAndZeroForNoWords) {
  HashedEmbedder e;
  auto v = e.Embed({"some words here", "!!!"});
  ASSERT_TRUE(v.ok());
  double n0 = 0, n1 = 0;
  for (int i = 0; i < e.dim(); ++i) {
    n0 += (*v)[i] * (*v)[i];
    n1 += (*v)[e.dim() + i] * (*v)[e.dim() + i];
  }
  EXPECT_NEAR(n0, 1.0, 1e-5);
  EXPECT_EQ(n1, 0.0);
}

// Cosine of two texts from a dense TF-IDF over unigrams (bigrams off), computed here.
double ReferenceCosine(const std::vector<std::string>& corpus, const std::string& a,
                       const std::string& b) {
  std::map<std::string, int> df;
  for (const auto& doc : corpus) {
    auto w = HashedEmbedder::Words(doc);
    for (const auto& t : std::set<std::string>(w.begin(), w.end())) ++df[t];
  }
  auto vec = [&](const std::string& text) {
    std::map<std::string, int> tf;
    for (const auto& t : HashedEmbedder::Words(text)) ++tf[t];
    std::map<std::string, double> v;
    for (auto [t, c] : tf) {
      v[t] = (1 + std::log(c)) * (std::log((1.0 + corpus.size()) / (1.0 + df[t])) + 1.0);
    }
    return v;
  };
  auto va = vec(a), vb = vec(b);
  double dot = 0, na = 0, nb = 0;
  for (auto [t, x] : va) {
    na += x * x;
    if (vb.count(t)) dot += x * vb[t];
  }
  for (auto [t, x] : vb) nb += x * x;
  return dot / std::sqrt(na * nb);
}

TEST(HashedEmbedder, MatchesDenseTfIdfWhenNothingCollides) {
  const std::vector<std::string> corpus = {"the cat sat on the mat", "the dog ate the bone",
                                           "a cat and a dog", "stocks fell on monday"};
  HashedEmbedderOptions o;
  o.dim = 1 << 20;  // collisions among ~15 words are practically impossible
  o.bigrams = false;
  HashedEmbedder e(o);
  e.Observe(corpus);
  EXPECT_EQ(e.num_observed(), 4);
  const std::vector<std::pair<std::string, std::string>> pairs = {
      {"the cat sat", "a cat and a dog"},
      {"the dog the dog", "the dog ate the bone"},
      {"stocks fell", "the cat sat on the mat"}};
  for (const auto& [a, b] : pairs) {
    auto v = e.Embed({a, b});
    ASSERT_TRUE(v.ok());
    double dot = 0;
    for (int i = 0; i < o.dim; ++i) dot += (*v)[i] * (*v)[o.dim + i];
    EXPECT_NEAR(dot, ReferenceCosine(corpus, a, b), 1e-5) << a << " | " << b;
  }
}

TEST(HashedEmbedder, IdfDownweightsCommonWords) {
  HashedEmbedder e;
  std::vector<std::string> corpus;
  for (int i = 0; i < 50; ++i) corpus.push_back("hello there number " + std::to_string(i));
  corpus.push_back("zebra crossing");
  e.Observe(corpus);
  // "hello" is in 50 of 51 texts, "zebra" in one: a query with both leans on zebra.
  auto v = e.Embed({"hello zebra", "hello there", "zebra crossing"});
  ASSERT_TRUE(v.ok());
  auto dot = [&](int a, int b) {
    double d = 0;
    for (int i = 0; i < e.dim(); ++i) d += (*v)[a * e.dim() + i] * (*v)[b * e.dim() + i];
    return d;
  };
  EXPECT_GT(dot(0, 2), dot(0, 1));
}

}  // namespace
}  // namespace kvkeep::index
