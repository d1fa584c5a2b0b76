#include "daemon/store.h"

#include <spdlog/spdlog.h>
#include <sqlite3.h>
#include <sys/stat.h>

#include <chrono>
#include <condition_variable>
#include <cstring>
#include <filesystem>
#include <map>
#include <thread>

#include "daemon/wal_check.h"

namespace kvkeep {
namespace {

// Ordered schema migrations; migration i brings the schema from version i to i + 1.
// Never edit a shipped migration: append a new one.
const char* const kMigrations[] = {
    // 1: sessions, messages, tool events.
    R"sql(
    CREATE TABLE sessions (
      owner_uid INTEGER NOT NULL, id TEXT NOT NULL, created_us INTEGER NOT NULL,
      updated_us INTEGER NOT NULL, model TEXT NOT NULL, closed INTEGER NOT NULL DEFAULT 0,
      PRIMARY KEY (owner_uid, id));
    CREATE TABLE messages (
      owner_uid INTEGER NOT NULL, session_id TEXT NOT NULL, seq INTEGER NOT NULL,
      role TEXT NOT NULL, content TEXT NOT NULL, name TEXT, tool_call_id TEXT,
      num_tokens INTEGER NOT NULL, tokens BLOB NOT NULL,
      PRIMARY KEY (owner_uid, session_id, seq));
    CREATE TABLE tool_events (
      id INTEGER PRIMARY KEY AUTOINCREMENT, owner_uid INTEGER NOT NULL,
      session_id TEXT NOT NULL, tool TEXT NOT NULL, args TEXT NOT NULL,
      begin_us INTEGER NOT NULL, end_us INTEGER, duration_us INTEGER);
    CREATE INDEX tool_events_session ON tool_events (owner_uid, session_id);
    )sql",
    // 2: per-tool latency samples (the TTL policy learns from them).
    R"sql(
    CREATE TABLE tool_latency (
      tool TEXT NOT NULL, duration_us INTEGER NOT NULL, at_us INTEGER NOT NULL);
    CREATE INDEX tool_latency_tool ON tool_latency (tool, at_us);
    INSERT INTO tool_latency (tool, duration_us, at_us)
      SELECT tool, duration_us, end_us FROM tool_events WHERE duration_us IS NOT NULL;
    )sql",
    // 3: a checksum per message row (MessageChecksum); NULL in rows written before it.
    R"sql(
    ALTER TABLE messages ADD COLUMN checksum INTEGER;
    )sql",
    // 4: tool keys on latency samples and the TTL policy's fitted per-key statistics.
    R"sql(
    ALTER TABLE tool_latency ADD COLUMN key TEXT;
    CREATE INDEX tool_latency_key ON tool_latency (key, at_us);
    CREATE TABLE tool_stats (
      key TEXT PRIMARY KEY, num_samples INTEGER NOT NULL, effective_samples REAL NOT NULL,
      mean_s REAL NOT NULL, p50_s REAL NOT NULL, p90_s REAL NOT NULL, p99_s REAL NOT NULL,
      updated_us INTEGER NOT NULL);
    )sql",
    // 5: episode state (daemon/episode_state.h): a session's segment index, window vectors
    // and routed turns; session_id '' holds the tenant's hashed IDF.
    R"sql(
    CREATE TABLE episode_blobs (
      owner_uid INTEGER NOT NULL, session_id TEXT NOT NULL, blob BLOB NOT NULL,
      updated_us INTEGER NOT NULL, PRIMARY KEY (owner_uid, session_id));
    )sql",
};
constexpr int kNumMigrations = sizeof(kMigrations) / sizeof(kMigrations[0]);

Status SqlError(sqlite3* db, std::string_view what) {
  return Status::IOError(std::string(what) + ": " + sqlite3_errmsg(db));
}

// A prepared statement; finalized on destruction. Bind indexes are 1-based.
class Stmt {
 public:
  Stmt(sqlite3* db, const char* sql) : db_(db) {
    if (sqlite3_prepare_v2(db, sql, -1, &stmt_, nullptr) != SQLITE_OK) {
      status_ = SqlError(db, "prepare");
    }
  }
  ~Stmt() { sqlite3_finalize(stmt_); }
  Stmt(const Stmt&) = delete;
  Stmt& operator=(const Stmt&) = delete;

