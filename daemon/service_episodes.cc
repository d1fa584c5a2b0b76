// Service: the episode verbs and hooks (session.query, indexing appended messages, routing
// a turn of an over-budget session). docs/episodes.md "In the daemon".
#include <spdlog/spdlog.h>

#include <algorithm>

#include "daemon/engine_session.h"
#include "daemon/service.h"

namespace kvkeep {

using json = nlohmann::json;

void Service::IndexNewLocked(const Session& s, size_t first) const {
  if (!deps_.episodes || first >= s.messages.size()) return;
  std::vector<IndexedMessage> msgs;
  for (size_t i = first; i < s.messages.size(); ++i) {
    msgs.push_back({static_cast<int64_t>(i), s.messages[i].role, s.messages[i].content});
  }
  deps_.episodes->Append(s.owner_uid, s.id, std::move(msgs), static_cast<int64_t>(s.tokens.size()));
}

void Service::LoadEpisodesLocked(const Session& s) const {
  if (!deps_.episodes || !s.damage.empty()) return;
  std::vector<IndexedMessage> msgs;
  for (size_t i = 0; i < s.messages.size(); ++i) {
    msgs.push_back({static_cast<int64_t>(i), s.messages[i].role, s.messages[i].content});
  }
  deps_.episodes->Load(s.owner_uid, s.id, std::move(msgs), static_cast<int64_t>(s.tokens.size()));
}

Service::Reply Service::Query(const Ctx& ctx) {
  if (!deps_.episodes) return Status::Unavailable("the episode index is off in this daemon");
  ASSIGN_OR_RETURN(auto s, FindSession(ctx));
  ASSIGN_OR_RETURN(std::string text, ctx.params.String("text"));
  if (!ctx.params.Has("k")) return Status::InvalidArgument("'k' is required");
  ASSIGN_OR_RETURN(int64_t k, ctx.params.IntOr("k", 0, 1, 1000));
  if (text.empty()) return Status::InvalidArgument("'text' must not be empty");
  {
    std::lock_guard<std::mutex> lock(s->mu);
    if (s->deleted) return Status::NotFound("no session '" + s->id + "'");
    if (s->closed) {  // its index waits in the store
      return Status::InvalidArgument("session '" + s->id + "' is closed (reopen it to query)");
    }
  }
  // Searched without the session's lock: embedding the query may take tens of ms.
  ASSIGN_OR_RETURN(std::vector<QueryHit> hits,
                   deps_.episodes->Query(s->owner_uid, s->id, text, static_cast<int32_t>(k)));
  json out = json::array();
  std::lock_guard<std::mutex> lock(s->mu);
  for (const QueryHit& h : hits) {
    json jh = {{"segment", h.segment},
               {"score", h.score},
               {"first_message", h.ref.first_message},
               {"end_message", h.ref.end_message}};
    const auto seq = static_cast<size_t>(h.ref.first_message);
    if (seq < s->messages.size()) {
      const std::string& content = s->messages[seq].content;
      const auto begin =
          static_cast<size_t>(std::clamp<int64_t>(h.ref.begin_byte, 0, content.size()));
      const auto end = static_cast<size_t>(std::clamp<int64_t>(h.ref.end_byte, 0, content.size()));
      jh["role"] = s->messages[seq].role;
      if (end > begin) jh["text"] = content.substr(begin, end - begin);
    }
    out.push_back(std::move(jh));
  }
  json info = deps_.episodes->InfoJson(s->owner_uid, s->id);
  return json{{"session", s->id},
              {"hits", std::move(out)},
              {"indexed_messages", info.value("indexed_messages", 0)},
              {"num_messages", s->messages.size()}};
}

json Service::RouteTurnLocked(const Session& s, GenerateRequest* req) {
  if (!deps_.episodes || s.messages.empty() || s.messages.back().role != "user") return json();
  const int64_t seq = static_cast<int64_t>(s.messages.size()) - 1;
  const Message& user = s.messages.back();
  auto route = deps_.episodes->Route(s.owner_uid, s.id, seq, user.content,
                                     static_cast<int64_t>(s.tokens.size()));
  if (!route.ok()) {  // the index never fails a turn: full KV serves it
    spdlog::error("episodes: routing a turn of '{}': {}", s.id, route.status().ToString());
    return json();
  }
  if (!*route) return json();  // within budget: full KV, unchanged
  json out = {{"episode", (*route)->episode >= 0 ? json((*route)->episode) : json()},
              {"num_episodes", (*route)->num_episodes},
              {"served_by", "full_kv"}};
  if ((*route)->episode < 0 || !deps_.serve_episode) return out;
  EpisodeTurn turn;
  turn.owner_uid = s.owner_uid;
  turn.session = s.id;
  turn.engine_session = EngineSessionOf(s.owner_uid, s.id);
  turn.episode = (*route)->episode;
  turn.num_episodes = (*route)->num_episodes;
  turn.version = (*route)->version;
  turn.budget_tokens = (*route)->budget_tokens;
  turn.history_tokens = static_cast<int64_t>(s.tokens.size() - user.tokens.size());
  for (const auto& [first, end] : (*route)->medoid_messages) {
    for (int64_t i = first; i < std::min<int64_t>(end, seq); ++i) {
      const Message& m = s.messages[static_cast<size_t>(i)];
      turn.medoid_prompt += m.role + ": " + m.content + "\n";
      turn.medoid_tokens.insert(turn.medoid_tokens.end(), m.tokens.begin(), m.tokens.end());
    }
  }
  turn.message_seq = seq;
  turn.new_message = user.content;
  turn.new_message_tokens = user.tokens;
  auto served = deps_.serve_episode(turn, req);
  if (!served.ok()) {
    spdlog::error("episodes: serving '{}' from episode {}: {}; full KV serves it", s.id,
                  turn.episode, served.status().ToString());
    return out;
  }
  // served_by stays full_kv until the finished turn says the cache served it
  // (EpisodeServedLocked): the engine falls back to full KV when it cannot build it.
  return out;
}

void Service::EpisodeServedLocked(const Session& s, const Usage& usage, json* route) {
  if (route->is_null() || !usage.from_episode_cache || !deps_.episodes) return;
  (*route)["served_by"] = "episode_cache";
  (*route)["kv_blocks"] = usage.kv_blocks;
  deps_.episodes->MarkServedFromEpisode(s.owner_uid, s.id,
                                        static_cast<int64_t>(s.messages.size()) - 1);
}

}  // namespace kvkeep
