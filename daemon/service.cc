#include "daemon/service.h"

#include <spdlog/spdlog.h>

#include <cstdio>

#include "base/hash64.h"
#include "daemon/engine_session.h"

namespace kvkeep {

using nlohmann::json;
using protocol::Error;
using protocol::ErrorCode;

namespace {

bool IsRole(const std::string& r) {
  return r == "system" || r == "user" || r == "assistant" || r == "tool";
}

// REQUIRES: s.mu held. Fails for a session that was deleted, closed (unless allowed) or
// is generating (when the verb mutates its conversation).
bool UsableLocked(const Session& s, bool allow_busy, Error* error) {
  if (s.deleted) {
    *error = {ErrorCode::kNotFound, "no session '" + s.id + "'"};
    return false;
  }
  if (s.closed) {
    *error = {ErrorCode::kInvalidArgument, "session '" + s.id + "' is closed (reopen it)"};
    return false;
  }
  if (!s.damage.empty()) {  // harden: never build on rows that failed their checksum
    *error = {ErrorCode::kUnavailable, "session '" + s.id + "' is damaged: " + s.damage};
    return false;
  }
  if (!allow_busy && s.generating) {
    *error = {ErrorCode::kBusy, "session '" + s.id + "' has a generate in flight"};
    return false;
  }
  return true;
}

Error StoreError(const Status& st) {
  spdlog::error("store: {}", st.ToString());
  return {ErrorCode::kInternal, "store: " + st.ToString()};
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

}  // namespace

Service::Service(ServiceOptions options, ServiceDeps deps)
    : options_(std::move(options)),
      deps_(std::move(deps)),
      start_mono_us_(deps_.clock->NowMicros()) {}

Status Service::LoadSessions() {
  ASSIGN_OR_RETURN(auto stored, deps_.store->LoadAll());
  spdlog::info("store: loaded {} sessions", stored.size());
  sessions_.Load(std::move(stored));
  return Status::OK();
}

uint64_t Service::CacheSalt(uint32_t uid) const {
  // SplitMix64 of the uid: a distinct, stable salt per tenant (stable across restarts, so
  // the disk tier can find a tenant's blocks again).
  return SplitMix64(uint64_t{uid} + 0x6b766b656570ull);
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
  Error error;
  Reply reply;
  using protocol::Verb;
  switch (request.verb) {
    case Verb::kHello:
      reply = Hello(ctx, &error);
      break;
    case Verb::kSessionOpen:
      reply = Open(ctx, &error);
      break;
    case Verb::kSessionAppend:
      reply = Append(ctx, &error);
      break;
    case Verb::kSessionToolBegin:
      reply = ToolBegin(ctx, &error);
      break;
    case Verb::kSessionToolEnd:
      reply = ToolEnd(ctx, &error);
      break;
    case Verb::kSessionFork:
      reply = Fork(ctx, &error);
      break;
    case Verb::kSessionClose:
      reply = Close(ctx, &error);
      break;
    case Verb::kSessionInfo:
      reply = Info(ctx, &error);
      break;
    case Verb::kSessionsList:
      reply = List(ctx, &error);
      break;
    case Verb::kStats:
      reply = Stats(ctx, &error);
      break;
    case Verb::kCancel:
      reply = Cancel(ctx, &error);
      break;
    case Verb::kSessionGenerate:
      if (Generate(ctx, &error)) return;  // replies later
      break;
  }
  if (reply) {
    client->Send(protocol::ResultLine(request.id, std::move(*reply)));
  } else {
    deps_.metrics->errors.fetch_add(1, std::memory_order_relaxed);
    client->Send(protocol::ErrorLine(request.id, error));
  }
}

void Service::OnClientClosed(Client& client) {
  for (RequestId rid : client.CloseAndTakeInflight()) deps_.engine->Cancel(rid);
}

Service::Reply Service::Hello(const Ctx& ctx, Error*) {
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
      {"policy", options_.policy},
      {"limits",
       {{"max_line_bytes", l.max_line_bytes},
        {"max_json_depth", l.max_json_depth},
        {"max_sessions_per_uid", l.max_sessions_per_uid},
        {"max_inflight_per_connection", l.max_inflight_per_connection},
        {"max_output_buffer_bytes", l.max_output_buffer_bytes},
        {"max_tokens", l.max_tokens}}},
  };
}

std::optional<Message> Service::ParseMessage(const json& m,
                                             const std::vector<ChatMessageIn>& history,
                                             Error* error) const {
  if (!m.is_object()) {
    *error = {ErrorCode::kInvalidArgument, "each message must be an object"};
    return std::nullopt;
  }
  protocol::Params p(m);
  auto role = p.String("role", error);
  if (!role) return std::nullopt;
  if (!IsRole(*role)) {
    *error = {ErrorCode::kInvalidArgument,
              "'role' must be system, user, assistant or tool, not '" + *role + "'"};
    return std::nullopt;
  }
  Message msg;
  msg.role = *role;
  msg.name = p.StringOr("name", "", error);
  msg.tool_call_id = p.StringOr("tool_call_id", "", error);
  if (p.Has("tokens")) {
    auto tokens = p.Tokens("tokens", deps_.engine->config().vocab_size, error);
    if (!tokens) return std::nullopt;
    msg.tokens = std::move(*tokens);
    msg.content = p.StringOr("content", "", error);
  } else {
    auto content = p.String("content", error);
    if (!content) return std::nullopt;
    msg.content = std::move(*content);
    auto tokens =
        deps_.renderer->RenderMessage(history, {msg.role, msg.content, msg.name, msg.tool_call_id});
    if (!tokens.ok()) {
      *error = protocol::ErrorFromStatus(tokens.status());
      return std::nullopt;
    }
    msg.tokens = std::move(*tokens);
  }
  if (!error->message.empty()) return std::nullopt;
  return msg;
}

Service::Reply Service::Open(const Ctx& ctx, Error* error) {
  std::string id = ctx.params.StringOr("session", "", error);
  std::string system = ctx.params.StringOr("system", "", error);
  if (!error->message.empty()) return std::nullopt;
  if (id.empty()) {
    id = NewSessionId();
  } else if (!protocol::IsValidSessionId(id)) {
    *error = {ErrorCode::kInvalidArgument, "'session' must be 1-128 chars of [A-Za-z0-9._:-]"};
    return std::nullopt;
  }
  const int32_t max_open = options_.limits.max_sessions_per_uid;
  const int64_t now = deps_.clock->WallMicros();
  if (auto existing = sessions_.Find(ctx.uid(), id)) {
    std::lock_guard<std::mutex> lock(existing->mu);
    if (!existing->deleted && !existing->closed) {
      *error = {ErrorCode::kAlreadyExists, "session '" + id + "' is open"};
      return std::nullopt;
    }
    if (!existing->deleted) {  // reopen a kept session
      if (!sessions_.ReserveOpen(ctx.uid(), max_open).ok()) {
        *error = {ErrorCode::kTooManySessions, "uid has max_sessions_per_uid open sessions"};
        return std::nullopt;
      }
      if (Status st = deps_.store->SetClosed(ctx.uid(), id, false, now); !st.ok()) {
        sessions_.ReleaseOpen(ctx.uid());
        *error = StoreError(st);
        return std::nullopt;
      }
      existing->closed = false;
      existing->updated_us = now;
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
    auto msg = ParseMessage(json{{"role", "system"}, {"content", system}}, {}, error);
    if (!msg) return std::nullopt;
    first.push_back(std::move(*msg));
  }
  std::lock_guard<std::mutex> lock(session->mu);  // held until durable: no one sees it half-made
  if (Status st = sessions_.Insert(session, max_open); !st.ok()) {
    *error = st.code() == StatusCode::kAlreadyExists
                 ? Error{ErrorCode::kAlreadyExists, "session '" + id + "' is open"}
                 : Error{ErrorCode::kTooManySessions, st.message()};
    return std::nullopt;
  }
  StoredSession stored{
      ctx.uid(), id, now, now, options_.model_id, false, session->ToStoredLocked(0, first)};
  if (Status st = deps_.store->CreateSession(stored); !st.ok()) {
    session->deleted = true;
    sessions_.Remove(ctx.uid(), id);
    sessions_.ReleaseOpen(ctx.uid());
    *error = StoreError(st);
    return std::nullopt;
  }
  for (Message& m : first) session->AppendLocked(std::move(m));
  return json{{"session", id},
              {"created", true},
              {"num_messages", session->messages.size()},
              {"num_tokens", session->tokens.size()}};
}

std::shared_ptr<Session> Service::FindSession(const Ctx& ctx, Error* error) const {
  auto id = ctx.params.String("session", error);
  if (!id) return nullptr;
  auto s = sessions_.Find(ctx.uid(), *id);
  if (!s) *error = {ErrorCode::kNotFound, "no session '" + *id + "'"};
  return s;
}

Service::Reply Service::Append(const Ctx& ctx, Error* error) {
  auto s = FindSession(ctx, error);
  if (!s) return std::nullopt;
  auto it = ctx.request.body.find("messages");
  if (it == ctx.request.body.end() || !it->is_array() || it->empty()) {
    *error = {ErrorCode::kInvalidArgument, "'messages' must be a non-empty array"};
    return std::nullopt;
  }
  std::lock_guard<std::mutex> lock(s->mu);
  if (!UsableLocked(*s, /*allow_busy=*/false, error)) return std::nullopt;
  std::vector<ChatMessageIn> history = History(*s);
  std::vector<Message> msgs;
  for (const json& m : *it) {
    auto msg = ParseMessage(m, history, error);
    if (!msg) return std::nullopt;
    history.push_back({msg->role, msg->content, msg->name, msg->tool_call_id});
    msgs.push_back(std::move(*msg));
  }
  const int64_t added = NumTokens(msgs);
  if (static_cast<int64_t>(s->tokens.size()) + added > options_.max_context_tokens) {
    *error = {ErrorCode::kResourceExhausted,
              "context would be " + std::to_string(s->tokens.size() + added) +
                  " tokens; max_context_tokens is " + std::to_string(options_.max_context_tokens)};
    return std::nullopt;
  }
  const int64_t now = deps_.clock->WallMicros();
  Status st = deps_.store->AppendMessages(s->owner_uid, s->id,
                                          s->ToStoredLocked(s->messages.size(), msgs), now);
  if (!st.ok()) {
    *error = StoreError(st);
    return std::nullopt;
  }
  for (Message& m : msgs) s->AppendLocked(std::move(m));
  s->updated_us = now;
  return json{{"session", s->id},
              {"num_messages", s->messages.size()},
              {"num_tokens", s->tokens.size()},
              {"appended_tokens", added}};
}

Service::Reply Service::ToolBegin(const Ctx& ctx, Error* error) {
  auto s = FindSession(ctx, error);
  if (!s) return std::nullopt;
  auto tool = ctx.params.String("tool", error);
  std::string args = ctx.params.StringOr("args", "", error);
  if (!tool || !error->message.empty()) return std::nullopt;
  if (tool->empty()) {
    *error = {ErrorCode::kInvalidArgument, "'tool' must not be empty"};
    return std::nullopt;
  }
  std::lock_guard<std::mutex> lock(s->mu);
  if (!UsableLocked(*s, /*allow_busy=*/true, error)) return std::nullopt;
  auto event_id =
      deps_.store->BeginToolEvent(s->owner_uid, s->id, *tool, args, deps_.clock->WallMicros());
  if (!event_id.ok()) {
    *error = StoreError(event_id.status());
    return std::nullopt;
  }
  s->pending_tools.push_back({*event_id, *tool, deps_.clock->NowMicros()});
  if (s->tool_events_loaded) {
    s->tool_events.push_back({*event_id, *tool, args, deps_.clock->WallMicros()});
  }
  deps_.engine->Hint({SessionHint::Kind::kToolBegin, EngineSessionOf(s->owner_uid, s->id),
                      deps_.clock->NowMicros(), 0, 0});
  return json{{"session", s->id}, {"tool_event", *event_id}};
}

Service::Reply Service::ToolEnd(const Ctx& ctx, Error* error) {
  auto s = FindSession(ctx, error);
  if (!s) return std::nullopt;
  std::lock_guard<std::mutex> lock(s->mu);
  if (!UsableLocked(*s, /*allow_busy=*/false, error)) return std::nullopt;
  std::optional<PendingTool> pending;
  if (!s->pending_tools.empty()) pending = s->pending_tools.back();
  std::string tool = ctx.params.StringOr("tool", pending ? pending->tool : "", error);
  json m = {{"role", "tool"}};
  for (const char* key : {"content", "tokens", "tool_call_id"}) {
    if (ctx.params.Has(key)) m[key] = ctx.request.body.at(key);
  }
  m["name"] = ctx.params.Has("name") ? ctx.request.body.at("name") : json(tool);
  if (tool.empty()) m.erase("name");
  auto msg = ParseMessage(m, History(*s), error);
  if (!msg) return std::nullopt;
  if (static_cast<int64_t>(s->tokens.size() + msg->tokens.size()) > options_.max_context_tokens) {
    *error = {ErrorCode::kResourceExhausted, "context would exceed max_context_tokens"};
    return std::nullopt;
  }
  const int64_t end_us = deps_.clock->WallMicros();
  const int64_t duration_us = pending ? deps_.clock->NowMicros() - pending->begin_mono_us : 0;
  std::vector<Message> msgs = {std::move(*msg)};
  Status st =
      deps_.store->EndToolEvent(s->owner_uid, s->id, pending ? pending->event_id : 0, tool, end_us,
                                duration_us, s->ToStoredLocked(s->messages.size(), msgs));
  if (!st.ok()) {
    *error = StoreError(st);
    return std::nullopt;
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
  deps_.engine->Hint({SessionHint::Kind::kToolEnd, EngineSessionOf(s->owner_uid, s->id),
                      deps_.clock->NowMicros(), 0, 0});
  return json{{"session", s->id},
              {"tool_event", pending ? json(pending->event_id) : json(nullptr)},
              {"tool", tool},
              {"duration_ms", pending ? json(duration_us / 1000.0) : json(nullptr)},
              {"num_messages", s->messages.size()},
              {"num_tokens", s->tokens.size()}};
}

Service::Reply Service::Fork(const Ctx& ctx, Error* error) {
  auto parent = FindSession(ctx, error);
  if (!parent) return std::nullopt;
  std::string id = ctx.params.StringOr("new_session", "", error);
  if (!error->message.empty()) return std::nullopt;
  if (id.empty()) {
    id = NewSessionId();
  } else if (!protocol::IsValidSessionId(id)) {
    *error = {ErrorCode::kInvalidArgument, "'new_session' must be 1-128 chars of [A-Za-z0-9._:-]"};
    return std::nullopt;
  }
  std::lock_guard<std::mutex> plock(parent->mu);
  if (!UsableLocked(*parent, /*allow_busy=*/false, error)) return std::nullopt;
  auto child = std::make_shared<Session>();
  child->owner_uid = parent->owner_uid;
  child->id = id;
  child->created_us = child->updated_us = deps_.clock->WallMicros();
  child->model = parent->model;
  child->messages = parent->messages;
  child->tokens = parent->tokens;
  std::lock_guard<std::mutex> clock(child->mu);
  if (Status st = sessions_.Insert(child, options_.limits.max_sessions_per_uid); !st.ok()) {
    *error = st.code() == StatusCode::kAlreadyExists
                 ? Error{ErrorCode::kAlreadyExists, "session '" + id + "' exists"}
                 : Error{ErrorCode::kTooManySessions, st.message()};
    return std::nullopt;
  }
  Status st = deps_.store->CopySession(parent->owner_uid, parent->id, id, child->created_us);
  if (!st.ok()) {
    child->deleted = true;
    sessions_.Remove(child->owner_uid, id);
    sessions_.ReleaseOpen(child->owner_uid);
    *error = StoreError(st);
    return std::nullopt;
  }
  return json{{"session", id},
              {"parent", parent->id},
              {"num_messages", child->messages.size()},
              {"num_tokens", child->tokens.size()}};
}

Service::Reply Service::Close(const Ctx& ctx, Error* error) {
  auto s = FindSession(ctx, error);
  if (!s) return std::nullopt;
  bool keep = ctx.params.BoolOr("keep", true, error);
  if (!error->message.empty()) return std::nullopt;
  std::lock_guard<std::mutex> lock(s->mu);
  if (s->deleted) {
    *error = {ErrorCode::kNotFound, "no session '" + s->id + "'"};
    return std::nullopt;
  }
  if (s->generating) {
    *error = {ErrorCode::kBusy, "session '" + s->id + "' has a generate in flight"};
    return std::nullopt;
  }
  const bool was_open = !s->closed;
  Status st = keep ? deps_.store->SetClosed(s->owner_uid, s->id, true, deps_.clock->WallMicros())
                   : deps_.store->DeleteSession(s->owner_uid, s->id);
  if (!st.ok()) {
    *error = StoreError(st);
    return std::nullopt;
  }
  s->closed = true;
  s->pending_tools.clear();
  if (!keep) {
    s->deleted = true;
    sessions_.Remove(s->owner_uid, s->id);
  }
  if (was_open) sessions_.ReleaseOpen(s->owner_uid);
  deps_.engine->Hint({SessionHint::Kind::kClose, EngineSessionOf(s->owner_uid, s->id),
                      deps_.clock->NowMicros(), 0, 0});
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

Service::Reply Service::Info(const Ctx& ctx, Error* error) {
  auto s = FindSession(ctx, error);
  if (!s) return std::nullopt;
  bool with_messages = ctx.params.BoolOr("messages", true, error);
  if (!error->message.empty()) return std::nullopt;
  json out;
  {
    std::lock_guard<std::mutex> lock(s->mu);
    if (s->deleted) {
      *error = {ErrorCode::kNotFound, "no session '" + s->id + "'"};
      return std::nullopt;
    }
    out = SessionSummaryLocked(*s);
    if (!s->damage.empty()) out["damaged"] = s->damage;  // harden: failed its checksum
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
    if (!s->tool_events_loaded) {
      auto events = deps_.store->ListToolEvents(s->owner_uid, s->id);
      if (!events.ok()) {
        *error = StoreError(events.status());
        return std::nullopt;
      }
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
  }
  return out;
}

Service::Reply Service::List(const Ctx& ctx, Error* error) {
  bool all = ctx.params.BoolOr("all", false, error);
  bool closed = ctx.params.BoolOr("closed", false, error);
  if (!error->message.empty()) return std::nullopt;
  if (all && !ctx.client->is_admin()) {
    *error = {ErrorCode::kPermissionDenied, "'all' needs root or the admin group"};
    return std::nullopt;
  }
  json list = json::array();
  for (const auto& s : sessions_.List(all ? std::nullopt : std::optional(ctx.uid()))) {
    std::lock_guard<std::mutex> lock(s->mu);
    if (s->deleted || (s->closed && !closed)) continue;
    list.push_back(SessionSummaryLocked(*s));
  }
  return json{{"sessions", std::move(list)}};
}

Service::Reply Service::Cancel(const Ctx& ctx, Error* error) {
  auto it = ctx.request.body.find("target");
  if (it == ctx.request.body.end() || !(it->is_string() || it->is_number_integer())) {
    *error = {ErrorCode::kInvalidArgument, "'target' (a request id) is required"};
    return std::nullopt;
  }
  auto rid = ctx.client->FindInflight(it->dump());
  if (!rid) {
    *error = {ErrorCode::kNotFound, "no request " + it->dump() + " in flight on this connection"};
    return std::nullopt;
  }
  deps_.engine->Cancel(*rid);
  return json{{"cancelled", true}};
}

}  // namespace kvkeep