  Stmt& Int(int i, int64_t v) {
    Check(sqlite3_bind_int64(stmt_, i, v));
    return *this;
  }
  Stmt& Real(int i, double v) {
    Check(sqlite3_bind_double(stmt_, i, v));
    return *this;
  }
  Stmt& Text(int i, const std::string& v) {
    Check(sqlite3_bind_text(stmt_, i, v.data(), static_cast<int>(v.size()), SQLITE_TRANSIENT));
    return *this;
  }
  Stmt& TextOrNull(int i, const std::string& v) {
    if (v.empty()) {
      Check(sqlite3_bind_null(stmt_, i));
      return *this;
    }
    return Text(i, v);
  }
  Stmt& Blob(int i, const void* data, size_t size) {
    Check(sqlite3_bind_blob(stmt_, i, size ? data : "", static_cast<int>(size), SQLITE_TRANSIENT));
    return *this;
  }
  // Runs to completion (statements without rows).
  Status Run() {
    if (!status_.ok()) return status_;
    int rc = sqlite3_step(stmt_);
    if (rc != SQLITE_DONE && rc != SQLITE_ROW) return SqlError(db_, "step");
    return Status::OK();
  }
  // Advances to the next row; false at the end or on error (then status() says which).
  bool Next() {
    if (!status_.ok()) return false;
    int rc = sqlite3_step(stmt_);
    if (rc == SQLITE_ROW) return true;
    if (rc != SQLITE_DONE) status_ = SqlError(db_, "step");
    return false;
  }
  const Status& status() const { return status_; }
  int64_t ColInt(int c) { return sqlite3_column_int64(stmt_, c); }
  double ColReal(int c) { return sqlite3_column_double(stmt_, c); }
  bool ColIsNull(int c) { return sqlite3_column_type(stmt_, c) == SQLITE_NULL; }
  std::string ColText(int c) {
    const unsigned char* t = sqlite3_column_text(stmt_, c);
    return t ? std::string(reinterpret_cast<const char*>(t), sqlite3_column_bytes(stmt_, c))
             : std::string();
  }
  std::string ColBlob(int c) {
    const void* p = sqlite3_column_blob(stmt_, c);
    int n = sqlite3_column_bytes(stmt_, c);
    return p && n ? std::string(static_cast<const char*>(p), static_cast<size_t>(n))
                  : std::string();
  }
  std::vector<int32_t> ColTokens(int c) {
    const void* p = sqlite3_column_blob(stmt_, c);
    int n = sqlite3_column_bytes(stmt_, c);
    std::vector<int32_t> out(n / 4);
    if (p && !out.empty()) std::memcpy(out.data(), p, out.size() * 4);  // little-endian hosts only
    return out;
  }

 private:
  void Check(int rc) {
    if (rc != SQLITE_OK && status_.ok()) status_ = SqlError(db_, "bind");
  }
  sqlite3* db_;
  sqlite3_stmt* stmt_ = nullptr;
  Status status_;
};

// BEGIN IMMEDIATE ... COMMIT; rolls back unless Commit() succeeded.
class Transaction {
 public:
  explicit Transaction(sqlite3* db) : db_(db) {
    if (sqlite3_exec(db, "BEGIN IMMEDIATE", nullptr, nullptr, nullptr) != SQLITE_OK) {
      status_ = SqlError(db, "begin");
    }
  }
  ~Transaction() {
    if (!committed_ && status_.ok()) sqlite3_exec(db_, "ROLLBACK", nullptr, nullptr, nullptr);
  }
  const Status& status() const { return status_; }
  Status Commit() {
    if (sqlite3_exec(db_, "COMMIT", nullptr, nullptr, nullptr) != SQLITE_OK) {
      return SqlError(db_, "commit");
    }
    committed_ = true;
    return Status::OK();
  }

 private:
  sqlite3* db_;
  bool committed_ = false;
  Status status_;
};

