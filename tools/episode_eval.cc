#include "tools/episode_eval.h"

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <set>

#include "index/embedder.h"

namespace kvkeep::tools {

PreparedConversation Prepare(const LocomoConversation& conv,
                             const index::SegmenterOptions& options) {
  PreparedConversation p;
  p.windows = index::MakeWindows(conv.turns, options);
  std::vector<int32_t> window_of_turn(conv.turns.size(), -1);
  for (size_t w = 0; w < p.windows.size(); ++w) {
    p.window_texts.push_back(p.windows[w].text);
    for (int32_t m = p.windows[w].first_message; m < p.windows[w].end_message; ++m) {
      window_of_turn[m] = static_cast<int32_t>(w);
    }
  }
  for (const LocomoQuestion& q : conv.questions) {
    if (q.category < 1 || q.category > 4) continue;
    std::set<int32_t> windows;
    for (const std::string& id : q.evidence) {
      auto it = conv.turn_of_dia_id.find(id);
      if (it != conv.turn_of_dia_id.end()) windows.insert(window_of_turn[it->second]);
    }
    if (windows.empty()) {
      ++p.num_skipped_questions;
      continue;
    }
    p.questions.push_back(q.question);
    p.evidence.emplace_back(windows.begin(), windows.end());
  }
  return p;
}

Result<EpisodeMetrics> Evaluate(const std::vector<EmbeddedConversation>& conversations,
                                int32_t num_episodes, const std::vector<uint64_t>& seeds,
                                const index::ClusterOptions& cluster,
                                const index::RouterOptions& router) {
  EpisodeMetrics m;
  m.num_episodes = num_episodes;
  if (seeds.empty()) return Status::InvalidArgument("eval-episodes: no seeds");
  int64_t evaluated = 0;
  for (uint64_t seed : seeds) {
    for (const EmbeddedConversation& conv : conversations) {
      if (conv.num_windows == 0 || conv.evidence.empty()) continue;
      index::ClusterOptions options = cluster;
      options.num_episodes = num_episodes;
      options.seed = seed;
      const bool split = conv.cluster_dim > 0;
      if (split && router.method == index::RouteMethod::kCentroid) {
        return Status::InvalidArgument("eval-episodes: centroid routing needs one space");
      }
      ASSIGN_OR_RETURN(
          index::EpisodeSet set,
          index::ClusterEpisodes(split ? conv.cluster_vectors : conv.window_vectors,
                                 conv.num_windows, split ? conv.cluster_dim : conv.dim, options));
      const auto num_sets = static_cast<double>(set.episodes.size());
      std::vector<float> scores(static_cast<size_t>(conv.num_windows));
      for (size_t q = 0; q < conv.evidence.size(); ++q) {
        std::vector<float> query(conv.question_vectors.begin() + q * conv.dim,
                                 conv.question_vectors.begin() + (q + 1) * conv.dim);
        for (int32_t w = 0; w < conv.num_windows; ++w) {
          scores[w] = index::Dot(query.data(), conv.window_vectors.data() + w * conv.dim, conv.dim);
        }
        ASSIGN_OR_RETURN(int32_t routed, index::RouteQuery(set, query, scores, router));
        const auto& medoids = set.episodes[routed].medoid_windows;
        std::set<int32_t> holding;
        bool hit = false;
        bool medoid_hit = false;
        for (int32_t w : conv.evidence[q]) {
          holding.insert(set.assignment[w]);
          hit = hit || set.assignment[w] == routed;
          medoid_hit = medoid_hit || std::binary_search(medoids.begin(), medoids.end(), w);
        }
        m.hit_at_1 += hit ? 1.0 : 0.0;
        m.medoid_coverage += medoid_hit ? 1.0 : 0.0;
        m.chance += static_cast<double>(holding.size()) / num_sets;
        ++evaluated;
      }
    }
  }
  if (evaluated == 0) return Status::InvalidArgument("eval-episodes: no question to evaluate");
  m.hit_at_1 /= static_cast<double>(evaluated);
  m.chance /= static_cast<double>(evaluated);
  m.medoid_coverage /= static_cast<double>(evaluated);
  m.num_questions = evaluated / static_cast<int64_t>(seeds.size());
  return m;
}

Result<index::RouterOptions> ParseRouter(const std::string& text) {
  index::RouterOptions r;
  if (text == "centroid") {
    r.method = index::RouteMethod::kCentroid;
    return r;
  }
  if (text.rfind("top:", 0) == 0) {
    const std::string k = text.substr(4);
    if (!k.empty() && k.size() < 4 && std::all_of(k.begin(), k.end(), ::isdigit) &&
        std::stoi(k) > 0) {
      r.method = index::RouteMethod::kTopWindows;
      r.top_windows = std::stoi(k);
      return r;
    }
  }
  if (text.rfind("soft:", 0) == 0) {
    char* end = nullptr;
    const float t = std::strtof(text.c_str() + 5, &end);
    if (end != nullptr && *end == '\0' && t > 0.0f && t < 10.0f) {
      r.method = index::RouteMethod::kSoftWindows;
      r.temperature = t;
      return r;
    }
  }
  return Status::InvalidArgument("router '" + text +
                                 "': use centroid, top:K (K >= 1) or soft:T (0 < T < 10)");
}

std::string RouterName(const index::RouterOptions& router) {
  switch (router.method) {
    case index::RouteMethod::kCentroid:
      return "centroid";
    case index::RouteMethod::kTopWindows:
      return "top:" + std::to_string(router.top_windows);
    case index::RouteMethod::kSoftWindows: {
      char buf[32];
      std::snprintf(buf, sizeof(buf), "soft:%g", router.temperature);
      return buf;
    }
  }
  return "?";
}

}  // namespace kvkeep::tools
