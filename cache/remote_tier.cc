#include "cache/remote_tier.h"

#include <fmt/format.h>
#include <hiredis/hiredis.h>
#include <spdlog/spdlog.h>
#include <sys/time.h>

#include <csignal>

#include <algorithm>
#include <charconv>

namespace kvkeep {
namespace {

constexpr size_t kLatencyWindow = 1024;
constexpr int64_t kErrorLogIntervalUs = 30'000'000;

struct ReplyDeleter {
  void operator()(redisReply* r) const { freeReplyObject(r); }
};
using ReplyPtr = std::unique_ptr<redisReply, ReplyDeleter>;

timeval ToTimeval(int64_t us) {
  us = std::max<int64_t>(us, 1000);
  return timeval{static_cast<time_t>(us / 1'000'000), static_cast<suseconds_t>(us % 1'000'000)};
}

bool ParseInt(std::string_view s, int* out) {
  auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), *out);
  return ec == std::errc() && p == s.data() + s.size() && *out >= 0;
}

}  // namespace

Result<RemoteAddress> ParseRemoteAddress(std::string_view spec) {
  RemoteAddress a;
  const auto bad = [&](std::string_view why) {
    return Status::InvalidArgument(
        fmt::format("remote tier '{}': {} (want redis://HOST:PORT/DB or unix:PATH)", spec, why));
  };
  if (spec.starts_with("unix:")) {
    std::string_view rest = spec.substr(5);
    if (size_t q = rest.find("?db="); q != std::string_view::npos) {
      if (!ParseInt(rest.substr(q + 4), &a.db)) return bad("bad db");
      rest = rest.substr(0, q);
    }
    if (rest.empty()) return bad("empty socket path");
    a.unix_path = std::string(rest);
    return a;
  }
  if (!spec.starts_with("redis://")) return bad("unknown scheme");
  std::string_view rest = spec.substr(8);
  if (size_t slash = rest.find('/'); slash != std::string_view::npos) {
    std::string_view db = rest.substr(slash + 1);
    if (!db.empty() && !ParseInt(db, &a.db)) return bad("bad db");
    rest = rest.substr(0, slash);
  }
  if (size_t colon = rest.rfind(':'); colon != std::string_view::npos) {
    if (!ParseInt(rest.substr(colon + 1), &a.port) || a.port == 0 || a.port > 65535) {
      return bad("bad port");
    }
    rest = rest.substr(0, colon);
  }
  if (rest.empty()) return bad("empty host");
  a.host = std::string(rest);
  return a;
}

struct RemoteBlockStore::Conn {
  redisContext* ctx = nullptr;
  int64_t retry_after_us = 0;  // no connect attempt before this (after a failure)
  const char* role = "";
  ~Conn() { Close(); }
  void Close() {
    if (ctx != nullptr) redisFree(ctx);
    ctx = nullptr;
  }
};

RemoteBlockStore::RemoteBlockStore(RemoteTierOptions options, const DiskBlockStore* codec)
    : options_(std::move(options)),
      codec_(codec),
      clock_(options_.clock ? options_.clock : SystemClock()),
      reader_(std::make_unique<Conn>()),
      writer_(std::make_unique<Conn>()) {
  // hiredis writes with write(2): a server that closes the socket would raise SIGPIPE and
  // kill the process. kvkeepd ignores it already; a library user (tests, tools) must too.
  struct sigaction old {};
  if (sigaction(SIGPIPE, nullptr, &old) == 0 && old.sa_handler == SIG_DFL) {
    std::signal(SIGPIPE, SIG_IGN);
  }
  reader_->role = "read";
  writer_->role = "write";
  options_.max_batch_blocks = std::max(options_.max_batch_blocks, 1);
  thread_ = std::thread([this] { WriterMain(); });
}

RemoteBlockStore::~RemoteBlockStore() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_ = true;
  }
  cv_.notify_all();
  thread_.join();
}

std::string RemoteBlockStore::KeyOf(BlockHash hash, HashScope scope) {
  return fmt::format("kvkeep:b:{:016x}:{:016x}:{:016x}", scope.model_id_hash, scope.tenant_salt,
                     hash.value);
}