// FNV-1a 64 over a message's fields (seq, role, content, name, tool_call_id, tokens),
// each length-prefixed so field boundaries count. Persisted: never change it.
int64_t MessageChecksum(const StoredMessage& m) {
  uint64_t h = 0xcbf29ce484222325ull;
  auto bytes = [&h](const void* p, size_t n) {
    const auto* c = static_cast<const uint8_t*>(p);
    for (size_t i = 0; i < n; ++i) h = (h ^ c[i]) * 0x100000001b3ull;
  };
  auto field = [&bytes](const void* p, size_t n) {
    const uint64_t len = n;
    bytes(&len, sizeof(len));
    bytes(p, n);
  };
  bytes(&m.seq, sizeof(m.seq));
  for (const std::string* f : {&m.role, &m.content, &m.name, &m.tool_call_id}) {
    field(f->data(), f->size());
  }
  field(m.tokens.data(), m.tokens.size() * sizeof(int32_t));
  return static_cast<int64_t>(h);
}

Status InsertMessages(sqlite3* db, uint32_t uid, const std::string& id,
                      const std::vector<StoredMessage>& messages) {
  for (const StoredMessage& m : messages) {
    Stmt ins(db,
             "INSERT INTO messages (owner_uid, session_id, seq, role, content, name, "
             "tool_call_id, num_tokens, tokens, checksum) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)");
    ins.Int(1, uid).Text(2, id).Int(3, m.seq).Text(4, m.role).Text(5, m.content);
    ins.TextOrNull(6, m.name).TextOrNull(7, m.tool_call_id);
    ins.Int(8, static_cast<int64_t>(m.tokens.size()));
    ins.Blob(9, m.tokens.data(), m.tokens.size() * sizeof(int32_t));
    ins.Int(10, MessageChecksum(m));
    RETURN_IF_ERROR(ins.Run());
  }
  return Status::OK();
}

Status TouchSession(sqlite3* db, uint32_t uid, const std::string& id, int64_t updated_us) {
  return Stmt(db, "UPDATE sessions SET updated_us = ? WHERE owner_uid = ? AND id = ?")
      .Int(1, updated_us)
      .Int(2, uid)
      .Text(3, id)
      .Run();
}

Status ExecSql(sqlite3* db, const char* sql) {
  char* err = nullptr;
  if (sqlite3_exec(db, sql, nullptr, nullptr, &err) != SQLITE_OK) {
    Status st = Status::IOError(std::string("sqlite: ") + (err ? err : "unknown error"));
    sqlite3_free(err);
    return st;
  }
  return Status::OK();
}

// What SQLite would pass over in silence: a database that is missing or empty (sessions
// gone) and a WAL whose damaged frames it would drop (acknowledged commits gone). Loud
// logs; a damaged WAL is copied aside first, since SQLite truncates it after recovery.
Status CheckFilesBeforeOpen(const std::string& path) {
  struct stat st;
  const bool exists = ::stat(path.c_str(), &st) == 0;
  ASSIGN_OR_RETURN(WalScan wal, ScanWal(path + "-wal"));
  if (!exists) {
    if (wal.exists) {
      spdlog::error("store: {} is missing but its WAL is there: starting from the WAL alone", path);
    } else {
      spdlog::info("store: creating a new database {}", path);
    }
  } else if (st.st_size == 0 && !wal.exists) {
    spdlog::warn("store: {} is empty (0 bytes): starting with no sessions", path);
  }
  if (!wal.damaged()) return Status::OK();
  const std::string copy =
      path + "-wal.damaged-" +
      std::to_string(std::chrono::system_clock::now().time_since_epoch() / std::chrono::seconds(1));
  std::error_code ec;
  std::filesystem::copy_file(path + "-wal", copy, ec);
  spdlog::critical(
      "store: the WAL of {} is damaged at frame {} of {}: SQLite keeps {} committed "
      "transactions and drops {} committed after the damage; the WAL was copied to {}{} "
      "(docs/reliability.md)",
      path, wal.first_bad_frame, wal.num_frames, wal.num_commits, wal.num_commits_after_bad, copy,
      ec ? " (copy failed: " + ec.message() + ")" : "");
  return Status::OK();
}

}  // namespace

