// DaemonClient: a small blocking client for kvkeepd's protocol (docs/protocol.md) over
// one Unix-socket connection: newline-delimited JSON requests with auto-generated integer
// ids, replies matched by id, streamed events handed to a callback, and wire errors
// turned into Status. Used by the `kvkeep status|sessions|chat` verbs, the replay tool and
// bench/daemon_bench.
//
// Pipelining: Send() may be called several times before Receive(); Call() sends one
// request and reads until its terminal line, keeping lines of other requests for later
// Receive() calls.
//
// Thread-safety: none; use one DaemonClient per thread. Ownership: owns its socket.
#pragma once

#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <string>
#include <string_view>

#include <nlohmann/json.hpp>

#include "base/file.h"
#include "base/status.h"

namespace kvkeep::client {

// $KVKEEP_SOCKET; else the first existing of $XDG_RUNTIME_DIR/kvkeep.sock,
// /run/kvkeep/kvkeep.sock and /tmp/kvkeep-$UID.sock (the daemon's defaults, see
// daemon/config.h); else /run/kvkeep/kvkeep.sock.
std::string DefaultSocketPath(Env* env = DefaultEnv());

// Maps an `error` object {code, message} to a Status: not_found -> NotFound,
// invalid_argument/bad_json/too_deep/unknown_verb/line_too_long -> InvalidArgument,
// already_exists -> AlreadyExists, busy/unavailable -> Unavailable, too_many_* and
// resource_exhausted -> ResourceExhausted, permission_denied -> PermissionDenied,
// cancelled -> Cancelled, anything else -> Internal. The message is "[code] message".
Status StatusFromWireError(const nlohmann::json& error);

struct DaemonClientOptions {
  // Longest wait for one reply line; <= 0 waits forever.
  int64_t timeout_ms = 0;
  // Longest reply line accepted (a session.info of a long conversation is large).
  size_t max_line_bytes = size_t{256} << 20;
};

class DaemonClient {
 public:
  // Called with each streamed event line ({"id", "event", ...}) of a Call.
  using EventFn = std::function<void(const nlohmann::json& event)>;

  // Connects to socket_path. Errors: Unavailable (nobody listening, no such file),
  // InvalidArgument (path too long), IOError.
  static Result<std::unique_ptr<DaemonClient>> Connect(const std::string& socket_path,
                                                       DaemonClientOptions options = {});
  ~DaemonClient();
  DaemonClient(const DaemonClient&) = delete;
  DaemonClient& operator=(const DaemonClient&) = delete;

  // Sends `verb` with `params` (a JSON object; its fields go at the top level) and waits
  // for the terminal line: returns its `result`, or the wire error as a Status. Events
  // of this request go to on_event.
  Result<nlohmann::json> Call(std::string_view verb,
                              nlohmann::json params = nlohmann::json::object(),
                              const EventFn& on_event = nullptr);

  // Sends a request without waiting; returns the id it carries.
  Result<int64_t> Send(std::string_view verb, nlohmann::json params = nlohmann::json::object());
  // Sends a raw line (a '\n' is appended); for tests and benchmarks.
  Status SendLine(std::string_view line);
  // The next line from the daemon, of any request (lines kept by Call first).
  // Errors: Unavailable when the daemon closed the connection, DeadlineExceeded on
  // timeout, Corruption for a line that is not a JSON object, ResourceExhausted for an
  // over-long line.
  Result<nlohmann::json> Receive();

  const std::string& socket_path() const { return socket_path_; }

 private:
  DaemonClient(int fd, std::string socket_path, DaemonClientOptions options);
  Result<nlohmann::json> ReadMessage();

  int fd_;
  std::string socket_path_;
  DaemonClientOptions options_;
  int64_t next_id_ = 1;
  std::string buffer_;                  // bytes received, not yet split into lines
  std::deque<nlohmann::json> stashed_;  // lines read by Call for other requests
};

}  // namespace kvkeep::client
