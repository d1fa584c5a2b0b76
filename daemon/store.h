// Store: the durable record of sessions in SQLite (WAL mode, synchronous=FULL), in the
// state directory. Every mutating call commits before it returns, so a caller that
// replies after it has made the change durable (an acknowledged append survives kill -9
// and power loss).
//
// Group commit (LevelDB's write path): mutating calls queue; the first in line becomes the
// leader, runs up to max_batch_ops queued writes in one transaction (each in a savepoint,
// so a failing write is rolled back alone) and commits once, with one fsync; then every
// writer of the batch returns with its own Status. No lock that a new writer needs is held
// across the fsync: it queues for the next batch. Durability is unchanged (each call
// returns only after its transaction's COMMIT, synchronous=FULL).
//
// Integrity: Open runs PRAGMA quick_check (a damaged page refuses the start), reports a
// WAL whose frames SQLite would drop (daemon/wal_check.h; the log is copied aside first),
// and warns about a 0-byte database. Each message row carries a checksum (migration 3);
// LoadAll marks a session whose rows fail it as damaged instead of serving them.
//
// Schema (see kMigrations in store.cc; schema_version holds the applied count):
//   sessions(owner_uid, id, created_us, updated_us, model, closed)   key (owner_uid, id)
//   messages(owner_uid, session_id, seq, role, content, name, tool_call_id, num_tokens,
//            tokens BLOB of little-endian int32)                     key (.., seq)
//   tool_events(id, owner_uid, session_id, tool, args, begin_us, end_us, duration_us)
//   tool_latency(tool, duration_us, at_us, key)      per-tool samples; key: the tool key
//                                                     (policy/tool_key.h), NULL: use tool
//   tool_stats(key, num_samples, effective_samples, mean_s, p50_s, p90_s, p99_s, updated_us)
//   episode_blobs(owner_uid, session_id, blob, updated_us)  daemon/episode_state.h's bytes;
//                                                     session_id '': the tenant's IDF
// Session ids are scoped to their owner uid. Timestamps are wall-clock microseconds.
//
// Thread-safety: all methods are thread-safe; one SQLite connection guarded by a mutex.
#pragma once

#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "base/status.h"
#include "base/thread_annotations.h"
#include "policy/tool_stats.h"

struct sqlite3;

namespace kvkeep {

struct StoredMessage {
  int64_t seq = 0;
  std::string role;
  std::string content;
  std::string name;          // empty: none
  std::string tool_call_id;  // empty: none
  std::vector<int32_t> tokens;
};

struct StoredSession {
  uint32_t owner_uid = 0;
  std::string id;
  int64_t created_us = 0;
  int64_t updated_us = 0;
  std::string model;
  bool closed = false;
  std::vector<StoredMessage> messages;  // by seq
  std::string damage;  // empty: intact; else which rows failed their checksum (LoadAll)
};

struct StoreOptions {
  int32_t max_batch_ops = 256;  // writes per group commit; 1: one commit per write
  bool quick_check = true;      // PRAGMA quick_check on open (cost: bench/store_bench.cc)
};

// TESTING ONLY (issue 11, fault injection): writes number first_failing, first_failing+1,
// ... (counted from 1 over every mutating call after TEST_InjectFault) fail with the SQLite
// result code `sqlite_code` (SQLITE_FULL, SQLITE_BUSY, SQLITE_IOERR, ...), `count` of them.
// A failing write runs its statements, then is rolled back as a real failure would be.
// With delay_ms > 0 those writes do not fail: each takes delay_ms longer (inside its
// group commit, as a slow fsync would) and then succeeds.
struct StoreFault {
  int64_t first_failing = 1;
  int64_t count = 1;
  int sqlite_code = 13;  // SQLITE_FULL
  int64_t delay_ms = 0;
};
inline constexpr int64_t kSlowStoreFaultMs = 1000;  // "slow": each write 1 s longer

// TESTING ONLY: parses kvkeepd's --testing-store-fault, "N:CODE[:COUNT]" with CODE one of
// full, busy, ioerr (SQLITE_FULL, SQLITE_BUSY, SQLITE_IOERR) or slow (kSlowStoreFaultMs
// more, then success) and COUNT 1 by default.
// InvalidArgument naming the expected form otherwise.
Result<StoreFault> ParseStoreFault(std::string_view spec);

struct StoreStats {
  int64_t num_writes = 0;   // mutating calls committed or failed
  int64_t num_commits = 0;  // transactions (fsyncs) they took
};

struct ToolEvent {
  int64_t id = 0;
  std::string tool;
  std::string args;
  int64_t begin_us = 0;
  std::optional<int64_t> end_us;
  std::optional<int64_t> duration_us;
};

class Store {
 public:
  // Opens (creating) the database and applies pending migrations.
  static Result<std::unique_ptr<Store>> Open(const std::string& path,
                                             const StoreOptions& options = StoreOptions());
  ~Store();
  Store(const Store&) = delete;
  Store& operator=(const Store&) = delete;

