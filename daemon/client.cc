#include "daemon/client.h"

#include "daemon/protocol.h"

namespace kvkeep {

void Client::SendResult(const nlohmann::json& id, nlohmann::json result) {
  Send(protocol::ResultLine(id, std::move(result)));
}

void Client::SendError(const nlohmann::json& id, const Status& status) {
  Send(protocol::ErrorLine(id, status));
}

void Client::SendEvent(const nlohmann::json& id, std::string_view event, nlohmann::json fields) {
  Send(protocol::EventLine(id, event, std::move(fields)));
}

Status Client::AddInflight(const std::string& key, RequestId rid, int32_t limit) {
  MutexLock lock(&mu_);
  if (closed_) return Status::Unavailable("connection closed");
  if (static_cast<int32_t>(inflight_.size()) >= limit) {
    return Status::TooManyRequests("connection has " + std::to_string(inflight_.size()) +
                                   " requests in flight (max_inflight_per_connection)");
  }
  if (!inflight_.emplace(key, rid).second) {
    return Status::AlreadyExists("a request with id " + key + " is already in flight");
  }
  return Status::OK();
}

std::optional<RequestId> Client::FindInflight(const std::string& key) const {
  MutexLock lock(&mu_);
  auto it = inflight_.find(key);
  if (it == inflight_.end()) return std::nullopt;
  return it->second;
}

void Client::RemoveInflight(const std::string& key) {
  MutexLock lock(&mu_);
  inflight_.erase(key);
}

std::vector<RequestId> Client::CloseAndTakeInflight() {
  MutexLock lock(&mu_);
  closed_ = true;
  std::vector<RequestId> out;
  for (const auto& [key, rid] : inflight_) out.push_back(rid);
  return out;
}

int32_t Client::num_inflight() const {
  MutexLock lock(&mu_);
  return static_cast<int32_t>(inflight_.size());
}

}  // namespace kvkeep
