// Service: the protocol verbs (docs/protocol.md) over the session table, the store and
// the engine. Transport-free: the server hands it parsed requests and a Client to reply
// to; it never touches sockets.
//
// Threads: Handle() runs on an I/O thread and answers control verbs synchronously (store
// writes commit before the reply is queued). session.generate is asynchronous: the
// engine calls back on its thread; token events are forwarded from there (Client::Send
// only queues), and the final event is posted through `post_store` (the bulk pool, not an
// I/O thread), which appends the assistant message to the session and the store before
// the terminal line is sent. So neither the engine thread nor an I/O thread waits on
// SQLite for a generation's reply (issue 11, defect 10).
//
// Thread-safety: all public methods are thread-safe. Locking: see daemon/session.h.
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>

#include <nlohmann/json.hpp>

#include "base/clock.h"
#include "daemon/client.h"
#include "daemon/config.h"
#include "daemon/episode_index.h"
#include "daemon/episode_serve.h"
#include "daemon/metrics.h"
#include "daemon/protocol.h"
#include "daemon/session.h"
#include "daemon/store.h"
#include "daemon/stored_bytes.h"
#include "daemon/tenant_salt.h"
#include "daemon/turn_renderer.h"
#include "daemon/uid_inflight.h"
#include "engine/engine.h"
#include "policy/retention.h"

namespace kvkeep {

struct ServiceOptions {
  DaemonLimits limits;
  int64_t retain_quota_blocks = 1 << 20;  // ttl.retain_quota_blocks: hint pins per uid
  std::string model_id;                   // the model's name (directory basename)
  int64_t max_context_tokens = 0;         // min(model positions, KV pool tokens)
  int32_t block_size = 16;
  std::string policy;
  TenantSalt tenant_salt;  // per instance, or from the cluster secret (daemon/tenant_salt.h)
};

struct ServiceDeps {
  Engine* engine = nullptr;
  const TurnRenderer* renderer = nullptr;
  Store* store = nullptr;
  Clock* clock = nullptr;
  DaemonMetrics* metrics = nullptr;
  // Runs a task on an I/O thread (asio::post onto the io_context).
  std::function<void(std::function<void()>)> post;
  // Runs a task that waits on a store write (a group commit) off the I/O threads: the
  // daemon's bulk pool. Unset: `post`.
  std::function<void(std::function<void()>)> post_store;
  // The per-session segment index and episodes (daemon/episode_index.h); null: off
  // (session.query answers unavailable).
  EpisodeIndex* episodes = nullptr;
  // The KV half's entry point for a routed turn (daemon/episode_serve.h); unset: full KV.
  EpisodeServeFn serve_episode;
};

class Service {
 public:
  Service(ServiceOptions options, ServiceDeps deps);

  // Loads the stored sessions (daemon start).
  Status LoadSessions();

  // Serves one request; replies (now, or later for session.generate) through client.
  void Handle(const std::shared_ptr<Client>& client, const protocol::Request& request);
  // The client went away: cancels its in-flight generations in the engine.
  void OnClientClosed(Client& client);
  // New generations are refused with `unavailable` from now on.
  void BeginShutdown() { shutting_down_.store(true); }
  // Generations in flight (for the shutdown drain and the watchdog).
  int64_t num_generating() const { return num_generating_.load(); }

  // session.retain: keeps uid's session's KV on the device for ttl_s seconds with a
  // retention priority (higher is kept longer among pinned sessions' peers), overriding
  // the learned TTL; ttl_s 0 releases. The pin counts ceil(tokens / block_size) blocks
  // against the uid's quota (ServiceOptions::retain_quota_blocks). NotFound for a session
  // the uid does not own; ResourceExhausted naming the quota past it; InvalidArgument for
  // ttl_s < 0, > 3600 or not finite. Returns {"session", "ttl_s", "priority",
  // "pinned_blocks", "uid_pinned_blocks", "quota_blocks"}. Thread-safe.
  Result<nlohmann::json> Retain(uint32_t uid, const std::string& session, double ttl_s,
                                double priority = 0);

