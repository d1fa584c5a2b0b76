// Server: the Unix-socket listener. Binds the socket (or adopts a socket-activated one),
// sets its mode and group, accepts clients, reads each peer's credentials (SO_PEERCRED)
// and starts a Connection for it. A client over the connection limits (total or per uid,
// daemon/connection_limits.h) gets one `resource_exhausted` error line and is closed.
//
// Thread-safety: Listen/Adopt before the io_context runs; StopAccepting and CloseAll may
// be called from any thread.
#pragma once

#include <atomic>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include <asio.hpp>

#include "base/thread_annotations.h"
#include "daemon/config.h"
#include "daemon/connection.h"
#include "daemon/connection_limits.h"
#include "daemon/metrics.h"
#include "daemon/service.h"

namespace kvkeep {

struct ServerOptions {
  std::string socket_path;
  int32_t socket_mode = 0660;
  std::optional<gid_t> socket_gid;  // chown the socket to this group
  std::optional<gid_t> admin_gid;
  DaemonLimits limits;
};

class Server {
 public:
  // bulk handles the connections' large lines (Connection::kBulkLineBytes and more) off
  // the I/O threads; it must outlive every connection's work (join it before the service
  // goes).
  Server(asio::io_context& io, ServerOptions options, Service* service, DaemonMetrics* metrics,
         asio::any_io_executor bulk);

  // Binds socket_path (replacing a stale socket file; Unavailable if another daemon
  // answers on it), listens, and applies mode and group.
  Status Listen();
  // Uses an already listening socket (systemd socket activation); mode/group are the
  // socket unit's business.
  Status Adopt(int fd);
  void StartAccepting();
  // Stops accepting and removes the socket file if this server created it.
  void StopAccepting();
  // Closes every connection (cancelling their generations).
  void CloseAll();

 private:
  void AcceptNext();
  // Answers a client refused by the limits with one error line, and closes it.
  void Refuse(asio::local::stream_protocol::socket& socket, const PeerCred& peer,
              const Status& why);

  asio::io_context& io_;
  const ServerOptions options_;
  Service* const service_;
  DaemonMetrics* const metrics_;
  const asio::any_io_executor bulk_;
  // Shared with every connection: a connection may outlive the server (a handler still
  // queued on the stopped io_context or the bulk pool owns it) and gives its ticket and
  // output count back on destruction.
  const std::shared_ptr<ConnectionLimits> conn_limits_;
  std::atomic<int64_t> num_refused_{0};
  asio::local::stream_protocol::acceptor acceptor_;
  asio::steady_timer retry_timer_;
  bool bound_ = false;
  Mutex mu_;
  bool stopped_ GUARDED_BY(mu_) = false;
  std::vector<std::weak_ptr<Connection>> connections_ GUARDED_BY(mu_);
};

}  // namespace kvkeep