// One queued write. status and done are written by the leader under queue_mu_.
struct Store::Writer {
  WriteFn fn;
  Status status;
  bool done = false;
  std::condition_variable_any cv;  // waits on queue_mu_
};

Result<std::unique_ptr<Store>> Store::Open(const std::string& path, const StoreOptions& options) {
  RETURN_IF_ERROR(CheckFilesBeforeOpen(path));
  sqlite3* db = nullptr;
  int rc = sqlite3_open_v2(
      path.c_str(), &db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX, nullptr);
  if (rc != SQLITE_OK) {
    Status st = Status::IOError("open " + path + ": " + (db ? sqlite3_errmsg(db) : "no memory"));
    sqlite3_close(db);
    return st;
  }
  std::unique_ptr<Store> store(new Store(db, options));
  sqlite3_busy_timeout(db, 5000);
  // WAL: readers never block the writer; synchronous=FULL fsyncs the WAL on every commit,
  // so a committed transaction survives power loss, not only a process crash.
  RETURN_IF_ERROR(store->Exec("PRAGMA journal_mode=WAL"));
  RETURN_IF_ERROR(store->Exec("PRAGMA synchronous=FULL"));
  RETURN_IF_ERROR(store->Exec("PRAGMA foreign_keys=ON"));
  if (options.quick_check) RETURN_IF_ERROR(store->QuickCheck());
  RETURN_IF_ERROR(store->Migrate());
  return store;
}

Store::~Store() { sqlite3_close(db_); }

int Store::LatestSchemaVersion() { return kNumMigrations; }

Status Store::Exec(const char* sql) {
  MutexLock lock(&db_mu_);
  return ExecSql(db_, sql);
}

Status Store::QuickCheck() {
  MutexLock lock(&db_mu_);
  Stmt q(db_, "PRAGMA quick_check(20)");
  std::string problems;
  while (q.Next()) {
    std::string line = q.ColText(0);
    if (line == "ok") continue;
    problems += (problems.empty() ? "" : "; ") + line;
  }
  if (!q.status().ok()) problems = q.status().ToString();
  if (problems.empty()) return Status::OK();
  spdlog::critical("store: PRAGMA quick_check found damage: {}", problems);
  return Status::Corruption(
      "the database is damaged (PRAGMA quick_check: " + problems +
      "); stop here, keep a copy of the state directory, and recover it with `sqlite3 "
      "kvkeep.db .recover` (docs/reliability.md)");
}

Status Store::Migrate() {
  MutexLock lock(&db_mu_);
  RETURN_IF_ERROR(
      ExecSql(db_, "CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)"));
  int version = 0;
  {
    Stmt q(db_, "SELECT version FROM schema_version");
    if (q.Next()) version = static_cast<int>(q.ColInt(0));
    RETURN_IF_ERROR(q.status());
  }
  if (version > kNumMigrations) {
    return Status::NotSupported("database schema version " + std::to_string(version) +
                                " is newer than this kvkeepd (" + std::to_string(kNumMigrations) +
                                ")");
  }
  for (int v = version; v < kNumMigrations; ++v) {
    Transaction txn(db_);
    RETURN_IF_ERROR(txn.status());
    RETURN_IF_ERROR(ExecSql(db_, kMigrations[v]).WithContext("migration " + std::to_string(v + 1)));
    RETURN_IF_ERROR(ExecSql(db_, "DELETE FROM schema_version"));
    RETURN_IF_ERROR(
        Stmt(db_, "INSERT INTO schema_version (version) VALUES (?)").Int(1, v + 1).Run());
    RETURN_IF_ERROR(txn.Commit());
  }
  return Status::OK();
}

Result<int> Store::SchemaVersion() {
  MutexLock lock(&db_mu_);
  Stmt q(db_, "SELECT version FROM schema_version");
  int version = 0;
  if (q.Next()) version = static_cast<int>(q.ColInt(0));
  RETURN_IF_ERROR(q.status());
  return version;
}

Result<std::string> Store::JournalMode() {
  MutexLock lock(&db_mu_);
  Stmt q(db_, "PRAGMA journal_mode");
  std::string mode;
  if (q.Next()) mode = q.ColText(0);
  RETURN_IF_ERROR(q.status());
  return mode;
}

