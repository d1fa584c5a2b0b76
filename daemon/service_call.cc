#include "daemon/service_call.h"

namespace kvkeep {

using nlohmann::json;

Result<json> ServiceCall::Call(protocol::Verb verb, json body) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    reply_.reset();
  }
  body["verb"] = std::string(protocol::VerbName(verb));
  service_->Handle(shared_from_this(), protocol::Request{json(1), verb, std::move(body)});
  std::lock_guard<std::mutex> lock(mu_);
  if (!reply_) return Status::Internal(std::string(protocol::VerbName(verb)) + " did not answer");
  return std::move(*reply_);
}

Status ServiceCall::StartGenerate(json body, std::function<void(const std::string&)> on_token,
                                  std::function<void(Result<json>)> on_done) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    reply_.reset();
    on_token_ = std::move(on_token);
    on_done_ = std::move(on_done);
    starting_thread_ = std::this_thread::get_id();
  }
  body["verb"] = "session.generate";
  body["stream"] = true;
  service_->Handle(shared_from_this(),
                   protocol::Request{json(1), protocol::Verb::kSessionGenerate, std::move(body)});
  // A refusal before the engine arrives synchronously, here.
  std::lock_guard<std::mutex> lock(mu_);
  starting_thread_ = std::thread::id();
  if (reply_ && !reply_->ok()) {
    on_done_ = nullptr;
    return reply_->status();
  }
  return Status::OK();
}

void ServiceCall::SendResult(const json&, json result) {
  std::function<void(Result<json>)> done;
  {
    std::lock_guard<std::mutex> lock(mu_);
    done = std::move(on_done_);
    on_done_ = nullptr;
    if (!done) reply_ = std::move(result);
  }
  if (done) done(std::move(result));
}

void ServiceCall::SendError(const json&, const Status& status) {
  std::function<void(Result<json>)> done;
  {
    std::lock_guard<std::mutex> lock(mu_);
    reply_ = status;
    // A synchronous refusal of StartGenerate is returned by it; on_done_ is not called.
    if (starting_thread_ != std::this_thread::get_id()) {
      done = std::move(on_done_);
      on_done_ = nullptr;
    }
  }
  if (done) done(status);
}

void ServiceCall::SendEvent(const json&, std::string_view, json fields) {
  if (on_token_) on_token_(fields.value("text", ""));
}

}  // namespace kvkeep