  // Number of migrations the code knows (the schema version it brings databases to).
  static int LatestSchemaVersion();
  Result<int> SchemaVersion();
  // PRAGMA journal_mode as SQLite reports it ("wal").
  Result<std::string> JournalMode();

  // Inserts a new session row with its first messages, in one transaction.
  Status CreateSession(const StoredSession& session);
  // Appends messages (their seq set by the caller) and bumps updated_us, in one transaction.
  Status AppendMessages(uint32_t owner_uid, const std::string& id,
                        const std::vector<StoredMessage>& messages, int64_t updated_us);
  Status SetClosed(uint32_t owner_uid, const std::string& id, bool closed, int64_t updated_us);
  // Deletes the session, its messages and tool events.
  Status DeleteSession(uint32_t owner_uid, const std::string& id);
  // Copies a session's row and messages under a new id (fork).
  Status CopySession(uint32_t owner_uid, const std::string& from, const std::string& to,
                     int64_t now_us);

  // Returns the new event's id.
  Result<int64_t> BeginToolEvent(uint32_t owner_uid, const std::string& session,
                                 const std::string& tool, const std::string& args,
                                 int64_t begin_us);
  // Ends an event, records a latency sample for its tool under `key` (policy/tool_key.h;
  // empty: the tool's name), and appends the tool-result messages, in one transaction.
  Status EndToolEvent(uint32_t owner_uid, const std::string& session, int64_t event_id,
                      const std::string& tool, int64_t end_us, int64_t duration_us,
                      const std::vector<StoredMessage>& messages, const std::string& key = "");
  Result<std::vector<ToolEvent>> ListToolEvents(uint32_t owner_uid, const std::string& session);
  // Latency samples of one tool, oldest first.
  Result<std::vector<int64_t>> ToolLatencySamples(const std::string& tool);

  // The TTL policy's learning (migration 4). A duration sample under its tool key (tool:
  // the tool's name, empty: the key), at wall-clock at_us.
  Status AddToolSample(const ToolSample& sample, const std::string& tool = "");
  // The newest max_per_key samples of every key, oldest first; rows without a key count
  // under their tool name.
  Result<std::vector<ToolSample>> ToolSamples(int64_t max_per_key);
  // The fitted per-key figures, replaced key by key, in one transaction.
  Status SaveToolStats(const std::vector<ToolKeySummary>& stats, int64_t updated_us);
  Result<std::vector<ToolKeySummary>> LoadToolStats();

  // Episode state (migration 5): opaque bytes per (uid, session), session '' for the
  // tenant's own. Deleted with the session. Get returns nullopt when none is stored.
  Status PutEpisodeBlob(uint32_t owner_uid, const std::string& session, const std::string& blob,
                        int64_t updated_us);
  Result<std::optional<std::string>> GetEpisodeBlob(uint32_t owner_uid, const std::string& session);

  // Every session with its messages (daemon start). A session whose message rows fail
  // their checksum comes back with `damage` set (and is logged as an error).
  Result<std::vector<StoredSession>> LoadAll();

  StoreStats stats();
  // TESTING ONLY: see StoreFault. Replaces any fault still pending.
  void TEST_InjectFault(const StoreFault& fault);

 private:
  struct Writer;
  using WriteFn = std::function<Status(sqlite3*)>;
  Store(sqlite3* db, const StoreOptions& options) : options_(options), db_(db) {}
  Status Migrate();
  Status Exec(const char* sql);
  Status QuickCheck();
  // Queues fn for the next group commit and returns its Status once that has committed.
  Status Write(WriteFn fn);
  // Runs the batch in one transaction; sets each writer's status.
  void CommitBatch(const std::vector<Writer*>& batch) REQUIRES(db_mu_);

  const StoreOptions options_;
  Mutex queue_mu_;
  std::deque<Writer*> writers_ GUARDED_BY(queue_mu_);  // the front one leads
  StoreStats stats_ GUARDED_BY(queue_mu_);
  Mutex db_mu_;  // held by the leader of a batch and by readers
  sqlite3* db_ GUARDED_BY(db_mu_);
  // The write's injected failure, if one is due (counts the write). TESTING ONLY.
  Status TakeFaultLocked() REQUIRES(db_mu_);
  std::optional<StoreFault> fault_ GUARDED_BY(db_mu_);
  int64_t writes_since_fault_ GUARDED_BY(db_mu_) = 0;
};

}  // namespace kvkeep