StoreStats Store::stats() {
  MutexLock lock(&queue_mu_);
  return stats_;
}

Status Store::Write(WriteFn fn) {
  Writer w;
  w.fn = std::move(fn);
  queue_mu_.Lock();
  writers_.push_back(&w);
  while (!w.done && &w != writers_.front()) w.cv.wait(queue_mu_);
  if (w.done) {  // a leader committed it with its batch
    queue_mu_.Unlock();
    return w.status;
  }
  // The leader: take what has queued up behind it, commit without holding queue_mu_.
  const size_t n = std::min(writers_.size(), static_cast<size_t>(options_.max_batch_ops));
  std::vector<Writer*> batch(writers_.begin(), writers_.begin() + static_cast<ptrdiff_t>(n));
  queue_mu_.Unlock();
  {
    MutexLock db_lock(&db_mu_);
    CommitBatch(batch);
  }
  queue_mu_.Lock();
  stats_.num_writes += static_cast<int64_t>(n);
  stats_.num_commits++;
  for (Writer* x : batch) {
    writers_.pop_front();
    x->done = true;
    if (x != &w) x->cv.notify_one();
  }
  if (!writers_.empty()) writers_.front()->cv.notify_one();  // the next leader
  queue_mu_.Unlock();
  return w.status;
}

void Store::TEST_InjectFault(const StoreFault& fault) {
  MutexLock lock(&db_mu_);
  fault_ = fault;
  writes_since_fault_ = 0;
}

Status Store::TakeFaultLocked() {
  if (!fault_) return Status::OK();
  const int64_t n = ++writes_since_fault_;
  if (n < fault_->first_failing) return Status::OK();
  const int code = fault_->sqlite_code;
  const int64_t delay_ms = fault_->delay_ms;
  if (n + 1 >= fault_->first_failing + fault_->count) fault_.reset();  // the last one
  if (delay_ms > 0) {  // a slow write, not a failed one
    std::this_thread::sleep_for(std::chrono::milliseconds(delay_ms));
    return Status::OK();
  }
  return Status::IOError(std::string("write: ") + sqlite3_errstr(code) + " (injected)");
}

void Store::CommitBatch(const std::vector<Writer*>& batch) {
  Transaction txn(db_);
  if (!txn.status().ok()) {
    for (Writer* x : batch) x->status = txn.status();
    return;
  }
  if (batch.size() == 1) {  // alone: the transaction itself is the savepoint
    Writer* x = batch.front();
    x->status = x->fn(db_);
    if (x->status.ok()) x->status = TakeFaultLocked();
    x->status = x->status.ok() ? txn.Commit() : x->status;  // else ~Transaction rolls back
    return;
  }
  bool any_ok = false;
  for (Writer* x : batch) {
    // A savepoint per write: a failed write rolls back alone, the batch goes on.
    x->status = ExecSql(db_, "SAVEPOINT w");
    if (!x->status.ok()) continue;
    x->status = x->fn(db_);
    if (x->status.ok()) x->status = TakeFaultLocked();
    if (!x->status.ok()) (void)ExecSql(db_, "ROLLBACK TO w");
    (void)ExecSql(db_, "RELEASE w");
    any_ok = any_ok || x->status.ok();
  }
  if (!any_ok) return;  // ~Transaction rolls back; nothing to make durable
  Status commit = txn.Commit();
  if (!commit.ok()) {
    for (Writer* x : batch) {
      if (x->status.ok()) x->status = commit;
    }
  }
}

Status Store::CreateSession(const StoredSession& s) {
  return Write([&s](sqlite3* db) {
    Stmt ins(db,
             "INSERT INTO sessions (owner_uid, id, created_us, updated_us, model, closed) "
             "VALUES (?, ?, ?, ?, ?, ?)");
    ins.Int(1, s.owner_uid).Text(2, s.id).Int(3, s.created_us).Int(4, s.updated_us);
    ins.Text(5, s.model).Int(6, s.closed ? 1 : 0);
    RETURN_IF_ERROR(ins.Run());
    return InsertMessages(db, s.owner_uid, s.id, s.messages);
  });
}

