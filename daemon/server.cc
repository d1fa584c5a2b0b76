#include "daemon/server.h"

#include <spdlog/spdlog.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "daemon/peer_cred.h"

namespace kvkeep {

using asio::local::stream_protocol;

Server::Server(asio::io_context& io, ServerOptions options, Service* service,
               DaemonMetrics* metrics, asio::any_io_executor bulk)
    : io_(io),
      options_(std::move(options)),
      service_(service),
      metrics_(metrics),
      bulk_(std::move(bulk)),
      conn_limits_(
          std::make_shared<ConnectionLimits>(ConnectionLimits::FromLimits(options_.limits))),
      acceptor_(io),
      retry_timer_(io) {}

Status Server::Listen() {
  const std::string& path = options_.socket_path;
  struct stat st;
  if (lstat(path.c_str(), &st) == 0) {
    if (!S_ISSOCK(st.st_mode)) {
      return Status::AlreadyExists(path + " exists and is not a socket");
    }
    stream_protocol::socket probe(io_);
    std::error_code ec;
    probe.connect(stream_protocol::endpoint(path), ec);
    if (!ec) return Status::Unavailable("another daemon is listening on " + path);
    ::unlink(path.c_str());  // stale socket of a crashed daemon
  }
  std::error_code ec;
  // Create the socket with the configured mode from the start (no window where it is
  // more open than configured): bind under a umask that leaves exactly those bits.
  mode_t old_mask = ::umask(static_cast<mode_t>(~options_.socket_mode & 0777));
  acceptor_.open(stream_protocol(), ec);
  if (!ec) acceptor_.bind(stream_protocol::endpoint(path), ec);
  ::umask(old_mask);
  if (ec) return Status::IOError("bind " + path + ": " + ec.message());
  bound_ = true;
  acceptor_.listen(asio::socket_base::max_listen_connections, ec);
  if (ec) return Status::IOError("listen " + path + ": " + ec.message());
  if (::chmod(path.c_str(), static_cast<mode_t>(options_.socket_mode)) != 0) {
    return Status::IOError("chmod " + path + ": " + std::strerror(errno));
  }
  if (options_.socket_gid &&
      ::chown(path.c_str(), static_cast<uid_t>(-1), *options_.socket_gid) != 0) {
    return Status::IOError("chown " + path + ": " + std::strerror(errno));
  }
  return Status::OK();
}

Status Server::Adopt(int fd) {
  std::error_code ec;
  acceptor_.assign(stream_protocol(), fd, ec);
  if (ec) return Status::IOError("adopting socket fd " + std::to_string(fd) + ": " + ec.message());
  return Status::OK();
}

void Server::StartAccepting() { AcceptNext(); }

void Server::AcceptNext() {
  acceptor_.async_accept(
      asio::make_strand(io_), [this](std::error_code ec, stream_protocol::socket socket) {
        if (ec == asio::error::operation_aborted || !acceptor_.is_open()) return;
        if (ec) {
          // EMFILE and friends: back off instead of spinning.
          spdlog::warn("accept: {}", ec.message());
          retry_timer_.expires_after(std::chrono::milliseconds(100));
          retry_timer_.async_wait([this](std::error_code e) {
            if (!e) AcceptNext();
          });
          return;
        }
        auto cred = GetPeerCred(socket.native_handle());
        if (!cred.ok()) {
          spdlog::warn("accept: {}", cred.status().ToString());
        } else if (auto ticket = conn_limits_->Admit(cred->uid); !ticket.ok()) {
          Refuse(socket, *cred, ticket.status());
        } else {
          bool admin = IsAdmin(*cred, options_.admin_gid);
          auto conn = std::make_shared<Connection>(std::move(socket), *cred, admin, options_.limits,
                                                   service_, metrics_, conn_limits_, bulk_);
          conn->SetTicket(std::move(ticket).value());
          spdlog::debug("connection from pid {} uid {} gid {}{}", cred->pid, cred->uid, cred->gid,
                        admin ? " (admin)" : "");
          {
            MutexLock lock(&mu_);
            if (stopped_) return;
            std::erase_if(connections_, [](const auto& w) { return w.expired(); });
            connections_.push_back(conn);
          }
          conn->Start();
        }
        AcceptNext();
      });
}

void Server::Refuse(stream_protocol::socket& socket, const PeerCred& peer, const Status& why) {
  const int64_t n = num_refused_.fetch_add(1) + 1;
  if ((n & (n - 1)) == 0) {  // the 1st, 2nd, 4th, 8th ... refusal: loud, not a log flood
    spdlog::warn("refused a connection from pid {} uid {}: {} ({} refused so far)", peer.pid,
                 peer.uid, why.message(), n);
  }
  // One short line into the fresh socket's empty send buffer: it does not block.
  std::string line =
      protocol::ErrorLine(nullptr, protocol::ErrorCode::kResourceExhausted, why.message()) + "\n";
  std::error_code ec;
  asio::write(socket, asio::buffer(line), ec);
  socket.shutdown(stream_protocol::socket::shutdown_both, ec);
  socket.close(ec);
}

void Server::StopAccepting() {
  asio::post(io_, [this] {
    std::error_code ignored;
    acceptor_.close(ignored);
    retry_timer_.cancel();
  });
  if (bound_) {
    ::unlink(options_.socket_path.c_str());
    bound_ = false;
  }
}

void Server::CloseAll() {
  std::vector<std::weak_ptr<Connection>> conns;
  {
    MutexLock lock(&mu_);
    stopped_ = true;
    conns.swap(connections_);
  }
  for (auto& w : conns) {
    if (auto c = w.lock()) c->CloseAsync();
  }
}

}  // namespace kvkeep
