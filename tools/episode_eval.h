// The retrieval half of the episode evaluation (`kvkeep eval-episodes`): windows of a
// LoCoMo conversation are embedded and clustered into E episodes, every question of
// categories 1-4 is routed to one, and three rates are measured per question:
//   hit@1:           the routed episode holds a window with an evidence turn;
//   chance:          the fraction of the E episodes holding an evidence window (what a
//                    uniformly random episode scores);
//   medoid coverage: the routed episode's medoid windows hold an evidence turn.
// Rates are means over questions, then over k-means seeds.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "index/episodes.h"
#include "index/segmenter.h"
#include "tools/locomo.h"

namespace kvkeep::tools {

// One conversation made ready for clustering: its windows, their vectors, and the
// evaluated questions with their vectors and evidence windows.
struct EmbeddedConversation {
  int32_t dim = 0;
  int32_t num_windows = 0;
  std::vector<float> window_vectors;           // num_windows x dim
  std::vector<float> question_vectors;         // questions x dim
  std::vector<std::vector<int32_t>> evidence;  // per question: window indices
  int32_t num_skipped_questions = 0;           // categories 1-4 with no known evidence
  // When set, k-means runs on these (num_windows x cluster_dim) instead, and only the
  // window-score routers use window_vectors (an experiment of --sweep-split).
  int32_t cluster_dim = 0;
  std::vector<float> cluster_vectors;
};

// The windows and evaluated questions of a conversation (categories 1-4 with at least one
// evidence turn found).
struct PreparedConversation {
  std::vector<index::Segment> windows;
  std::vector<std::string> window_texts;
  std::vector<std::string> questions;
  std::vector<std::vector<int32_t>> evidence;
  int32_t num_skipped_questions = 0;
};
PreparedConversation Prepare(const LocomoConversation& conv,
                             const index::SegmenterOptions& options);

struct EpisodeMetrics {
  int32_t num_episodes = 0;
  double hit_at_1 = 0.0;
  double chance = 0.0;
  double medoid_coverage = 0.0;
  int64_t num_questions = 0;  // per seed
};

// Clusters every conversation with each seed and routes its questions.
Result<EpisodeMetrics> Evaluate(const std::vector<EmbeddedConversation>& conversations,
                                int32_t num_episodes, const std::vector<uint64_t>& seeds,
                                const index::ClusterOptions& cluster,
                                const index::RouterOptions& router);

// "centroid", "top:K" (K >= 1) or "soft:T" (temperature T).
Result<index::RouterOptions> ParseRouter(const std::string& text);
std::string RouterName(const index::RouterOptions& router);

}  // namespace kvkeep::tools