Status Store::AppendMessages(uint32_t uid, const std::string& id,
                             const std::vector<StoredMessage>& messages, int64_t updated_us) {
  return Write([&](sqlite3* db) {
    RETURN_IF_ERROR(InsertMessages(db, uid, id, messages));
    return TouchSession(db, uid, id, updated_us);
  });
}

Status Store::SetClosed(uint32_t uid, const std::string& id, bool closed, int64_t updated_us) {
  return Write([&](sqlite3* db) {
    return Stmt(db, "UPDATE sessions SET closed = ?, updated_us = ? WHERE owner_uid = ? AND id = ?")
        .Int(1, closed ? 1 : 0)
        .Int(2, updated_us)
        .Int(3, uid)
        .Text(4, id)
        .Run();
  });
}

Status Store::DeleteSession(uint32_t uid, const std::string& id) {
  return Write([&](sqlite3* db) {
    for (const char* sql : {"DELETE FROM messages WHERE owner_uid = ? AND session_id = ?",
                            "DELETE FROM tool_events WHERE owner_uid = ? AND session_id = ?",
                            "DELETE FROM episode_blobs WHERE owner_uid = ? AND session_id = ?",
                            "DELETE FROM sessions WHERE owner_uid = ? AND id = ?"}) {
      RETURN_IF_ERROR(Stmt(db, sql).Int(1, uid).Text(2, id).Run());
    }
    return Status::OK();
  });
}

Status Store::CopySession(uint32_t uid, const std::string& from, const std::string& to,
                          int64_t now_us) {
  return Write([&](sqlite3* db) {
    RETURN_IF_ERROR(Stmt(db,
                         "INSERT INTO sessions (owner_uid, id, created_us, updated_us, model, "
                         "closed) SELECT owner_uid, ?, ?, ?, model, 0 FROM sessions "
                         "WHERE owner_uid = ? AND id = ?")
                        .Text(1, to)
                        .Int(2, now_us)
                        .Int(3, now_us)
                        .Int(4, uid)
                        .Text(5, from)
                        .Run());
    // The checksum covers no session id, so a copied row keeps its own.
    return Stmt(db,
                "INSERT INTO messages (owner_uid, session_id, seq, role, content, name, "
                "tool_call_id, num_tokens, tokens, checksum) SELECT owner_uid, ?, seq, role, "
                "content, name, tool_call_id, num_tokens, tokens, checksum FROM messages "
                "WHERE owner_uid = ? AND session_id = ?")
        .Text(1, to)
        .Int(2, uid)
        .Text(3, from)
        .Run();
  });
}

Result<int64_t> Store::BeginToolEvent(uint32_t uid, const std::string& session,
                                      const std::string& tool, const std::string& args,
                                      int64_t begin_us) {
  int64_t event_id = 0;
  RETURN_IF_ERROR(Write([&](sqlite3* db) {
    RETURN_IF_ERROR(Stmt(db,
                         "INSERT INTO tool_events (owner_uid, session_id, tool, args, begin_us) "
                         "VALUES (?, ?, ?, ?, ?)")
                        .Int(1, uid)
                        .Text(2, session)
                        .Text(3, tool)
                        .Text(4, args)
                        .Int(5, begin_us)
                        .Run());
    event_id = static_cast<int64_t>(sqlite3_last_insert_rowid(db));
    return Status::OK();
  }));
  return event_id;
}

Status Store::EndToolEvent(uint32_t uid, const std::string& session, int64_t event_id,
                           const std::string& tool, int64_t end_us, int64_t duration_us,
                           const std::vector<StoredMessage>& messages, const std::string& key) {
  return Write([&](sqlite3* db) {
    if (event_id > 0) {
      RETURN_IF_ERROR(Stmt(db, "UPDATE tool_events SET end_us = ?, duration_us = ? WHERE id = ?")
                          .Int(1, end_us)
                          .Int(2, duration_us)
                          .Int(3, event_id)
                          .Run());
      RETURN_IF_ERROR(
          Stmt(db, "INSERT INTO tool_latency (tool, key, duration_us, at_us) VALUES (?, ?, ?, ?)")
              .Text(1, tool)
              .Text(2, key.empty() ? tool : key)
              .Int(3, duration_us)
              .Int(4, end_us)
              .Run());
    }
    RETURN_IF_ERROR(InsertMessages(db, uid, session, messages));
    return TouchSession(db, uid, session, end_us);
  });
}

