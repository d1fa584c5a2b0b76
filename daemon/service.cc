#include "daemon/service.h"

#include <spdlog/spdlog.h>

#include <cstdio>

#include "base/hash64.h"
#include "daemon/engine_session.h"
#include "policy/tool_key.h"

namespace kvkeep {

using nlohmann::json;

namespace {

bool IsRole(const std::string& r) {
  return r == "system" || r == "user" || r == "assistant" || r == "tool";
}

// REQUIRES: s.mu held. Fails for a session that was deleted, closed (unless allowed) or
// is generating (when the verb mutates its conversation).
Status UsableLocked(const Session& s, bool allow_busy) {
  if (s.deleted) return Status::NotFound("no session '" + s.id + "'");
  if (s.closed) return Status::InvalidArgument("session '" + s.id + "' is closed (reopen it)");
  if (!s.damage.empty()) {  // never build on rows that failed their checksum
    return Status::Unavailable("session '" + s.id + "' is damaged: " + s.damage);
  }
  if (!allow_busy && s.generating) {
    return Status::Busy("session '" + s.id + "' has a generate in flight");
  }
  return Status::OK();
}

// Store failures reach the client as `internal` (WireCode), with the store's message.
// A write the store could not commit (disk full, database busy, I/O error): it was rolled
// back whole, so the client may retry it once the fault clears.
Status StoreError(const Status& st) {
  spdlog::error("store: {}", st.ToString());
  return Status::Unavailable("the store could not commit this request (" + st.ToString() +
                             "); nothing of it was stored: retry later");
}

// REQUIRES: s.mu held.
std::vector<ChatMessageIn> History(const Session& s) {
  std::vector<ChatMessageIn> out;
  out.reserve(s.messages.size());
  for (const Message& m : s.messages) out.push_back({m.role, m.content, m.name, m.tool_call_id});
  return out;
}

int64_t NumTokens(const std::vector<Message>& msgs) {
  int64_t n = 0;
  for (const Message& m : msgs) n += static_cast<int64_t>(m.tokens.size());
  return n;
}

Status ValidSessionId(const std::string& id, const char* key) {
  if (protocol::IsValidSessionId(id)) return Status::OK();
  return Status::InvalidArgument("'" + std::string(key) +
                                 "' must be 1-128 chars of [A-Za-z0-9._:-]");
}

}  // namespace

Service::Service(ServiceOptions options, ServiceDeps deps)
    : options_(std::move(options)),
      deps_(std::move(deps)),
      stored_bytes_(options_.limits.max_stored_bytes_per_uid),
      uid_inflight_(options_.limits.max_inflight_per_uid),
      start_mono_us_(deps_.clock->NowMicros()),
      retention_(RetentionOptions{options_.retain_quota_blocks, 3600}, deps_.clock) {}

Status Service::LoadSessions() {
  ASSIGN_OR_RETURN(auto stored, deps_.store->LoadAll());
  spdlog::info("store: loaded {} sessions", stored.size());
  sessions_.Load(std::move(stored));
  for (const auto& s : sessions_.List(std::nullopt)) {  // tool events of earlier runs: uncounted
    std::lock_guard<std::mutex> lock(s->mu);
    stored_bytes_.ChargeAnyway(s->owner_uid, s->id, StoredBytes::Of(s->messages));
    if (!s->closed) LoadEpisodesLocked(*s);  // closed ones' stay in the store until reopened
  }
  return Status::OK();
}

uint64_t Service::CacheSalt(uint32_t uid) const {
  // Stable across restarts (the disk tier finds a tenant's blocks again) and, with a cluster
  // secret, across instances (the remote tier): daemon/tenant_salt.h.
  return options_.tenant_salt.Of(uid);
}

std::string Service::NewSessionId() {
  uint64_t x = static_cast<uint64_t>(deps_.clock->WallMicros()) * 0x9e3779b97f4a7c15ull ^
               (id_counter_.fetch_add(1) + 1) * 0xbf58476d1ce4e5b9ull;
  x ^= x >> 31;
  char buf[24];
  std::snprintf(buf, sizeof(buf), "s-%016llx", static_cast<unsigned long long>(x));
  return buf;
}

void Service::Handle(const std::shared_ptr<Client>& client, const protocol::Request& request) {
  Ctx ctx{client, request, protocol::Params(request.body)};
  using protocol::Verb;
  Reply reply = Status::Internal("unhandled verb");
  switch (request.verb) {
    case Verb::kHello:
      reply = Hello(ctx);
      break;
    case Verb::kSessionOpen:
      reply = Open(ctx);
      break;
    case Verb::kSessionAppend:
      reply = Append(ctx);
      break;
    case Verb::kSessionToolBegin:
      reply = ToolBegin(ctx);
      break;
    case Verb::kSessionToolEnd:
      reply = ToolEnd(ctx);
      break;
    case Verb::kSessionFork:
      reply = Fork(ctx);
      break;
    case Verb::kSessionClose:
      reply = Close(ctx);
      break;
    case Verb::kSessionInfo:
      reply = Info(ctx);
      break;
    case Verb::kSessionsList:
      reply = List(ctx);
      break;
    case Verb::kStats:
      reply = Stats(ctx);
      break;
    case Verb::kCancel:
      reply = Cancel(ctx);
      break;
    case Verb::kSessionRetain:
      reply = RetainVerb(ctx);
      break;
    case Verb::kSessionQuery:
      reply = Query(ctx);
      break;
    case Verb::kSessionGenerate: {
      Status st = Generate(ctx);
      if (st.ok()) return;  // replies later
      reply = std::move(st);
      break;
    }
  }
  if (reply.ok()) {
    client->SendResult(request.id, std::move(reply).value());
  } else {
    deps_.metrics->errors.fetch_add(1, std::memory_order_relaxed);
    client->SendError(request.id, reply.status());
  }
}

void Service::OnClientClosed(Client& client) {
  for (RequestId rid : client.CloseAndTakeInflight()) deps_.engine->Cancel(rid);
}

Service::Reply Service::Hello(const Ctx& ctx) {
  const ModelConfig& mc = deps_.engine->config();
  const DaemonLimits& l = options_.limits;
  return json{
      {"server", "kvkeepd"},
      {"version", "0.1.0"},
      {"protocol", protocol::kProtocolVersion},
      {"uid", ctx.client->peer().uid},
      {"gid", ctx.client->peer().gid},
      {"admin", ctx.client->is_admin()},
      {"model",
       {{"id", options_.model_id},
        {"architecture", mc.architecture},
        {"vocab_size", mc.vocab_size},
        {"max_context_tokens", options_.max_context_tokens}}},
      {"policy", deps_.engine->GetStats().policy},
      {"limits",
       {{"max_line_bytes", l.max_line_bytes},
        {"max_json_depth", l.max_json_depth},
        {"max_sessions_per_uid", l.max_sessions_per_uid},
        {"max_inflight_per_connection", l.max_inflight_per_connection},
        {"max_output_buffer_bytes", l.max_output_buffer_bytes},
        {"max_tokens", l.max_tokens},
        {"max_stored_bytes_per_uid", l.max_stored_bytes_per_uid},
        {"max_stored_sessions_per_uid", l.max_stored_sessions_per_uid},
        {"max_messages_per_append", l.max_messages_per_append},
        {"max_inflight_per_uid", l.max_inflight_per_uid},
        {"max_device_blocks_per_uid", l.max_device_blocks_per_uid},
        {"max_host_blocks_per_uid", l.max_host_blocks_per_uid},
        {"max_disk_blocks_per_uid", l.max_disk_blocks_per_uid}}},
      {"stored_bytes", stored_bytes_.Used(ctx.uid())},
  };
}

Result<Message> Service::ParseMessage(const json& m,
                                      const std::vector<ChatMessageIn>& history) const {
  if (!m.is_object()) return Status::InvalidArgument("each message must be an object");
  protocol::Params p(m);
  ASSIGN_OR_RETURN(std::string role, p.String("role"));
  if (!IsRole(role)) {
    return Status::InvalidArgument("'role' must be system, user, assistant or tool, not '" + role +
                                   "'");
  }
  Message msg;
  msg.role = std::move(role);
  ASSIGN_OR_RETURN(msg.name, p.StringOr("name", ""));
  ASSIGN_OR_RETURN(msg.tool_call_id, p.StringOr("tool_call_id", ""));
  if (p.Has("tokens")) {
    ASSIGN_OR_RETURN(msg.tokens, p.Tokens("tokens", deps_.engine->config().vocab_size));
    ASSIGN_OR_RETURN(msg.content, p.StringOr("content", ""));
  } else {
    ASSIGN_OR_RETURN(msg.content, p.String("content"));
    ASSIGN_OR_RETURN(msg.tokens, deps_.renderer->RenderMessage(
                                     history, {msg.role, msg.content, msg.name, msg.tool_call_id}));
  }
  return msg;
}

Service::Reply Service::Open(const Ctx& ctx) {
  ASSIGN_OR_RETURN(std::string id, ctx.params.StringOr("session", ""));
  ASSIGN_OR_RETURN(std::string system, ctx.params.StringOr("system", ""));
  ASSIGN_OR_RETURN(const int64_t episode_budget,
                   ctx.params.IntOr("episode_budget_tokens", -1, -1, INT64_MAX));
  if (id.empty() && ctx.params.Has("session")) {  // "" is a bad name, not an absent one
    return Status::InvalidArgument("'session' must not be empty (omit it for a new id)");
  }
  if (id.empty()) {
    id = NewSessionId();
  } else {
    RETURN_IF_ERROR(ValidSessionId(id, "session"));
  }
  const int32_t max_open = options_.limits.max_sessions_per_uid;
  const int64_t now = deps_.clock->WallMicros();
  if (auto existing = sessions_.Find(ctx.uid(), id)) {
    std::lock_guard<std::mutex> lock(existing->mu);
    if (!existing->deleted && !existing->closed) {
      return Status::AlreadyExists("session '" + id + "' is open");
    }
    if (!existing->deleted) {  // reopen a kept session
      RETURN_IF_ERROR(sessions_.ReserveOpen(ctx.uid(), max_open));
      if (Status st = deps_.store->SetClosed(ctx.uid(), id, false, now); !st.ok()) {
        sessions_.ReleaseOpen(ctx.uid());
        return StoreError(st);
      }
      existing->closed = false;
      existing->updated_us = now;
      LoadEpisodesLocked(*existing);
      if (deps_.episodes && ctx.params.Has("episode_budget_tokens")) {
        deps_.episodes->SetBudget(ctx.uid(), id, episode_budget);
      }
      return json{{"session", id},
                  {"created", false},
                  {"num_messages", existing->messages.size()},
                  {"num_tokens", existing->tokens.size()}};
    }
  }
  auto session = std::make_shared<Session>();
  session->owner_uid = ctx.uid();
  session->id = id;
  session->created_us = now;
  session->updated_us = now;
  session->model = options_.model_id;
  std::vector<Message> first;
  if (!system.empty()) {
    ASSIGN_OR_RETURN(Message msg, ParseMessage(json{{"role", "system"}, {"content", system}}, {}));
    first.push_back(std::move(msg));
  }
  std::lock_guard<std::mutex> lock(session->mu);  // held until durable: no one sees it half-made
  if (Status st = sessions_.Insert(session, max_open, options_.limits.max_stored_sessions_per_uid);
      !st.ok()) {
    if (st.code() == StatusCode::kAlreadyExists) {
      return Status::AlreadyExists("session '" + id + "' is open");
    }
    return st;
  }
  StoredSession stored{
      ctx.uid(), id, now, now, options_.model_id, false, session->ToStoredLocked(0, first)};
  Status charged = stored_bytes_.Charge(ctx.uid(), id, StoredBytes::Of(first));
  Status st = charged.ok() ? deps_.store->CreateSession(stored) : charged;
  if (!st.ok()) {
    if (charged.ok()) stored_bytes_.Forget(ctx.uid(), id);
    session->deleted = true;
    sessions_.Remove(ctx.uid(), id);
    sessions_.ReleaseOpen(ctx.uid());
    return StoreError(st);
  }
  for (Message& m : first) session->AppendLocked(std::move(m));
  if (deps_.episodes && ctx.params.Has("episode_budget_tokens")) {
    deps_.episodes->SetBudget(ctx.uid(), id, episode_budget);
  }
  IndexNewLocked(*session, 0);
  return json{{"session", id},
              {"created", true},
              {"num_messages", session->messages.size()},
              {"num_tokens", session->tokens.size()}};
}

Result<std::shared_ptr<Session>> Service::FindSession(const Ctx& ctx) const {
  ASSIGN_OR_RETURN(std::string id, ctx.params.String("session"));
  auto s = sessions_.Find(ctx.uid(), id);
  if (!s) return Status::NotFound("no session '" + id + "'");
  return s;
}

Service::Reply Service::Append(const Ctx& ctx) {
  ASSIGN_OR_RETURN(auto s, FindSession(ctx));
  auto it = ctx.request.body.find("messages");
  if (it == ctx.request.body.end() || !it->is_array() || it->empty()) {
    return Status::InvalidArgument("'messages' must be a non-empty array");
  }
  if (const int32_t cap = options_.limits.max_messages_per_append; it->size() > size_t(cap)) {
    return Status::InvalidArgument("'messages' has " + std::to_string(it->size()) +
                                   " messages; limits.max_messages_per_append is " +
                                   std::to_string(cap) + " (append them in several calls)");
  }
  std::lock_guard<std::mutex> lock(s->mu);
  RETURN_IF_ERROR(UsableLocked(*s, /*allow_busy=*/false));
  std::vector<ChatMessageIn> history = History(*s);
  std::vector<Message> msgs;
  for (const json& m : *it) {
    ASSIGN_OR_RETURN(Message msg, ParseMessage(m, history));
    history.push_back({msg.role, msg.content, msg.name, msg.tool_call_id});
    msgs.push_back(std::move(msg));
  }
  const int64_t added = NumTokens(msgs);
  if (static_cast<int64_t>(s->tokens.size()) + added > options_.max_context_tokens) {
    return Status::ResourceExhausted(
        "context would be " + std::to_string(s->tokens.size() + added) +
        " tokens; max_context_tokens is " + std::to_string(options_.max_context_tokens));
  }
  const int64_t now = deps_.clock->WallMicros();
  const int64_t bytes = StoredBytes::Of(msgs);
  RETURN_IF_ERROR(stored_bytes_.Charge(s->owner_uid, s->id, bytes));
  Status st = deps_.store->AppendMessages(s->owner_uid, s->id,
                                          s->ToStoredLocked(s->messages.size(), msgs), now);
  if (!st.ok()) {
    stored_bytes_.Uncharge(s->owner_uid, s->id, bytes);
    return StoreError(st);
  }
  const size_t first = s->messages.size();
  for (Message& m : msgs) s->AppendLocked(std::move(m));
  s->updated_us = now;
  IndexNewLocked(*s, first);
  return json{{"session", s->id},
              {"num_messages", s->messages.size()},
              {"num_tokens", s->tokens.size()},
              {"appended_tokens", added}};
}

Service::Reply Service::ToolBegin(const Ctx& ctx) {
  ASSIGN_OR_RETURN(auto s, FindSession(ctx));
  ASSIGN_OR_RETURN(std::string tool, ctx.params.String("tool"));
  ASSIGN_OR_RETURN(std::string args, ctx.params.StringOr("args", ""));
  if (tool.empty()) return Status::InvalidArgument("'tool' must not be empty");
  std::lock_guard<std::mutex> lock(s->mu);
  RETURN_IF_ERROR(UsableLocked(*s, /*allow_busy=*/true));
  const auto bytes = static_cast<int64_t>(tool.size() + args.size());
  RETURN_IF_ERROR(stored_bytes_.Charge(s->owner_uid, s->id, bytes));
  auto event_id =
      deps_.store->BeginToolEvent(s->owner_uid, s->id, tool, args, deps_.clock->WallMicros());
  if (!event_id.ok()) {
    stored_bytes_.Uncharge(s->owner_uid, s->id, bytes);
    return StoreError(event_id.status());
  }
  const std::string key = ToolKeyOfArgs(tool, args);
  s->pending_tools.push_back({*event_id, tool, deps_.clock->NowMicros(), key});
  if (s->tool_events_loaded) {
    s->tool_events.push_back({*event_id, tool, args, deps_.clock->WallMicros()});
  }
  SessionHint hint{SessionHint::Kind::kToolBegin, EngineSessionOf(s->owner_uid, s->id),
                   deps_.clock->NowMicros(), 0, 0};
  hint.tool_key = key;
  deps_.engine->Hint(hint);
  return json{{"session", s->id}, {"tool_event", *event_id}};
}

Service::Reply Service::ToolEnd(const Ctx& ctx) {
  ASSIGN_OR_RETURN(auto s, FindSession(ctx));
  // The result message is a `tool` message, or a `user` one for agents that report
  // observations as user turns (mini-swe-agent's text mode).
  ASSIGN_OR_RETURN(std::string role, ctx.params.StringOr("role", "tool"));
  if (role != "tool" && role != "user") {
    return Status::InvalidArgument("'role' must be \"tool\" or \"user\"");
  }
  std::lock_guard<std::mutex> lock(s->mu);
  RETURN_IF_ERROR(UsableLocked(*s, /*allow_busy=*/false));
  std::optional<PendingTool> pending;
  if (!s->pending_tools.empty()) pending = s->pending_tools.back();
  ASSIGN_OR_RETURN(std::string tool, ctx.params.StringOr("tool", pending ? pending->tool : ""));
  json m = {{"role", role}};
  for (const char* key : {"content", "tokens", "tool_call_id"}) {
    if (ctx.params.Has(key)) m[key] = ctx.request.body.at(key);
  }
  m["name"] = ctx.params.Has("name") ? ctx.request.body.at("name") : json(tool);
  if (tool.empty() || role == "user") m.erase("name");
  ASSIGN_OR_RETURN(Message msg, ParseMessage(m, History(*s)));
  if (static_cast<int64_t>(s->tokens.size() + msg.tokens.size()) > options_.max_context_tokens) {
    return Status::ResourceExhausted("context would exceed max_context_tokens");
  }
  const int64_t end_us = deps_.clock->WallMicros();
  const int64_t duration_us = pending ? deps_.clock->NowMicros() - pending->begin_mono_us : 0;
  std::vector<Message> msgs = {std::move(msg)};
  const int64_t bytes = StoredBytes::Of(msgs);
  RETURN_IF_ERROR(stored_bytes_.Charge(s->owner_uid, s->id, bytes));
  Status st = deps_.store->EndToolEvent(
      s->owner_uid, s->id, pending ? pending->event_id : 0, tool, end_us, duration_us,
      s->ToStoredLocked(s->messages.size(), msgs), pending ? pending->key : "");
  if (!st.ok()) {
    stored_bytes_.Uncharge(s->owner_uid, s->id, bytes);
    return StoreError(st);
  }
  if (pending) {
    s->pending_tools.pop_back();
    deps_.metrics->tool.Observe(duration_us / 1000.0);
    for (ToolEvent& e : s->tool_events) {
      if (e.id == pending->event_id) {
        e.end_us = end_us;
        e.duration_us = duration_us;
      }
    }
  }
  s->AppendLocked(std::move(msgs[0]));
  s->updated_us = end_us;
  IndexNewLocked(*s, s->messages.size() - 1);
  SessionHint hint{SessionHint::Kind::kToolEnd, EngineSessionOf(s->owner_uid, s->id),
                   deps_.clock->NowMicros(), 0, 0};
  if (pending) {
    hint.tool_key = pending->key;
    hint.duration_us = duration_us;
  }
  deps_.engine->Hint(hint);
  return json{{"session", s->id},
              {"tool_event", pending ? json(pending->event_id) : json(nullptr)},
              {"tool", tool},
              {"duration_ms", pending ? json(duration_us / 1000.0) : json(nullptr)},
              {"num_messages", s->messages.size()},
              {"num_tokens", s->tokens.size()}};
}

Service::Reply Service::Fork(const Ctx& ctx) {
  ASSIGN_OR_RETURN(auto parent, FindSession(ctx));
  ASSIGN_OR_RETURN(std::string id, ctx.params.StringOr("new_session", ""));
  if (id.empty() && ctx.params.Has("new_session")) {
    return Status::InvalidArgument("'new_session' must not be empty (omit it for a new id)");
  }
  if (id.empty()) {
    id = NewSessionId();
  } else {
    RETURN_IF_ERROR(ValidSessionId(id, "new_session"));
  }
  std::lock_guard<std::mutex> plock(parent->mu);
  RETURN_IF_ERROR(UsableLocked(*parent, /*allow_busy=*/false));
  auto child = std::make_shared<Session>();
  child->owner_uid = parent->owner_uid;
  child->id = id;
  child->created_us = child->updated_us = deps_.clock->WallMicros();
  child->model = parent->model;
  child->messages = parent->messages;
  child->tokens = parent->tokens;
  std::lock_guard<std::mutex> clock(child->mu);
  RETURN_IF_ERROR(stored_bytes_.Charge(child->owner_uid, id, StoredBytes::Of(child->messages)));
  if (Status st = sessions_.Insert(child, options_.limits.max_sessions_per_uid,
                                   options_.limits.max_stored_sessions_per_uid);
      !st.ok()) {
    stored_bytes_.Forget(child->owner_uid, id);
    return st;
  }
  Status st = deps_.store->CopySession(parent->owner_uid, parent->id, id, child->created_us);
  if (!st.ok()) {
    stored_bytes_.Forget(child->owner_uid, id);
    child->deleted = true;
    sessions_.Remove(child->owner_uid, id);
    sessions_.ReleaseOpen(child->owner_uid);
    return StoreError(st);
  }
  IndexNewLocked(*child, 0);  // the fork's own index, rebuilt from its messages
  return json{{"session", id},
              {"parent", parent->id},
              {"num_messages", child->messages.size()},
              {"num_tokens", child->tokens.size()}};
}

Service::Reply Service::Close(const Ctx& ctx) {
  ASSIGN_OR_RETURN(auto s, FindSession(ctx));
  ASSIGN_OR_RETURN(bool keep, ctx.params.BoolOr("keep", true));
  std::lock_guard<std::mutex> lock(s->mu);
  if (s->deleted) return Status::NotFound("no session '" + s->id + "'");
  if (s->generating) return Status::Busy("session '" + s->id + "' has a generate in flight");
  const bool was_open = !s->closed;
  Status st = keep ? deps_.store->SetClosed(s->owner_uid, s->id, true, deps_.clock->WallMicros())
                   : deps_.store->DeleteSession(s->owner_uid, s->id);
  if (!st.ok()) return StoreError(st);
  s->closed = true;
  s->pending_tools.clear();
  if (!keep) {
    s->deleted = true;
    sessions_.Remove(s->owner_uid, s->id);
    stored_bytes_.Forget(s->owner_uid, s->id);
    if (deps_.episodes) deps_.episodes->Forget(s->owner_uid, s->id);
  } else if (deps_.episodes && was_open) {
    deps_.episodes->Unload(s->owner_uid, s->id);
  }
  if (was_open) sessions_.ReleaseOpen(s->owner_uid);
  const SessionId engine_session = EngineSessionOf(s->owner_uid, s->id);
  {
    std::lock_guard<std::mutex> rlock(retain_mu_);
    retention_.Release(std::to_string(engine_session));
  }
  deps_.engine->Hint({SessionHint::Kind::kClose, engine_session, deps_.clock->NowMicros(), 0, 0});
  return json{{"session", s->id}, {"kept", keep}};
}

json Service::SessionSummaryLocked(const Session& s) const {
  return {{"session", s.id},
          {"owner_uid", s.owner_uid},
          {"model", s.model},
          {"closed", s.closed},
          {"generating", s.generating},
          {"created_at", protocol::FormatWallMicros(s.created_us)},
          {"updated_at", protocol::FormatWallMicros(s.updated_us)},
          {"num_messages", s.messages.size()},
          {"num_tokens", s.tokens.size()}};
}

Service::Reply Service::Info(const Ctx& ctx) {
  ASSIGN_OR_RETURN(auto s, FindSession(ctx));
  ASSIGN_OR_RETURN(bool with_messages, ctx.params.BoolOr("messages", true));
  std::lock_guard<std::mutex> lock(s->mu);
  if (s->deleted) return Status::NotFound("no session '" + s->id + "'");
  json out = SessionSummaryLocked(*s);
  if (!s->damage.empty()) out["damaged"] = s->damage;  // failed its checksum
  if (with_messages) {
    json msgs = json::array();
    for (size_t i = 0; i < s->messages.size(); ++i) {
      const Message& m = s->messages[i];
      json jm = {
          {"seq", i}, {"role", m.role}, {"content", m.content}, {"num_tokens", m.tokens.size()}};
      if (!m.name.empty()) jm["name"] = m.name;
      if (!m.tool_call_id.empty()) jm["tool_call_id"] = m.tool_call_id;
      msgs.push_back(std::move(jm));
    }
    out["messages"] = std::move(msgs);
  }
  ASSIGN_OR_RETURN(bool with_tool_events, ctx.params.BoolOr("tool_events", true));
  if (!with_tool_events) return out;
  if (!s->tool_events_loaded) {
    auto events = deps_.store->ListToolEvents(s->owner_uid, s->id);
    if (!events.ok()) return StoreError(events.status());
    s->tool_events = std::move(events).value();
    s->tool_events_loaded = true;
  }
  json jev = json::array();
  for (const ToolEvent& e : s->tool_events) {
    jev.push_back({{"id", e.id},
                   {"tool", e.tool},
                   {"args", e.args},
                   {"begin_at", protocol::FormatWallMicros(e.begin_us)},
                   {"end_at", e.end_us ? json(protocol::FormatWallMicros(*e.end_us)) : json()},
                   {"duration_ms", e.duration_us ? json(*e.duration_us / 1000.0) : json()}});
  }
  out["tool_events"] = std::move(jev);
  out["retention"] = RetentionJsonLocked(*s);
  if (deps_.episodes) out["episodes"] = deps_.episodes->InfoJson(s->owner_uid, s->id);
  return out;
}

json Service::RetentionJsonLocked(const Session& s) const {
  json out = json::object();
  {
    std::lock_guard<std::mutex> lock(retain_mu_);
    const std::optional<Pin> pin =
        retention_.Get(std::to_string(EngineSessionOf(s.owner_uid, s.id)));
    if (pin && pin->deadline_us > deps_.clock->NowMicros()) {
      out["retain"] = {{"expires_in_s", (pin->deadline_us - deps_.clock->NowMicros()) / 1e6},
                       {"priority", pin->priority},
                       {"blocks", pin->blocks}};
    }
  }
  if (!s.pending_tools.empty()) {
    const PendingTool& t = s.pending_tools.back();
    json tool = {{"tool", t.tool}, {"key", t.key}};
    for (const EngineStats::ToolKeyStats& k : deps_.engine->GetStats().tool_keys) {
      if (k.summary.key != t.key) continue;
      tool["samples"] = k.summary.num_samples;
      tool["p50_s"] = k.summary.p50_s;
      tool["p90_s"] = k.summary.p90_s;
      tool["p99_s"] = k.summary.p99_s;
      tool["ttl_s"] = k.last_ttl_s >= 0 ? json(k.last_ttl_s) : json(nullptr);
    }
    out["pending_tool"] = std::move(tool);
  }
  return out;
}

Service::Reply Service::List(const Ctx& ctx) {
  ASSIGN_OR_RETURN(bool all, ctx.params.BoolOr("all", false));
  ASSIGN_OR_RETURN(bool closed, ctx.params.BoolOr("closed", false));
  if (all && !ctx.client->is_admin()) {
    return Status::PermissionDenied("'all' needs root or the admin group");
  }
  json list = json::array();
  for (const auto& s : sessions_.List(all ? std::nullopt : std::optional(ctx.uid()))) {
    std::lock_guard<std::mutex> lock(s->mu);
    if (s->deleted || (s->closed && !closed)) continue;
    list.push_back(SessionSummaryLocked(*s));
  }
  return json{{"sessions", std::move(list)}};
}

Service::Reply Service::Cancel(const Ctx& ctx) {
  auto it = ctx.request.body.find("target");
  if (it == ctx.request.body.end() || !(it->is_string() || it->is_number_integer())) {
    return Status::InvalidArgument("'target' (a request id) is required");
  }
  auto rid = ctx.client->FindInflight(it->dump());
  if (!rid) return Status::NotFound("no request " + it->dump() + " in flight on this connection");
  deps_.engine->Cancel(*rid);
  return json{{"cancelled", true}};
}

}  // namespace kvkeep
