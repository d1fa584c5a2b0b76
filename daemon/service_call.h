// ServiceCall: calls the Service's verbs from inside the daemon (the HTTP front end), as a
// Client whose replies arrive as values instead of JSON lines. One ServiceCall is one
// request's client: the service's per-connection bookkeeping (in-flight table, cancel on
// close) applies to it as to a socket client.
//
// Thread-safety: Call/Start from one thread; replies arrive from any thread.
#pragma once

#include <condition_variable>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>

#include <nlohmann/json.hpp>

#include "daemon/client.h"
#include "daemon/protocol.h"
#include "daemon/service.h"

namespace kvkeep {

class ServiceCall final : public Client, public std::enable_shared_from_this<ServiceCall> {
 public:
  ServiceCall(Service* service, uid_t uid)
      : Client(PeerCred{0, uid, 0}, false), service_(service) {}

  // Runs a verb that answers at once (everything but session.generate).
  Result<nlohmann::json> Call(protocol::Verb verb, nlohmann::json body);

  // Starts session.generate (body without verb/id). on_token gets each token's text (engine
  // thread); on_done gets the result or the error (the bulk pool). Returns the refusal
  // when the service refused before the engine saw it (on_done is then never called).
  Status StartGenerate(nlohmann::json body, std::function<void(const std::string&)> on_token,
                       std::function<void(Result<nlohmann::json>)> on_done);
  // Cancels the generation in flight (the peer went away).
  void Cancel() { service_->OnClientClosed(*this); }

  void Send(std::string line) override {}
  void SendResult(const nlohmann::json& id, nlohmann::json result) override;
  void SendError(const nlohmann::json& id, const Status& status) override;
  void SendEvent(const nlohmann::json& id, std::string_view event, nlohmann::json fields) override;

 private:
  Service* const service_;
  std::mutex mu_;
  std::optional<Result<nlohmann::json>> reply_;  // guarded by mu_ (Call)
  std::function<void(const std::string&)> on_token_;
  std::function<void(Result<nlohmann::json>)> on_done_;  // guarded by mu_
  // The thread inside StartGenerate's Handle: an error it sends is a synchronous refusal.
  std::thread::id starting_thread_;  // guarded by mu_
};

}  // namespace kvkeep
