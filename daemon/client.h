// Client: what the service knows about one connection — who is on the other end, how to
// send it a line, and which of its requests are in flight (for `cancel`, the in-flight
// limit, and cancelling everything when it goes away). The server's Connection
// implements Send.
//
// Thread-safety: every method is thread-safe (Send is called from the engine-completion
// path and I/O threads alike).
#pragma once

#include <cstdint>
#include <map>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "base/status.h"
#include "base/thread_annotations.h"
#include "daemon/peer_cred.h"
#include "engine/engine.h"

namespace kvkeep {

class Client {
 public:
  Client(PeerCred peer, bool is_admin) : peer_(peer), is_admin_(is_admin) {}
  virtual ~Client() = default;

  // Queues one line (without its newline) for the peer. No-op once the connection closed.
  virtual void Send(std::string line) = 0;

  // The service's replies to request `id`: a result, an error, or a streamed event. The
  // defaults render JSON lines (docs/protocol.md) and Send them; a front end that is not
  // line-based (HTTP) overrides them to receive the values themselves.
  virtual void SendResult(const nlohmann::json& id, nlohmann::json result);
  // REQUIRES: !status.ok()
  virtual void SendError(const nlohmann::json& id, const Status& status);
  virtual void SendEvent(const nlohmann::json& id, std::string_view event, nlohmann::json fields);

  const PeerCred& peer() const { return peer_; }
  bool is_admin() const { return is_admin_; }

  // Registers an in-flight request under its wire id (key: the id's JSON text).
  // ResourceExhausted at `limit`; AlreadyExists for a duplicate id; Unavailable once
  // the client closed.
  Status AddInflight(const std::string& key, RequestId rid, int32_t limit);
  std::optional<RequestId> FindInflight(const std::string& key) const;
  void RemoveInflight(const std::string& key);
  // Marks the client closed and returns every in-flight request (to cancel them).
  std::vector<RequestId> CloseAndTakeInflight();
  int32_t num_inflight() const;

 private:
  const PeerCred peer_;
  const bool is_admin_;
  mutable Mutex mu_;
  bool closed_ GUARDED_BY(mu_) = false;
  std::map<std::string, RequestId> inflight_ GUARDED_BY(mu_);
};

}  // namespace kvkeep