void RemoteBlockStore::Fail(Conn* conn, std::string_view what) {
  const std::string detail = conn->ctx != nullptr && conn->ctx->err != 0
                                 ? std::string(conn->ctx->errstr)
                                 : std::string("no connection");
  conn->Close();
  const int64_t now = clock_->NowMicros();
  conn->retry_after_us = now + options_.reconnect_interval_us;
  std::lock_guard<std::mutex> lock(mu_);
  ++stats_.errors;
  if (conn == reader_.get()) stats_.connected = false;
  if (!in_outage_ || now - last_error_log_us_ >= kErrorLogIntervalUs) {
    spdlog::warn("remote tier: {} {} failed ({}); serving from local tiers, retrying every {} ms",
                 conn->role, what, detail, options_.reconnect_interval_us / 1000);
    last_error_log_us_ = now;
  }
  in_outage_ = true;
}

Status RemoteBlockStore::EnsureConnected(Conn* conn) {
  if (conn->ctx != nullptr) return Status::OK();
  if (clock_->NowMicros() < conn->retry_after_us) return Status::Unavailable("remote tier down");
  const timeval tv = ToTimeval(options_.timeout_us);
  const RemoteAddress& a = options_.address;
  conn->ctx = a.unix_path.empty() ? redisConnectWithTimeout(a.host.c_str(), a.port, tv)
                                  : redisConnectUnixWithTimeout(a.unix_path.c_str(), tv);
  if (conn->ctx == nullptr || conn->ctx->err != 0 || redisSetTimeout(conn->ctx, tv) != REDIS_OK) {
    Fail(conn, "connect");
    return Status::Unavailable("remote tier: cannot connect");
  }
  const auto command = [&](std::vector<std::string> args) -> bool {
    std::vector<const char*> argv;
    std::vector<size_t> lens;
    for (const std::string& s : args) {
      argv.push_back(s.data());
      lens.push_back(s.size());
    }
    ReplyPtr r(static_cast<redisReply*>(
        redisCommandArgv(conn->ctx, static_cast<int>(argv.size()), argv.data(), lens.data())));
    return r != nullptr && r->type != REDIS_REPLY_ERROR;
  };
  if (!options_.password.empty() && !command({"AUTH", options_.password})) {
    Fail(conn, "AUTH");
    return Status::Unavailable("remote tier: AUTH refused");
  }
  if (a.db != 0 && !command({"SELECT", std::to_string(a.db)})) {
    Fail(conn, "SELECT");
    return Status::Unavailable("remote tier: SELECT refused");
  }
  std::lock_guard<std::mutex> lock(mu_);
  if (conn == reader_.get()) stats_.connected = true;
  if (in_outage_) spdlog::info("remote tier: {} connection restored", conn->role);
  in_outage_ = false;
  return Status::OK();
}

Status RemoteBlockStore::Ping() {
  std::lock_guard<std::mutex> lock(read_mu_);
  return EnsureConnected(reader_.get());
}

void RemoteBlockStore::Put(const DiskBlockHeader& header, const void* bytes) {
  PendingWrite w{KeyOf(header.hash, header.scope), codec_->EncodeBlock(header, bytes)};
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (static_cast<int64_t>(queue_.size()) >= options_.max_queued_blocks) {
      ++stats_.writes_dropped;
      return;
    }
    queue_.push_back(std::move(w));
  }
  cv_.notify_one();
}

void RemoteBlockStore::WriterMain() {
  std::vector<PendingWrite> batch;
  for (;;) {
    {
      std::unique_lock<std::mutex> lock(mu_);
      busy_ = false;
      if (queue_.empty()) idle_cv_.notify_all();
      cv_.wait(lock, [&] { return stop_ || !queue_.empty(); });
      if (queue_.empty()) return;  // stopped and drained
      batch.clear();
      while (!queue_.empty() && static_cast<int32_t>(batch.size()) < options_.max_batch_blocks) {
        batch.push_back(std::move(queue_.front()));
        queue_.pop_front();
      }
      busy_ = true;
    }
    SendBatch(&batch);
  }
}

void RemoteBlockStore::SendBatch(std::vector<PendingWrite>* batch) {
  Conn* conn = writer_.get();
  const auto drop = [&](size_t n) {
    std::lock_guard<std::mutex> lock(mu_);
    stats_.writes_dropped += static_cast<int64_t>(n);
  };
  if (!EnsureConnected(conn).ok()) return drop(batch->size());
  for (const PendingWrite& w : *batch) {  // pipelined: every SET first, then every reply
    const char* argv[3] = {"SET", w.key.data(), w.value.data()};
    const size_t lens[3] = {3, w.key.size(), w.value.size()};
    if (redisAppendCommandArgv(conn->ctx, 3, argv, lens) != REDIS_OK) {
      Fail(conn, "send");
      return drop(batch->size());
    }
  }
  int64_t acked = 0, acked_bytes = 0;
  for (const PendingWrite& w : *batch) {
    void* raw = nullptr;
    if (redisGetReply(conn->ctx, &raw) != REDIS_OK) {
      Fail(conn, "write reply");
      return drop(batch->size() - static_cast<size_t>(acked));
    }
    ReplyPtr r(static_cast<redisReply*>(raw));
    if (r->type == REDIS_REPLY_ERROR) {  // e.g. OOM with a noeviction policy
      std::lock_guard<std::mutex> lock(mu_);
      ++stats_.errors;
      ++stats_.writes_dropped;
      continue;
    }
    ++acked;
    acked_bytes += static_cast<int64_t>(w.value.size());
  }
  std::lock_guard<std::mutex> lock(mu_);
  stats_.blocks_written += acked;
  stats_.bytes_written += acked_bytes;
}

