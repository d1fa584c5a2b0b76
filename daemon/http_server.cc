#include "daemon/http_server.h"

#include <arpa/inet.h>
#include <microhttpd.h>
#include <netdb.h>
#include <poll.h>
#include <pwd.h>
#include <spdlog/spdlog.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <chrono>
#include <cstring>
#include <fstream>
#include <sstream>

#include "daemon/peer_cred.h"

namespace kvkeep {

struct HttpServer::Listener {
  HttpServer* server;
  bool over_tcp;
};

namespace {

constexpr auto kPeerCheckInterval = std::chrono::milliseconds(200);

std::string Lower(std::string s) {
  std::transform(s.begin(), s.end(), s.begin(),
                 [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  return s;
}

std::string ErrnoText(const std::string& what) { return what + ": " + std::strerror(errno); }

// The peer is gone when its end hung up or errored; POLLIN alone (a pipelined request)
// is not a hang-up.
bool PeerConnected(int fd) {
  pollfd p{fd, POLLRDHUP, 0};
  if (::poll(&p, 1, 0) <= 0) return true;
  return (p.revents & (POLLRDHUP | POLLHUP | POLLERR | POLLNVAL)) == 0;
}

Result<int> BindUnix(const std::string& path, int32_t mode) {
  if (path.size() >= sizeof(sockaddr_un::sun_path)) {
    return Status::InvalidArgument("HTTP socket path too long: " + path);
  }
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  std::strncpy(addr.sun_path, path.c_str(), sizeof(addr.sun_path) - 1);
  // A socket file nobody answers on is stale (a crashed daemon's); a live one is not ours.
  int probe = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (probe >= 0) {
    bool live = ::connect(probe, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0;
    ::close(probe);
    if (live) return Status::Unavailable("another daemon answers on " + path);
  }
  ::unlink(path.c_str());
  int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return Status::IOError(ErrnoText("socket"));
  if (::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0 ||
      ::chmod(path.c_str(), static_cast<mode_t>(mode)) != 0 || ::listen(fd, 128) != 0) {
    Status st = Status::IOError(ErrnoText("binding " + path));
    ::close(fd);
    return st;
  }
  return fd;
}

Result<int> BindTcp(const std::string& listen, int* port_out) {
  const size_t colon = listen.rfind(':');
  if (colon == std::string::npos || colon == 0) {
    return Status::InvalidArgument("--http-listen must be HOST:PORT, not '" + listen + "'");
  }
  std::string host = listen.substr(0, colon);
  if (host.size() > 2 && host.front() == '[' && host.back() == ']') {
    host = host.substr(1, host.size() - 2);
  }
  addrinfo hints{};
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_NUMERICHOST | AI_NUMERICSERV | AI_PASSIVE;
  addrinfo* res = nullptr;
  if (int rc = ::getaddrinfo(host.c_str(), listen.substr(colon + 1).c_str(), &hints, &res);
      rc != 0) {
    return Status::InvalidArgument("--http-listen '" + listen + "': " + gai_strerror(rc));
  }
  int fd = ::socket(res->ai_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
  int one = 1;
  if (fd >= 0) ::setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
  if (fd < 0 || ::bind(fd, res->ai_addr, res->ai_addrlen) != 0 || ::listen(fd, 128) != 0) {
    Status st = Status::IOError(ErrnoText("binding " + listen));
    if (fd >= 0) ::close(fd);
    ::freeaddrinfo(res);
    return st;
  }
  ::freeaddrinfo(res);
  sockaddr_storage bound{};
  socklen_t len = sizeof(bound);
  ::getsockname(fd, reinterpret_cast<sockaddr*>(&bound), &len);
  *port_out = bound.ss_family == AF_INET6
                  ? ntohs(reinterpret_cast<sockaddr_in6*>(&bound)->sin6_port)
                  : ntohs(reinterpret_cast<sockaddr_in*>(&bound)->sin_port);
  return fd;
}

// Per-request state (the library's con_cls): the body as it arrives, and the trace that
// OnCompleted finishes once the response is written.
struct RequestState {
  std::string body;
  bool too_large = false;
  std::shared_ptr<RequestTrace> trace;  // null unless logging at debug
  std::string what;                     // "METHOD PATH STATUS", for the trace line
};

// A streamed body being pulled by the library.
struct StreamState {
  std::shared_ptr<HttpStream> stream;
  HttpServer* server;
  int fd;
  std::string buffer;
  size_t offset = 0;
};

ssize_t ReadStream(void* cls, uint64_t, char* buf, size_t max) {
  auto* s = static_cast<StreamState*>(cls);
  if (s->offset == s->buffer.size()) {
    s->buffer.clear();
    s->offset = 0;
    const int fd = s->fd;
    HttpServer* server = s->server;
    if (!s->stream->Read(&s->buffer,
                         [fd, server] { return !server->stopping() && PeerConnected(fd); })) {
      if (s->buffer.empty()) return MHD_CONTENT_READER_END_OF_STREAM;
    }
    if (s->buffer.empty()) return MHD_CONTENT_READER_END_WITH_ERROR;
  }
  const size_t n = std::min(max, s->buffer.size() - s->offset);
  std::memcpy(buf, s->buffer.data() + s->offset, n);
  s->offset += n;
  return static_cast<ssize_t>(n);
}

void FreeStream(void* cls) {
  auto* s = static_cast<StreamState*>(cls);
  s->stream->Abandon();  // a no-op after Close: only a peer that left cancels the turn
  delete s;
}

MHD_Result CollectHeader(void* cls, MHD_ValueKind, const char* key, const char* value) {
  auto* headers = static_cast<std::map<std::string, std::string>*>(cls);
  (*headers)[Lower(key)] = value ? value : "";
  return MHD_YES;
}

MHD_Result Queue(MHD_Connection* conn, const HttpResponse& r, HttpServer* server, int fd) {
  MHD_Response* resp;
  if (r.stream) {
    auto* state = new StreamState{r.stream, server, fd, {}, 0};
    resp = MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, 16 * 1024, ReadStream, state,
                                             FreeStream);
  } else {
    resp = MHD_create_response_from_buffer(r.body.size(), const_cast<char*>(r.body.data()),
                                           MHD_RESPMEM_MUST_COPY);
  }
  if (resp == nullptr) return MHD_NO;
  MHD_add_response_header(resp, "Content-Type", r.content_type.c_str());
  for (const auto& [k, v] : r.headers) MHD_add_response_header(resp, k.c_str(), v.c_str());
  MHD_Result rc = MHD_queue_response(conn, static_cast<unsigned int>(r.status), resp);
  MHD_destroy_response(resp);
  return rc;
}

MHD_Result OnRequest(void* cls, MHD_Connection* conn, const char* url, const char* method,
                     const char*, const char* upload_data, size_t* upload_data_size,
                     void** con_cls) {
  auto* listener = static_cast<HttpServer::Listener*>(cls);
  const HttpServerOptions& opts = listener->server->options();
  if (*con_cls == nullptr) {
    auto* state = new RequestState;
    state->trace = RequestTrace::StartIfDebug(opts.clock);  // the headers are in
    *con_cls = state;
    const char* length = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, "Content-Length");
    if (length != nullptr && std::strtoll(length, nullptr, 10) > opts.max_body_bytes) {
      state->too_large = true;  // answered now: the body is never read
    } else {
      return MHD_YES;
    }
  }
  auto* state = static_cast<RequestState*>(*con_cls);
  if (*upload_data_size > 0) {
    if (state->body.size() + *upload_data_size > static_cast<size_t>(opts.max_body_bytes)) {
      state->too_large = true;
      state->body.clear();
    } else if (!state->too_large) {
      state->body.append(upload_data, *upload_data_size);
    }
    *upload_data_size = 0;
    return MHD_YES;
  }
  const MHD_ConnectionInfo* info = MHD_get_connection_info(conn, MHD_CONNECTION_INFO_CONNECTION_FD);
  const int fd = info ? info->connect_fd : -1;
  HttpRequest req;
  req.method = method;
  req.path = url;
  MHD_get_connection_values(conn, MHD_HEADER_KIND, CollectHeader, &req.headers);
  HttpServer* server = listener->server;
  req.peer_connected = [fd, server] { return !server->stopping() && PeerConnected(fd); };
  TraceMark(state->trace, "read");
  req.trace = state->trace;
  HttpResponse resp;
  if (state->too_large) {
    resp = opts.refusal(413);
  } else {
    req.body = std::move(state->body);
    if (!listener->over_tcp) {
      auto cred = GetPeerCred(fd);
      if (!cred.ok()) {
        spdlog::warn("http: no peer credentials: {}", cred.status().ToString());
        return MHD_NO;
      }
      req.tenant_uid = cred->uid;
    }
    // The last line of defence: a handler bug that throws is one 500, never the daemon.
    try {
      resp = listener->server->Dispatch(req, listener->over_tcp);
    } catch (const std::exception& e) {
      spdlog::error("http: {} {} threw: {}", req.method, req.path, e.what());
      resp.status = 500;
      resp.body = R"j({"error": {"message": "internal error (logged)", "type": "server_error", )j"
                  R"j("param": null, "code": "internal"}})j";
    }
  }
  if (state->trace) state->what = req.method + " " + req.path + " " + std::to_string(resp.status);
  return Queue(conn, resp, listener->server, fd);
}

void OnCompleted(void*, MHD_Connection*, void** con_cls, MHD_RequestTerminationCode code) {
  auto* state = static_cast<RequestState*>(*con_cls);
  if (state != nullptr && state->trace) {
    state->trace->Mark("write");  // the response is sent (or the connection ended)
    spdlog::debug("trace http {}{}: {}", state->what,
                  code == MHD_REQUEST_TERMINATED_COMPLETED_OK ? "" : " (not completed)",
                  state->trace->Line());
  }
  delete state;
  *con_cls = nullptr;
}

void LogFromLibrary(void*, const char* fmt, va_list ap) {
  char buf[512];
  std::vsnprintf(buf, sizeof(buf), fmt, ap);
  std::string line(buf);
  while (!line.empty() && line.back() == '\n') line.pop_back();
  spdlog::debug("http: {}", line);
}

}  // namespace

void HttpStream::Write(std::string bytes) {
  std::lock_guard<std::mutex> lock(mu_);
  if (closed_) return;
  pending_ += bytes;
  cv_.notify_all();
}

void HttpStream::Close() {
  std::lock_guard<std::mutex> lock(mu_);
  closed_ = true;
  cv_.notify_all();
}

void HttpStream::SetOnAbandon(std::function<void()> fn) {
  std::lock_guard<std::mutex> lock(mu_);
  on_abandon_ = std::move(fn);
}

bool HttpStream::Read(std::string* out, const std::function<bool()>& alive) {
  std::unique_lock<std::mutex> lock(mu_);
  while (pending_.empty() && !closed_) {
    if (cv_.wait_for(lock, kPeerCheckInterval) == std::cv_status::timeout && !alive()) {
      lock.unlock();
      Abandon();
      return false;
    }
  }
  out->swap(pending_);
  pending_.clear();
  return !out->empty();
}

void HttpStream::Abandon() {
  std::function<void()> abandon;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (closed_) return;
    closed_ = true;  // nobody reads what is written from now on
    pending_.clear();
    abandon = std::move(on_abandon_);
    on_abandon_ = nullptr;
  }
  if (abandon) abandon();
}

Result<std::map<std::string, uid_t>> LoadApiKeys(const std::string& path) {
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0) return Status::NotFound(ErrnoText("api key file " + path));
  if (st.st_uid != ::geteuid() || (st.st_mode & 077) != 0) {
    return Status::PermissionDenied("api key file " + path +
                                    " must be owned by the daemon's user and mode 0600 or 0400");
  }
  std::ifstream in(path);
  if (!in) return Status::IOError(ErrnoText("reading " + path));
  std::map<std::string, uid_t> keys;
  std::string line;
  for (int lineno = 1; std::getline(in, line); ++lineno) {
    std::istringstream fields(line);
    std::string key, tenant, extra;
    if (!(fields >> key) || key[0] == '#') continue;
    if (!(fields >> tenant) || (fields >> extra)) {
      return Status::InvalidArgument(path + ":" + std::to_string(lineno) +
                                     ": expected `KEY TENANT`");
    }
    uid_t uid;
    if (std::all_of(tenant.begin(), tenant.end(), ::isdigit)) {
      uid = static_cast<uid_t>(std::stoul(tenant));
    } else if (const passwd* pw = ::getpwnam(tenant.c_str())) {
      uid = pw->pw_uid;
    } else {
      return Status::InvalidArgument(path + ":" + std::to_string(lineno) + ": unknown user '" +
                                     tenant + "'");
    }
    keys[key] = uid;
  }
  if (keys.empty()) return Status::InvalidArgument("api key file " + path + " holds no key");
  return keys;
}

HttpServer::HttpServer(HttpServerOptions options, HttpHandler handler)
    : options_(std::move(options)), handler_(std::move(handler)) {}

HttpServer::~HttpServer() { Stop(); }

Result<MHD_Daemon*> HttpServer::StartDaemon(int listen_fd, bool over_tcp) {
  listeners_.push_back(std::make_unique<Listener>(Listener{this, over_tcp}));
  Listener* listener = listeners_.back().get();
  MHD_Daemon* d = MHD_start_daemon(
      MHD_USE_THREAD_PER_CONNECTION | MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_POLL | MHD_USE_ITC |
          MHD_USE_ERROR_LOG,
      0, nullptr, nullptr, &OnRequest, listener, MHD_OPTION_LISTEN_SOCKET, listen_fd,
      MHD_OPTION_CONNECTION_LIMIT, static_cast<unsigned int>(options_.max_connections),
      MHD_OPTION_CONNECTION_TIMEOUT, static_cast<unsigned int>(options_.idle_timeout_s),
      MHD_OPTION_CONNECTION_MEMORY_LIMIT, static_cast<size_t>(options_.memory_limit_bytes),
      MHD_OPTION_NOTIFY_COMPLETED, &OnCompleted, nullptr, MHD_OPTION_EXTERNAL_LOGGER,
      &LogFromLibrary, nullptr, MHD_OPTION_END);
  if (d == nullptr) return Status::IOError("libmicrohttpd did not start");
  return d;
}

Status HttpServer::Start(int activated_unix_fd) {
  if (activated_unix_fd >= 0) {
    unix_listen_fd_ = activated_unix_fd;
    ASSIGN_OR_RETURN(unix_daemon_, StartDaemon(activated_unix_fd, false));
  } else if (!options_.unix_path.empty()) {
    ASSIGN_OR_RETURN(unix_listen_fd_, BindUnix(options_.unix_path, options_.unix_mode));
    created_unix_path_ = true;
    ASSIGN_OR_RETURN(unix_daemon_, StartDaemon(unix_listen_fd_, false));
  }
  if (!options_.tcp_listen.empty()) {
    if (options_.api_keys.empty()) {
      return Status::InvalidArgument("--http-listen needs --api-key-file");
    }
    ASSIGN_OR_RETURN(tcp_listen_fd_, BindTcp(options_.tcp_listen, &tcp_port_));
    ASSIGN_OR_RETURN(tcp_daemon_, StartDaemon(tcp_listen_fd_, true));
  }
  return Status::OK();
}

void HttpServer::StopAccepting() {
  std::lock_guard<std::mutex> lock(mu_);
  if (stopping_.exchange(true)) return;
  for (MHD_Daemon* d : {unix_daemon_, tcp_daemon_}) {
    if (d != nullptr) MHD_quiesce_daemon(d);  // the listen fds are ours to close
  }
  for (int* fd : {&unix_listen_fd_, &tcp_listen_fd_}) {
    if (*fd >= 0) ::close(*fd);
    *fd = -1;
  }
  if (created_unix_path_) ::unlink(options_.unix_path.c_str());
}

void HttpServer::Stop() {
  StopAccepting();
  for (MHD_Daemon** d : {&unix_daemon_, &tcp_daemon_}) {
    if (*d != nullptr) MHD_stop_daemon(*d);
    *d = nullptr;
  }
}

HttpResponse HttpServer::Dispatch(HttpRequest& request, bool over_tcp) {
  request.over_tcp = over_tcp;
  const auto& pub = options_.public_paths;
  if (over_tcp && std::find(pub.begin(), pub.end(), request.path) == pub.end()) {
    const std::string auth = request.Header("authorization");
    const std::string prefix = "Bearer ";
    auto it = auth.compare(0, prefix.size(), prefix) == 0
                  ? options_.api_keys.find(auth.substr(prefix.size()))
                  : options_.api_keys.end();
    if (it == options_.api_keys.end()) return options_.refusal(401);
    request.tenant_uid = it->second;
  }
  return handler_(request);
}

}  // namespace kvkeep