Result<std::vector<ToolEvent>> Store::ListToolEvents(uint32_t uid, const std::string& session) {
  MutexLock lock(&db_mu_);
  Stmt q(db_,
         "SELECT id, tool, args, begin_us, end_us, duration_us FROM tool_events "
         "WHERE owner_uid = ? AND session_id = ? ORDER BY id");
  q.Int(1, uid).Text(2, session);
  std::vector<ToolEvent> out;
  while (q.Next()) {
    ToolEvent e;
    e.id = q.ColInt(0);
    e.tool = q.ColText(1);
    e.args = q.ColText(2);
    e.begin_us = q.ColInt(3);
    if (!q.ColIsNull(4)) e.end_us = q.ColInt(4);
    if (!q.ColIsNull(5)) e.duration_us = q.ColInt(5);
    out.push_back(std::move(e));
  }
  RETURN_IF_ERROR(q.status());
  return out;
}

Status Store::PutEpisodeBlob(uint32_t uid, const std::string& session, const std::string& blob,
                             int64_t updated_us) {
  return Write([&](sqlite3* db) {
    return Stmt(db,
                "INSERT OR REPLACE INTO episode_blobs (owner_uid, session_id, blob, updated_us) "
                "VALUES (?, ?, ?, ?)")
        .Int(1, uid)
        .Text(2, session)
        .Blob(3, blob.data(), blob.size())
        .Int(4, updated_us)
        .Run();
  });
}

Result<std::optional<std::string>> Store::GetEpisodeBlob(uint32_t uid, const std::string& session) {
  MutexLock lock(&db_mu_);
  Stmt q(db_, "SELECT blob FROM episode_blobs WHERE owner_uid = ? AND session_id = ?");
  q.Int(1, uid).Text(2, session);
  std::optional<std::string> out;
  if (q.Next()) out = q.ColBlob(0);
  RETURN_IF_ERROR(q.status());
  return out;
}

Result<std::vector<int64_t>> Store::ToolLatencySamples(const std::string& tool) {
  MutexLock lock(&db_mu_);
  Stmt q(db_, "SELECT duration_us FROM tool_latency WHERE tool = ? ORDER BY at_us, rowid");
  q.Text(1, tool);
  std::vector<int64_t> out;
  while (q.Next()) out.push_back(q.ColInt(0));
  RETURN_IF_ERROR(q.status());
  return out;
}

Status Store::AddToolSample(const ToolSample& sample, const std::string& tool) {
  return Write([&](sqlite3* db) {
    return Stmt(db, "INSERT INTO tool_latency (tool, key, duration_us, at_us) VALUES (?, ?, ?, ?)")
        .Text(1, tool.empty() ? sample.key : tool)
        .Text(2, sample.key)
        .Int(3, sample.duration_us)
        .Int(4, sample.at_us)
        .Run();
  });
}

Result<std::vector<ToolSample>> Store::ToolSamples(int64_t max_per_key) {
  MutexLock lock(&db_mu_);
  // Rows written before keys existed (or without one) count under their tool name.
  Stmt q(db_,
         "SELECT k, duration_us, at_us FROM ("
         "  SELECT COALESCE(key, tool) AS k, duration_us, at_us, rowid AS r, ROW_NUMBER() OVER ("
         "    PARTITION BY COALESCE(key, tool) ORDER BY at_us DESC, rowid DESC) AS n"
         "  FROM tool_latency) WHERE n <= ? ORDER BY at_us, r");
  q.Int(1, max_per_key);
  std::vector<ToolSample> out;
  while (q.Next()) out.push_back({q.ColText(0), q.ColInt(1), q.ColInt(2)});
  RETURN_IF_ERROR(q.status());
  return out;
}

