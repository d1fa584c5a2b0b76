#include "index/episodes.h"

#include <faiss/Clustering.h>
#include <faiss/IndexFlat.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <random>

#include "index/embedder.h"

namespace kvkeep::index {
namespace {

// k-means++ seeding on unit vectors: squared distance = 2 - 2 <x, c>.
std::vector<float> SeedPlusPlus(const std::vector<float>& x, int32_t n, int32_t dim, int32_t k,
                                std::mt19937_64& rng) {
  std::vector<float> centroids;
  centroids.reserve(static_cast<size_t>(k) * dim);
  std::vector<double> nearest_d2(static_cast<size_t>(n), 4.0);
  int32_t pick = std::uniform_int_distribution<int32_t>(0, n - 1)(rng);
  for (int32_t c = 0; c < k; ++c) {
    const float* chosen = x.data() + static_cast<size_t>(pick) * dim;
    centroids.insert(centroids.end(), chosen, chosen + dim);
    double total = 0.0;
    for (int32_t i = 0; i < n; ++i) {
      const double d2 =
          std::max(0.0, 2.0 - 2.0 * Dot(x.data() + static_cast<size_t>(i) * dim, chosen, dim));
      nearest_d2[i] = std::min(nearest_d2[i], d2);
      total += nearest_d2[i];
    }
    if (c + 1 == k) break;
    if (total <= 0.0) {  // all points coincide with chosen ones: any point will do
      pick = std::uniform_int_distribution<int32_t>(0, n - 1)(rng);
      continue;
    }
    double r = std::uniform_real_distribution<double>(0.0, total)(rng);
    pick = n - 1;
    for (int32_t i = 0; i < n; ++i) {
      r -= nearest_d2[i];
      if (r <= 0.0) {
        pick = i;
        break;
      }
    }
  }
  return centroids;
}

// Assigns each point to its most similar centroid; returns the total similarity.
double Assign(const std::vector<float>& x, int32_t n, int32_t dim,
              const std::vector<float>& centroids, int32_t k, std::vector<int32_t>* assignment) {
  assignment->assign(static_cast<size_t>(n), 0);
  double total = 0.0;
  for (int32_t i = 0; i < n; ++i) {
    float best = -2.0f;
    for (int32_t c = 0; c < k; ++c) {
      const float s = Dot(x.data() + static_cast<size_t>(i) * dim,
                          centroids.data() + static_cast<size_t>(c) * dim, dim);
      if (s > best) {
        best = s;
        (*assignment)[i] = c;
      }
    }
    total += best;
  }
  return total;
}

}  // namespace

Result<EpisodeSet> ClusterEpisodes(const std::vector<float>& vectors, int32_t num_windows,
                                   int32_t dim, const ClusterOptions& options) {
  if (num_windows <= 0 || dim <= 0) {
    return Status::InvalidArgument("episodes: nothing to cluster");
  }
  if (vectors.size() != static_cast<size_t>(num_windows) * dim) {
    return Status::InvalidArgument("episodes: vector count does not match windows x dim");
  }
  const int32_t k = std::clamp(options.num_episodes, 1, num_windows);
  std::mt19937_64 rng(options.seed);
  EpisodeSet best;
  best.objective = -1e300;
  for (int32_t restart = 0; restart < std::max(options.restarts, 1); ++restart) {
    std::vector<float> centroids = SeedPlusPlus(vectors, num_windows, dim, k, rng);
    try {
      faiss::ClusteringParameters cp;
      cp.niter = options.iterations;
      cp.nredo = 1;
      cp.spherical = true;
      cp.seed = static_cast<int>(options.seed + restart);
      cp.min_points_per_centroid = 1;  // short histories are normal, not a warning
      cp.max_points_per_centroid = 1 << 30;
      faiss::Clustering clustering(dim, k, cp);
      clustering.centroids = centroids;  // used as the initialisation
      faiss::IndexFlatIP assigner(dim);
      clustering.train(num_windows, vectors.data(), assigner);
      centroids = clustering.centroids;
    } catch (const std::exception& e) {
      return Status::Internal(std::string("faiss clustering: ") + e.what());
    }
    NormalizeRows(centroids.data(), k, dim);
    std::vector<int32_t> assignment;
    const double objective = Assign(vectors, num_windows, dim, centroids, k, &assignment);
    if (objective > best.objective + 1e-9) {
      best.objective = objective;
      best.assignment = std::move(assignment);
      best.episodes.assign(static_cast<size_t>(k), Episode{});
      for (int32_t c = 0; c < k; ++c) {
        best.episodes[c].centroid.assign(centroids.begin() + static_cast<size_t>(c) * dim,
                                         centroids.begin() + static_cast<size_t>(c + 1) * dim);
      }
    }
  }
  best.dim = dim;
  for (int32_t i = 0; i < num_windows; ++i) best.episodes[best.assignment[i]].members.push_back(i);
  for (Episode& e : best.episodes) {
    std::vector<std::pair<float, int32_t>> by_score;
    for (int32_t w : e.members) {
      by_score.emplace_back(
          -Dot(vectors.data() + static_cast<size_t>(w) * dim, e.centroid.data(), dim), w);
    }
    std::sort(by_score.begin(), by_score.end());
    const size_t m = std::min<size_t>(by_score.size(), std::max(options.medoid_windows, 0));
    for (size_t i = 0; i < m; ++i) e.medoid_windows.push_back(by_score[i].second);
    std::sort(e.medoid_windows.begin(), e.medoid_windows.end());
  }
  return best;
}

Result<int32_t> RouteQuery(const EpisodeSet& set, const std::vector<float>& query,
                           const std::vector<float>& window_scores, const RouterOptions& options) {
  if (set.episodes.empty()) return Status::InvalidArgument("router: no episodes");
  const auto num_episodes = static_cast<int32_t>(set.episodes.size());
  std::vector<double> score(static_cast<size_t>(num_episodes), -1e300);
  if (options.method == RouteMethod::kCentroid) {
    if (query.size() != static_cast<size_t>(set.dim)) {
      return Status::InvalidArgument("router: query dim does not match the episodes");
    }
    for (int32_t e = 0; e < num_episodes; ++e) {
      score[e] = Dot(query.data(), set.episodes[e].centroid.data(), set.dim);
    }
  } else if (options.method == RouteMethod::kSoftWindows) {
    if (window_scores.size() != set.assignment.size()) {
      return Status::InvalidArgument("router: need one score per window");
    }
    const double t = std::max(options.temperature, 1e-4f);
    const float top = *std::max_element(window_scores.begin(), window_scores.end());
    for (int32_t e = 0; e < num_episodes; ++e) {
      double sum = 0.0;
      for (int32_t w : set.episodes[e].members) sum += std::exp((window_scores[w] - top) / t);
      if (sum > 0.0) score[e] = t * std::log(sum);
    }
  } else {
    if (window_scores.size() != set.assignment.size()) {
      return Status::InvalidArgument("router: need one score per window");
    }
    const int32_t top = std::max(options.top_windows, 1);
    for (int32_t e = 0; e < num_episodes; ++e) {
      std::vector<float> s;
      for (int32_t w : set.episodes[e].members) s.push_back(window_scores[w]);
      if (s.empty()) continue;
      const size_t m = std::min<size_t>(s.size(), static_cast<size_t>(top));
      std::partial_sort(s.begin(), s.begin() + m, s.end(), std::greater<float>());
      score[e] = std::accumulate(s.begin(), s.begin() + m, 0.0) / static_cast<double>(m);
    }
  }
  return static_cast<int32_t>(std::max_element(score.begin(), score.end()) - score.begin());
}

}  // namespace kvkeep::index
