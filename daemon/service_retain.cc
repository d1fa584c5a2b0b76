// session.retain and the `retain` field of session.generate (docs/protocol.md): an agent's
// explicit retention hint. The per-uid quota is kept here, in a RetentionBook, over the
// blocks the engine really keeps for each pinned session (Engine::RetainedBlocks, asked
// again at every hint); the pin itself goes to the engine as a kRetain hint, where it
// overrides the learned TTL.
#include <string>

#include "daemon/engine_session.h"
#include "daemon/service.h"

namespace kvkeep {

using nlohmann::json;

Result<json> Service::RetainSession(const Session& s, double ttl_s, double priority) {
  const SessionId engine_session = EngineSessionOf(s.owner_uid, s.id);
  // What a pin on the session holds now; the uid's other pins are recounted the same way.
  const int64_t blocks = deps_.engine->RetainedBlocks(engine_session);
  int64_t uid_blocks = 0;
  {
    std::lock_guard<std::mutex> lock(retain_mu_);
    retention_.RefreshHintBlocks(s.owner_uid, [this](const std::string& key) {
      return deps_.engine->RetainedBlocks(std::stoull(key));
    });
    RETURN_IF_ERROR(
        retention_.Retain(s.owner_uid, std::to_string(engine_session), ttl_s, priority, blocks));
    uid_blocks = retention_.HintPinnedBlocks(s.owner_uid);
  }
  SessionHint hint;
  hint.kind = SessionHint::Kind::kRetain;
  hint.session = engine_session;
  hint.at_us = deps_.clock->NowMicros();
  hint.retain_until_us = hint.at_us + static_cast<int64_t>(ttl_s * 1e6);
  hint.priority = priority;
  deps_.engine->Hint(hint);
  return json{{"session", s.id},
              {"ttl_s", ttl_s},
              {"priority", priority},
              {"pinned_blocks", ttl_s > 0 ? blocks : 0},
              {"uid_pinned_blocks", uid_blocks},
              {"quota_blocks", options_.retain_quota_blocks}};
}

Result<json> Service::Retain(uint32_t uid, const std::string& session, double ttl_s,
                             double priority) {
  auto s = sessions_.Find(uid, session);
  if (!s) return Status::NotFound("no session '" + session + "'");
  std::lock_guard<std::mutex> lock(s->mu);
  if (s->deleted || s->closed) return Status::NotFound("no open session '" + session + "'");
  return RetainSession(*s, ttl_s, priority);
}

Service::Reply Service::RetainVerb(const Ctx& ctx) {
  ASSIGN_OR_RETURN(std::string session, ctx.params.String("session"));
  if (!ctx.params.Has("ttl_s")) return Status::InvalidArgument("'ttl_s' is required");
  ASSIGN_OR_RETURN(double ttl_s, ctx.params.NumberOr("ttl_s", 0, 0, 3600));
  ASSIGN_OR_RETURN(double priority, ctx.params.NumberOr("priority", 0, -1e9, 1e9));
  return Retain(ctx.uid(), session, ttl_s, priority);
}

Status Service::RetainField(const Ctx& ctx, const Session& s) {
  auto it = ctx.request.body.find("retain");
  if (it == ctx.request.body.end()) return Status::OK();
  if (!it->is_object()) {
    return Status::InvalidArgument("'retain' must be an object {ttl_s, priority?}");
  }
  const protocol::Params p(*it);
  if (!p.Has("ttl_s")) return Status::InvalidArgument("'retain.ttl_s' is required");
  ASSIGN_OR_RETURN(double ttl_s, p.NumberOr("ttl_s", 0, 0, 3600));
  ASSIGN_OR_RETURN(double priority, p.NumberOr("priority", 0, -1e9, 1e9));
  return RetainSession(s, ttl_s, priority).status();
}

}  // namespace kvkeep