Status Store::SaveToolStats(const std::vector<ToolKeySummary>& stats, int64_t updated_us) {
  // One write in the group commit: its savepoint makes the key-by-key replace atomic.
  return Write([&](sqlite3* db) {
    for (const ToolKeySummary& s : stats) {
      RETURN_IF_ERROR(
          Stmt(db,
               "INSERT OR REPLACE INTO tool_stats (key, num_samples, effective_samples, "
               "mean_s, p50_s, p90_s, p99_s, updated_us) VALUES (?, ?, ?, ?, ?, ?, ?, ?)")
              .Text(1, s.key)
              .Int(2, s.num_samples)
              .Real(3, s.effective_samples)
              .Real(4, s.mean_s)
              .Real(5, s.p50_s)
              .Real(6, s.p90_s)
              .Real(7, s.p99_s)
              .Int(8, updated_us)
              .Run());
    }
    return Status::OK();
  });
}

Result<std::vector<ToolKeySummary>> Store::LoadToolStats() {
  MutexLock lock(&db_mu_);
  Stmt q(db_,
         "SELECT key, num_samples, effective_samples, mean_s, p50_s, p90_s, p99_s FROM tool_stats "
         "ORDER BY key");
  std::vector<ToolKeySummary> out;
  while (q.Next()) {
    out.push_back({q.ColText(0), q.ColInt(1), q.ColReal(2), q.ColReal(3), q.ColReal(4),
                   q.ColReal(5), q.ColReal(6)});
  }
  RETURN_IF_ERROR(q.status());
  return out;
}

Result<std::vector<StoredSession>> Store::LoadAll() {
  MutexLock lock(&db_mu_);
  std::vector<StoredSession> out;
  std::map<std::pair<int64_t, std::string>, size_t> index;
  Stmt s(db_,
         "SELECT owner_uid, id, created_us, updated_us, model, closed FROM sessions "
         "ORDER BY owner_uid, id");
  while (s.Next()) {
    StoredSession ss;
    ss.owner_uid = static_cast<uint32_t>(s.ColInt(0));
    ss.id = s.ColText(1);
    ss.created_us = s.ColInt(2);
    ss.updated_us = s.ColInt(3);
    ss.model = s.ColText(4);
    ss.closed = s.ColInt(5) != 0;
    index[{ss.owner_uid, ss.id}] = out.size();
    out.push_back(std::move(ss));
  }
  RETURN_IF_ERROR(s.status());
  Stmt m(db_,
         "SELECT owner_uid, session_id, seq, role, content, name, tool_call_id, tokens, "
         "num_tokens, checksum FROM messages ORDER BY owner_uid, session_id, seq");
  int64_t num_damaged_rows = 0;
  while (m.Next()) {
    auto it = index.find({m.ColInt(0), m.ColText(1)});
    if (it == index.end()) continue;  // orphan rows are ignored
    StoredSession& ss = out[it->second];
    StoredMessage msg;
    msg.seq = m.ColInt(2);
    msg.role = m.ColText(3);
    msg.content = m.ColText(4);
    msg.name = m.ColText(5);
    msg.tool_call_id = m.ColText(6);
    msg.tokens = m.ColTokens(7);
    std::string why;
    if (msg.seq != static_cast<int64_t>(ss.messages.size())) {
      why = "seq " + std::to_string(msg.seq) + " where " + std::to_string(ss.messages.size()) +
            " was expected";
    } else if (m.ColInt(8) != static_cast<int64_t>(msg.tokens.size())) {
      why = "message " + std::to_string(msg.seq) + ": num_tokens does not match its tokens";
    } else if (!m.ColIsNull(9) && m.ColInt(9) != MessageChecksum(msg)) {
      why = "message " + std::to_string(msg.seq) + " failed its checksum";
    }
    if (!why.empty()) {
      num_damaged_rows++;
      spdlog::error("store: session '{}' of uid {} is damaged: {}", ss.id, ss.owner_uid, why);
      if (ss.damage.empty()) ss.damage = why;
    }
    ss.messages.push_back(std::move(msg));
  }
  RETURN_IF_ERROR(m.status());
  if (num_damaged_rows > 0) {
    spdlog::critical(
        "store: {} damaged message rows; their sessions are marked damaged and refuse "
        "every verb but session.info and session.close (docs/reliability.md)",
        num_damaged_rows);
  }
  return out;
}

}  // namespace kvkeep