 private:
  struct Ctx {
    const std::shared_ptr<Client>& client;
    const protocol::Request& request;
    protocol::Params params;
    uint32_t uid() const { return client->peer().uid; }
  };
  struct Generation;
  // Every handler returns its result or a Status whose code is the wire error
  // (protocol::WireCode); Handle sends one or the other.
  using Reply = Result<nlohmann::json>;

  Reply Hello(const Ctx& ctx);
  Reply Open(const Ctx& ctx);
  Reply Append(const Ctx& ctx);
  Reply ToolBegin(const Ctx& ctx);
  Reply ToolEnd(const Ctx& ctx);
  Reply Fork(const Ctx& ctx);
  Reply Close(const Ctx& ctx);
  Reply Info(const Ctx& ctx);
  Reply List(const Ctx& ctx);
  Reply Stats(const Ctx& ctx);
  Reply Cancel(const Ctx& ctx);
  Reply RetainVerb(const Ctx& ctx);
  // session.query {session, text, k}: the top segments of the session's index.
  Reply Query(const Ctx& ctx);
  // Hands messages [first, end) of s to the episode index. REQUIRES: s.mu held.
  void IndexNewLocked(const Session& s, size_t first) const;
  // Brings s's episode state into memory (daemon start, reopen). REQUIRES: s.mu held.
  void LoadEpisodesLocked(const Session& s) const;
  // Routes the turn about to be generated when s is over its episode budget and its last
  // message is the user's; may let serve_episode rewrite req. Returns the route for the
  // reply's "episode" ({"episode", "num_episodes", "served_by"}), null when not routed.
  // REQUIRES: s.mu held.
  nlohmann::json RouteTurnLocked(const Session& s, GenerateRequest* req);
  // The routed turn finished (its reply not yet appended): served_by from what the engine
  // reports. REQUIRES: s.mu held.
  void EpisodeServedLocked(const Session& s, const Usage& usage, nlohmann::json* route);
  // The optional `retain: {ttl_s, priority?}` of session.generate, applied before submit.
  // REQUIRES: s.mu held (as are both below).
  Status RetainField(const Ctx& ctx, const Session& s);
  Result<nlohmann::json> RetainSession(const Session& s, double ttl_s, double priority);
  // OK when the engine accepted the request (it replies later); the refusal otherwise.
  Status Generate(const Ctx& ctx);
  void FinishGeneration(const std::shared_ptr<Generation>& gen, const GenerateEvent& event);

  // The caller's session named by the request's `session` (NotFound when absent).
  Result<std::shared_ptr<Session>> FindSession(const Ctx& ctx) const;
  // Parses one message object of session.append / tool_end and renders its tokens.
  // `history` is the conversation before it (the chat template renders in context).
  Result<Message> ParseMessage(const nlohmann::json& m,
                               const std::vector<ChatMessageIn>& history) const;
  std::string NewSessionId();
  uint64_t CacheSalt(uint32_t uid) const;
  nlohmann::json SessionSummaryLocked(const Session& s) const;
  // session.info's "retention": the session.retain pin and the pending tool's key with its
  // learned figures and the TTL the policy chose. REQUIRES: s.mu held.
  nlohmann::json RetentionJsonLocked(const Session& s) const;
  std::string PrometheusText(const EngineStats& es) const;

  const ServiceOptions options_;
  const ServiceDeps deps_;
  SessionTable sessions_;
  StoredBytes stored_bytes_;  // limits.max_stored_bytes_per_uid
  UidInflight uid_inflight_;  // limits.max_inflight_per_uid
  std::atomic<bool> shutting_down_{false};
  std::atomic<int64_t> num_generating_{0};
  std::atomic<uint64_t> next_request_id_{1};
  std::atomic<uint64_t> id_counter_{0};
  const int64_t start_mono_us_;
  mutable std::mutex retain_mu_;
  RetentionBook retention_;  // guarded by retain_mu_
};

}  // namespace kvkeep
