#include "daemon/connection.h"

#include <spdlog/spdlog.h>

namespace kvkeep {

Connection::Connection(Socket socket, PeerCred peer, bool is_admin, const DaemonLimits& limits,
                       Service* service, DaemonMetrics* metrics,
                       std::shared_ptr<ConnectionLimits> conn_limits, asio::any_io_executor bulk)
    : Client(peer, is_admin),
      socket_(std::move(socket)),
      strand_(asio::make_strand(socket_.get_executor())),
      limits_(limits),
      service_(service),
      metrics_(metrics),
      conn_limits_(std::move(conn_limits)),
      bulk_(std::move(bulk)),
      framer_(static_cast<size_t>(limits.max_line_bytes)),
      linger_timer_(strand_) {
  metrics_->connections.fetch_add(1);
  metrics_->connections_total.fetch_add(1);
}

Connection::~Connection() {
  metrics_->connections.fetch_sub(1);
  conn_limits_->UpdateOutput(-counted_bytes_);
}

void Connection::RecountOutputLocked() {
  const int64_t now = static_cast<int64_t>(out_pending_.size() + out_writing_.size());
  conn_limits_->UpdateOutput(now - counted_bytes_);
  counted_bytes_ = now;
}

void Connection::Start() {
  asio::dispatch(strand_, [self = shared_from_this()] { self->ReadMore(); });
}

void Connection::ReadMore() {
  if (socket_closed_) return;
  socket_.async_read_some(
      asio::buffer(read_buf_),
      asio::bind_executor(strand_, [self = shared_from_this()](std::error_code ec, size_t n) {
        if (ec) {
          if (ec != asio::error::eof && ec != asio::error::operation_aborted) {
            spdlog::debug("connection (pid {}): read: {}", self->peer().pid, ec.message());
          }
          self->OnEof();
          return;
        }
        self->framer_.Feed(
            std::string_view(self->read_buf_.data(), n),
            [&](std::string_view line) { self->Accept(line, /*too_long=*/false); },
            [&] { self->Accept({}, /*too_long=*/true); });
        if (self->bulk_running_) {
          self->read_paused_ = true;  // BulkDone reads on
        } else {
          self->ReadMore();
        }
      }));
}

void Connection::Accept(std::string_view line, bool too_long) {
  if (bulk_running_) {  // keep the order: after the bulk line
    backlog_.push_back({std::string(too_long ? std::string_view() : line), too_long});
    return;
  }
  if (too_long) {
    SendLineTooLong();
    return;
  }
  if (line.size() < kBulkLineBytes) {
    // Parsed here; a verb that writes the store still goes to the bulk executor, where it
    // may wait for its group commit without holding an I/O thread.
    std::optional<protocol::Request> request = Parse(line);
    if (!request) return;
    if (!protocol::WritesStore(request->verb)) {
      service_->Handle(shared_from_this(), *request);
      return;
    }
    bulk_running_ = true;
    asio::post(bulk_, [self = shared_from_this(), request = std::move(*request)] {
      self->service_->Handle(self, request);
      asio::post(self->strand_, [self] { self->BulkDone(); });
    });
    return;
  }
  bulk_running_ = true;
  asio::post(bulk_, [self = shared_from_this(), text = std::string(line)] {
    if (std::optional<protocol::Request> request = self->Parse(text)) {
      self->service_->Handle(self, *request);
    }
    asio::post(self->strand_, [self] { self->BulkDone(); });
  });
}

void Connection::BulkDone() {
  bulk_running_ = false;
  while (!bulk_running_ && !backlog_.empty()) {
    Input next = std::move(backlog_.front());
    backlog_.pop_front();
    Accept(next.line, next.too_long);
  }
  if (!bulk_running_ && read_paused_) {
    read_paused_ = false;
    ReadMore();
  }
}

void Connection::SendLineTooLong() {
  metrics_->requests.fetch_add(1, std::memory_order_relaxed);
  metrics_->errors.fetch_add(1, std::memory_order_relaxed);
  Send(protocol::ErrorLine(
      nullptr, protocol::ErrorCode::kLineTooLong,
      "line longer than max_line_bytes " + std::to_string(limits_.max_line_bytes)));
}

std::optional<protocol::Request> Connection::Parse(std::string_view line) {
  if (line.find_first_not_of(" \t") == std::string_view::npos) return std::nullopt;  // blank
  metrics_->requests.fetch_add(1, std::memory_order_relaxed);
  protocol::Error error;
  nlohmann::json id;
  auto request = protocol::ParseRequest(line, limits_.max_json_depth, &error, &id);
  if (!request.ok()) {
    metrics_->errors.fetch_add(1, std::memory_order_relaxed);
    Send(protocol::ErrorLine(id, error));
    return std::nullopt;
  }
  return std::move(request).value();
}

void Connection::Send(std::string line) {
  MutexLock lock(&out_mu_);
  if (output_closed_) return;
  out_pending_ += line;
  out_pending_ += '\n';
  RecountOutputLocked();
  const int64_t unsent = static_cast<int64_t>(out_pending_.size() + out_writing_.size());
  const bool over_own = unsent > limits_.max_output_buffer_bytes;
  if (over_own || conn_limits_->IsSlowReader(unsent)) {
    // A reader that does not keep up: drop what it has not read and disconnect it.
    output_closed_ = true;
    out_pending_.clear();
    RecountOutputLocked();
    metrics_->slow_readers_dropped.fetch_add(1);
    if (over_own) {
      spdlog::warn("connection (pid {}, uid {}): output buffer over {} bytes; closing", peer().pid,
                   peer().uid, limits_.max_output_buffer_bytes);
    } else {
      spdlog::warn(
          "connection (pid {}, uid {}): {} unsent bytes while the daemon holds over {} "
          "(limits.max_output_bytes_total); closing the slow reader",
          peer().pid, peer().uid, unsent, conn_limits_->options().max_output_bytes_total);
    }
    asio::post(strand_, [self = shared_from_this()] { self->Close(); });
    return;
  }
  if (!flush_posted_ && !writing_) {
    flush_posted_ = true;
    asio::post(strand_, [self = shared_from_this()] { self->Flush(); });
  }
}

void Connection::SendResult(const nlohmann::json& id, nlohmann::json result) {
  std::string line = protocol::ResultLine(id, std::move(result));
  if (static_cast<int64_t>(line.size()) + 1 > limits_.max_output_buffer_bytes) {
    SendError(
        id, Status::ResourceExhausted(
                "the reply is " + std::to_string(line.size()) + " bytes, over the output cap of " +
                std::to_string(limits_.max_output_buffer_bytes) +
                " (limits.max_output_buffer_bytes); for session.info ask with "
                "\"messages\": false and/or \"tool_events\": false"));
    return;
  }
  Send(std::move(line));
}

void Connection::Flush() {
  MutexLock lock(&out_mu_);
  flush_posted_ = false;
  if (socket_closed_ || writing_) return;
  if (out_pending_.empty()) {
    // After EOF: close once the cancelled requests' terminal lines are out too. They are
    // sent just after leaving the in-flight table, so linger a moment before closing.
    if (close_after_flush_ && num_inflight() == 0 && !lingering_) {
      lingering_ = true;
      linger_timer_.expires_after(std::chrono::milliseconds(kLingerMs));
      linger_timer_.async_wait([self = shared_from_this()](std::error_code) {
        bool drained;
        {
          MutexLock lock(&self->out_mu_);
          self->lingering_ = false;
          drained = self->out_pending_.empty() && !self->writing_;
        }
        if (drained) {
          self->Close();
        } else {
          self->Flush();
        }
      });
    }
    return;
  }
  out_writing_.swap(out_pending_);
  writing_ = true;
  asio::async_write(
      socket_, asio::buffer(out_writing_),
      asio::bind_executor(strand_, [self = shared_from_this()](std::error_code ec, size_t) {
        {
          MutexLock lock(&self->out_mu_);
          self->writing_ = false;
          self->out_writing_.clear();
          self->RecountOutputLocked();
        }
        if (ec) {
          self->Close();
          return;
        }
        self->Flush();
      }));
}

void Connection::OnEof() {
  // The peer will send nothing more: its generations are orphaned, cancel them. Replies
  // already queued still go out (a client may have only shut down its write side).
  service_->OnClientClosed(*this);
  MutexLock lock(&out_mu_);
  close_after_flush_ = true;
  if (!writing_ && !flush_posted_) {
    flush_posted_ = true;
    asio::post(strand_, [self = shared_from_this()] { self->Flush(); });
  }
}

void Connection::Close() {
  if (socket_closed_) return;
  service_->OnClientClosed(*this);
  {
    MutexLock lock(&out_mu_);
    output_closed_ = true;
    socket_closed_ = true;
    out_pending_.clear();
    RecountOutputLocked();
  }
  linger_timer_.cancel();
  std::error_code ignored;
  socket_.shutdown(Socket::shutdown_both, ignored);
  socket_.close(ignored);
}

void Connection::CloseAsync() {
  asio::post(strand_, [self = shared_from_this()] { self->Close(); });
}

}  // namespace kvkeep
