#include "tools/replay/daemon_client.h"

#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <utility>

namespace kvkeep::client {

using nlohmann::json;

namespace {

Status ErrnoStatus(std::string_view what) {
  return Status::IOError(std::string(what) + ": " + std::strerror(errno));
}

StatusCode CodeOfWireError(std::string_view code) {
  if (code == "not_found") return StatusCode::kNotFound;
  if (code == "invalid_argument" || code == "bad_json" || code == "too_deep" ||
      code == "unknown_verb" || code == "line_too_long") {
    return StatusCode::kInvalidArgument;
  }
  if (code == "already_exists") return StatusCode::kAlreadyExists;
  if (code == "busy" || code == "unavailable") return StatusCode::kUnavailable;
  if (code == "too_many_sessions" || code == "too_many_requests" || code == "resource_exhausted") {
    return StatusCode::kResourceExhausted;
  }
  if (code == "permission_denied") return StatusCode::kPermissionDenied;
  if (code == "cancelled") return StatusCode::kCancelled;
  return StatusCode::kInternal;
}

}  // namespace

std::string DefaultSocketPath(Env* env) {
  std::string explicit_path = env->GetEnvVar("KVKEEP_SOCKET");
  if (!explicit_path.empty()) return explicit_path;
  std::string runtime = env->GetEnvVar("XDG_RUNTIME_DIR");
  const std::string system_path = "/run/kvkeep/kvkeep.sock";
  for (const std::string& path :
       {runtime.empty() ? std::string() : JoinPath(runtime, "kvkeep.sock"), system_path,
        "/tmp/kvkeep-" + std::to_string(::getuid()) + ".sock"}) {
    if (!path.empty() && env->FileExists(path)) return path;
  }
  return system_path;
}

Status StatusFromWireError(const json& error) {
  std::string code = "internal";
  std::string message;
  if (error.is_object()) {
    if (auto it = error.find("code"); it != error.end() && it->is_string()) code = *it;
    if (auto it = error.find("message"); it != error.end() && it->is_string()) message = *it;
  }
  return Status(CodeOfWireError(code), "[" + code + "] " + message);
}

Result<std::unique_ptr<DaemonClient>> DaemonClient::Connect(const std::string& socket_path,
                                                            DaemonClientOptions options) {
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  if (socket_path.empty() || socket_path.size() >= sizeof(addr.sun_path)) {
    return Status::InvalidArgument("bad socket path '" + socket_path + "'");
  }
  std::memcpy(addr.sun_path, socket_path.data(), socket_path.size());
  int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return ErrnoStatus("socket");
  if (::connect(fd, reinterpret_cast<const sockaddr*>(&addr), sizeof(addr)) != 0) {
    const int err = errno;
    ::close(fd);
    std::string what = "cannot connect to " + socket_path + ": " + std::strerror(err);
    if (err == ENOENT || err == ECONNREFUSED || err == EAGAIN) {
      return Status::Unavailable(what + " (is kvkeepd running?)");
    }
    if (err == EACCES || err == EPERM) {
      return Status::PermissionDenied(what + " (is your user in the socket's group?)");
    }
    return Status::IOError(what);
  }
  return std::unique_ptr<DaemonClient>(new DaemonClient(fd, socket_path, options));
}

DaemonClient::DaemonClient(int fd, std::string socket_path, DaemonClientOptions options)
    : fd_(fd), socket_path_(std::move(socket_path)), options_(options) {}

DaemonClient::~DaemonClient() { ::close(fd_); }

Status DaemonClient::SendLine(std::string_view line) {
  std::string data(line);
  data.push_back('\n');
  size_t sent = 0;
  while (sent < data.size()) {
    ssize_t n = ::send(fd_, data.data() + sent, data.size() - sent, MSG_NOSIGNAL);
    if (n < 0) {
      if (errno == EINTR) continue;
      if (errno == EPIPE || errno == ECONNRESET) {
        return Status::Unavailable("kvkeepd closed the connection");
      }
      return ErrnoStatus("send");
    }
    sent += static_cast<size_t>(n);
  }
  return Status::OK();
}

Result<int64_t> DaemonClient::Send(std::string_view verb, json params) {
  if (!params.is_object()) return Status::InvalidArgument("request params must be an object");
  const int64_t id = next_id_++;
  params["id"] = id;
  params["verb"] = verb;
  RETURN_IF_ERROR(SendLine(params.dump(-1, ' ', false, json::error_handler_t::replace)));
  return id;
}

Result<json> DaemonClient::ReadMessage() {
  while (true) {
    if (size_t newline = buffer_.find('\n'); newline != std::string::npos) {
      std::string line = buffer_.substr(0, newline);
      buffer_.erase(0, newline + 1);
      if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
      json message = json::parse(line, nullptr, /*allow_exceptions=*/false);
      if (!message.is_object()) {
        return Status::Corruption("kvkeepd sent a line that is not a JSON object: " +
                                  line.substr(0, 200));
      }
      return message;
    }
    if (buffer_.size() > options_.max_line_bytes) {
      return Status::ResourceExhausted("reply line longer than " +
                                       std::to_string(options_.max_line_bytes) + " bytes");
    }
    pollfd pfd{fd_, POLLIN, 0};
    int ready =
        ::poll(&pfd, 1, options_.timeout_ms > 0 ? static_cast<int>(options_.timeout_ms) : -1);
    if (ready < 0) {
      if (errno == EINTR) continue;
      return ErrnoStatus("poll");
    }
    if (ready == 0) {
      return Status::DeadlineExceeded("no reply from kvkeepd within " +
                                      std::to_string(options_.timeout_ms) + " ms");
    }
    char chunk[1 << 16];
    ssize_t n = ::recv(fd_, chunk, sizeof(chunk), 0);
    if (n < 0) {
      if (errno == EINTR || errno == EAGAIN) continue;
      return ErrnoStatus("recv");
    }
    if (n == 0) return Status::Unavailable("kvkeepd closed the connection");
    buffer_.append(chunk, static_cast<size_t>(n));
  }
}

Result<json> DaemonClient::Receive() {
  if (!stashed_.empty()) {
    json message = std::move(stashed_.front());
    stashed_.pop_front();
    return message;
  }
  return ReadMessage();
}

Result<json> DaemonClient::Call(std::string_view verb, json params, const EventFn& on_event) {
  ASSIGN_OR_RETURN(const int64_t id, Send(verb, std::move(params)));
  while (true) {
    ASSIGN_OR_RETURN(json message, ReadMessage());
    auto message_id = message.find("id");
    if (message_id == message.end() || !message_id->is_number_integer() ||
        message_id->get<int64_t>() != id) {
      stashed_.push_back(std::move(message));
      continue;
    }
    if (message.contains("error")) return StatusFromWireError(message["error"]);
    if (message.contains("result")) return std::move(message["result"]);
    if (on_event) on_event(message);
  }
}

}  // namespace kvkeep::client
