// Episodes: a session's window vectors clustered into E episodes with faiss::Clustering,
// and the routing of a query to one of them.
//
// Clustering: spherical k-means (faiss::Clustering, inner product, unit centroids). Each
// restart seeds its centroids k-means++ style (the first uniformly, each next one with
// probability proportional to its squared distance from the nearest chosen), runs
// options.iterations of Lloyd in FAISS, and the restart with the largest total similarity
// of points to their centroid wins. Everything draws from one std::mt19937_64 seeded by
// options.seed, and FAISS runs with a fixed seed too, so a fixed seed gives the same
// episodes.
//
// Each episode keeps its centroid, its member windows (in order) and its medoid windows:
// the options.medoid_windows members nearest the centroid, listed in history order (the
// medoid prompt P_e is their text joined in that order).
//
// Thread-safety: pure functions over their arguments.
#pragma once

#include <cstdint>
#include <vector>

#include "base/status.h"

namespace kvkeep::index {

struct ClusterOptions {
  int32_t num_episodes = 4;  // E; fewer when there are fewer windows
  int32_t restarts = 5;
  int32_t iterations = 25;
  uint64_t seed = 1234;
  int32_t medoid_windows = 3;
};

struct Episode {
  std::vector<float> centroid;          // unit length
  std::vector<int32_t> members;         // window indices, ascending
  std::vector<int32_t> medoid_windows;  // nearest the centroid, ascending
};

struct EpisodeSet {
  int32_t dim = 0;
  std::vector<Episode> episodes;
  std::vector<int32_t> assignment;  // window index -> episode
  double objective = 0.0;           // sum of each window's similarity to its centroid
};

// REQUIRES: vectors.size() == num_windows * dim. Zero windows give InvalidArgument.
Result<EpisodeSet> ClusterEpisodes(const std::vector<float>& vectors, int32_t num_windows,
                                   int32_t dim, const ClusterOptions& options);

// How a query picks its episode.
enum class RouteMethod {
  kCentroid,     // the largest <query, centroid>
  kTopWindows,   // the largest mean of the episode's top_windows best window scores
  kSoftWindows,  // the largest temperature * log(sum over members of exp(score / temperature))
};

struct RouterOptions {
  RouteMethod method = RouteMethod::kTopWindows;
  int32_t top_windows = 1;    // kTopWindows only; 1 is "the episode of the nearest window"
  float temperature = 0.05f;  // kSoftWindows only; toward 0 it becomes top_windows = 1
};

// Picks an episode for a query. query has dim floats (kCentroid); window_scores holds the
// query's score against every window (kTopWindows, kSoftWindows). Returns the episode index.
Result<int32_t> RouteQuery(const EpisodeSet& set, const std::vector<float>& query,
                           const std::vector<float>& window_scores, const RouterOptions& options);

}  // namespace kvkeep::index
