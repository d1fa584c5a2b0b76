// HttpServer: HTTP/1.1 listeners (a Unix socket, optionally TCP) on GNU libmicrohttpd,
// which does all parsing and framing. docs/openai.md says why this library.
//
// Threading: libmicrohttpd's thread-per-connection mode. A handler runs on its
// connection's thread and may block (waiting for a generation); a streamed body is pulled
// by the same thread through HttpStream::Read, which blocks until bytes arrive. While it
// waits, the thread checks that the peer is still there (poll for hang-up on the
// connection's fd) and fires the stream's abandon callback when it is gone, so a client
// that disconnects cancels its generation.
//
// Identity: on the Unix socket the tenant is the peer's uid (SO_PEERCRED). On TCP every
// request must carry `Authorization: Bearer KEY`, and the key's tenant is the uid; no or a
// wrong key gets 401 before the handler runs.
//
// Limits: connections per listener, an idle timeout (slow-loris senders are cut after
// idle_timeout_s without a byte), the per-connection memory pool (request line and headers
// over it are refused by the library with 431/414), and bodies over max_body_bytes (413).
//
// Thread-safety: Start/Stop from one thread; handlers run concurrently.
#pragma once

#include <sys/types.h>

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "base/clock.h"
#include "base/status.h"
#include "daemon/request_trace.h"

struct MHD_Daemon;

namespace kvkeep {

struct HttpRequest {
  std::string method;
  std::string path;                            // without the query string
  std::map<std::string, std::string> headers;  // names lower-cased
  std::string body;
  uid_t tenant_uid = 0;
  bool over_tcp = false;
  // True while the client is still connected (non-blocking check of the socket).
  std::function<bool()> peer_connected;
  // The request's step timings (daemon/request_trace.h); null unless logging at debug.
  std::shared_ptr<RequestTrace> trace;

  std::string Header(const std::string& lower_name) const {
    auto it = headers.find(lower_name);
    return it == headers.end() ? std::string() : it->second;
  }
};

// The body of a streamed response: the producer Writes and Closes from any thread; the
// connection's thread Reads. Thread-safe.
class HttpStream {
 public:
  void Write(std::string bytes);
  void Close();
  // Called once (on the connection's thread) when the peer went away before Close.
  void SetOnAbandon(std::function<void()> fn);

  // Blocks until bytes, the end, or a tick (then asks `alive`); fills out. Returns false at
  // the end of the stream or when the peer is gone (after calling the abandon callback).
  bool Read(std::string* out, const std::function<bool()>& alive);

  // The server is done with the stream (it freed the response: the body ended, or a write
  // to the peer failed). Before Close, that means the peer went away: calls the abandon
  // callback. Read alone would not see it while bytes keep arriving faster than its tick.
  void Abandon();

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  std::string pending_;  // guarded by mu_
  bool closed_ = false;  // guarded by mu_
  std::function<void()> on_abandon_;
};

struct HttpResponse {
  int status = 200;
  std::string content_type = "application/json";
  std::vector<std::pair<std::string, std::string>> headers;
  std::string body;
  std::shared_ptr<HttpStream> stream;  // set: the body is streamed (chunked) from here
};

using HttpHandler = std::function<HttpResponse(const HttpRequest&)>;

struct HttpServerOptions {
  std::string unix_path;  // empty: no Unix listener
  int32_t unix_mode = 0660;
  std::string tcp_listen;                 // "HOST:PORT"; empty: no TCP listener
  std::map<std::string, uid_t> api_keys;  // bearer key -> tenant uid (TCP)
  std::vector<std::string> public_paths;  // served over TCP without a key (/health)
  int64_t max_body_bytes = 8 << 20;
  int32_t max_connections = 256;  // per listener
  int32_t idle_timeout_s = 30;
  int32_t memory_limit_bytes = 64 << 10;  // request line + headers + buffers
  // The reply to a request refused before the handler (401, 413).
  std::function<HttpResponse(int status)> refusal;
  Clock* clock = SystemClock();  // request traces (at log level debug)
};

// Reads an API key file: one `KEY TENANT` per line (# comments, blank lines ignored);
// TENANT is a uid or a user name. PermissionDenied unless the file is owned by this
// process's user and readable by no one else.
Result<std::map<std::string, uid_t>> LoadApiKeys(const std::string& path);

class HttpServer {
 public:
  HttpServer(HttpServerOptions options, HttpHandler handler);
  ~HttpServer();

  // Binds (or adopts, fd >= 0) the Unix socket, binds TCP, and starts serving.
  Status Start(int activated_unix_fd = -1);
  // Stops accepting new connections and removes the socket file; from then on handlers
  // see their peers as gone, so waits for generations end. Any thread.
  void StopAccepting();
  // StopAccepting, then waits for the connection threads.
  void Stop();
  // The bound TCP port (after Start; 0 without TCP).
  int tcp_port() const { return tcp_port_; }

  // Routing entry point of the library's callbacks, and their per-listener context.
  HttpResponse Dispatch(HttpRequest& request, bool over_tcp);
  struct Listener;
  bool stopping() const { return stopping_.load(); }
  const HttpServerOptions& options() const { return options_; }

 private:
  Result<MHD_Daemon*> StartDaemon(int listen_fd, bool over_tcp);

  const HttpServerOptions options_;
  const HttpHandler handler_;
  std::atomic<bool> stopping_{false};
  std::mutex mu_;  // guards the listen fds below during StopAccepting
  int unix_listen_fd_ = -1;
  int tcp_listen_fd_ = -1;
  std::vector<std::unique_ptr<Listener>> listeners_;
  MHD_Daemon* unix_daemon_ = nullptr;
  MHD_Daemon* tcp_daemon_ = nullptr;
  bool created_unix_path_ = false;
  int tcp_port_ = 0;
};

}  // namespace kvkeep