std::vector<RemoteBlock> RemoteBlockStore::GetPrefix(const std::vector<BlockHash>& hashes,
                                                     HashScope scope, BlockHash first_parent) {
  std::vector<RemoteBlock> found;
  if (hashes.empty()) return found;
  const int64_t start_us = clock_->NowMicros();
  int64_t bytes = 0, corrupt = 0;
  {
    std::lock_guard<std::mutex> lock(read_mu_);
    Conn* conn = reader_.get();
    BlockHash parent = first_parent;
    bool stopped = false;
    for (size_t at = 0; at < hashes.size() && !stopped; at += options_.max_batch_blocks) {
      if (!EnsureConnected(conn).ok()) break;
      const size_t n = std::min<size_t>(options_.max_batch_blocks, hashes.size() - at);
      std::vector<std::string> keys;
      std::vector<const char*> argv{"MGET"};
      std::vector<size_t> lens{4};
      keys.reserve(n);
      for (size_t i = 0; i < n; ++i) {
        keys.push_back(KeyOf(hashes[at + i], scope));
        argv.push_back(keys.back().data());
        lens.push_back(keys.back().size());
      }
      ReplyPtr r(static_cast<redisReply*>(
          redisCommandArgv(conn->ctx, static_cast<int>(argv.size()), argv.data(), lens.data())));
      if (r == nullptr || r->type != REDIS_REPLY_ARRAY || r->elements != n) {
        Fail(conn, "MGET");
        break;
      }
      for (size_t i = 0; i < n && !stopped; ++i) {
        const redisReply* v = r->element[i];
        if (v->type != REDIS_REPLY_STRING) {
          stopped = true;  // absent: the run ends here
          break;
        }
        bytes += static_cast<int64_t>(v->len);
        RemoteBlock block;
        block.bytes.resize(codec_->block_bytes());
        Status st = codec_->DecodeBlock(std::string_view(v->str, v->len), hashes[at + i],
                                        &block.header, block.bytes.data());
        if (st.ok() && (!(block.header.scope == scope) || block.header.parent_hash != parent)) {
          st = Status::Corruption("block: another scope or parent");
        }
        if (!st.ok()) {
          ++corrupt;
          spdlog::warn("remote tier: {} dropped: {}", keys[i], st.ToString());
          stopped = true;
          break;
        }
        parent = hashes[at + i];
        found.push_back(std::move(block));
      }
    }
  }
  const int64_t latency_us = clock_->NowMicros() - start_us;
  std::lock_guard<std::mutex> lock(mu_);
  stats_.hits += static_cast<int64_t>(found.size());
  stats_.misses += static_cast<int64_t>(hashes.size() - found.size());
  stats_.corrupt += corrupt;
  stats_.bytes_read += bytes;
  if (latencies_us_.size() < kLatencyWindow) {
    latencies_us_.push_back(latency_us);
  } else {
    latencies_us_[next_latency_] = latency_us;
  }
  next_latency_ = (next_latency_ + 1) % kLatencyWindow;
  return found;
}

void RemoteBlockStore::Flush() {
  std::unique_lock<std::mutex> lock(mu_);
  idle_cv_.wait(lock, [&] { return queue_.empty() && !busy_; });
}

RemoteTierStats RemoteBlockStore::stats() const {
  std::lock_guard<std::mutex> lock(mu_);
  RemoteTierStats s = stats_;
  if (!latencies_us_.empty()) {
    std::vector<int64_t> sorted = latencies_us_;
    std::sort(sorted.begin(), sorted.end());
    s.get_p50_us = sorted[sorted.size() / 2];
    s.get_p99_us = sorted[std::min(sorted.size() - 1, sorted.size() * 99 / 100)];
  }
  return s;
}

}  // namespace kvkeep
