// RemoteBlockStore: the remote KV tier, blocks kept in a Redis or Valkey server shared by
// several kvkeepd instances (docs/scale-out.md). A block is stored under
//   "kvkeep:b:<model_id_hash>:<tenant_salt>:<block hash>"   (each 16 hex digits)
// and its value is the disk tier's block file (cache/disk_tier.h EncodeBlock: a header with
// the block's hash, parent hash, scope and tokens, and the payload, each with an XXH64), so
// a reader checks what it gets exactly as a disk read does. Redis bounds the memory
// (`maxmemory` and its eviction policy); kvkeep never assumes a block is still there.
//
// Writes are asynchronous: Put queues the block and returns; a worker thread sends queued
// blocks pipelined (SET after SET, then the replies) in batches of up to max_batch_blocks.
// Reads are synchronous and batched: GetPrefix asks for a whole chain of hashes with MGETs
// and returns the leading run that is present and passes its checks.
//
// Failure: every connect, send and receive is bounded by timeout_us. A server that is down,
// slow or refuses a command turns the call into misses (reads) or dropped blocks (writes),
// counted in stats().errors and logged once per outage (then at most every 30 s); the
// connection is retried at most every reconnect_interval_us, so a dead server costs a turn
// nothing after the first timeout.
//
// SIGPIPE: constructing a store sets SIGPIPE to ignored if it has its default action (a
// closed socket must be an error, not the end of the process).
//
// Thread-safety: every public method is thread-safe. GetPrefix calls are serialised on one
// connection and writes use the worker's own. The destructor sends what is queued (with a
// server that is down, that drops it at once).
#pragma once

#include <condition_variable>
#include <cstdint>
#include <deque>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "base/clock.h"
#include "base/status.h"
#include "cache/disk_tier.h"

struct redisContext;

namespace kvkeep {

// Where the server is: "redis://HOST:PORT/DB" (PORT defaults to 6379, DB to 0) or
// "unix:PATH" (optionally "unix:PATH?db=N").
struct RemoteAddress {
  std::string host;  // empty for a unix socket
  int port = 6379;
  std::string unix_path;  // empty for TCP
  int db = 0;
};
Result<RemoteAddress> ParseRemoteAddress(std::string_view spec);

struct RemoteTierOptions {
  RemoteAddress address;
  std::string password;          // AUTH when non-empty (read from a file by the daemon)
  int64_t timeout_us = 100'000;  // bound on each connect, send and receive
  int64_t reconnect_interval_us = 1'000'000;  // after a failure, no retry before this
  int32_t max_batch_blocks = 32;              // writes per pipeline, keys per MGET
  int32_t max_queued_blocks = 4096;           // queued writes beyond this are dropped (counted)
  Clock* clock = nullptr;                     // nullptr: SystemClock()
};

struct RemoteTierStats {
  int64_t hits = 0;            // blocks returned by GetPrefix
  int64_t misses = 0;          // blocks asked for and not returned (absent, bad or error)
  int64_t corrupt = 0;         // values that failed their checks
  int64_t errors = 0;          // failed connects, sends, receives and error replies
  int64_t bytes_read = 0;      // value bytes received
  int64_t bytes_written = 0;   // value bytes sent
  int64_t blocks_written = 0;  // acknowledged SETs
  int64_t writes_dropped = 0;  // queue full, or the server failed
  int64_t get_p50_us = 0;      // GetPrefix latency quantiles over the last 1024 calls
  int64_t get_p99_us = 0;
  bool connected = false;  // the reader's connection is up
};

// One block fetched by GetPrefix.
struct RemoteBlock {
  DiskBlockHeader header;
  std::vector<uint8_t> bytes;  // block_bytes
};

class RemoteBlockStore {
 public:
  // REQUIRES: codec outlives the store (only its Encode/DecodeBlock are used).
  RemoteBlockStore(RemoteTierOptions options, const DiskBlockStore* codec);
  ~RemoteBlockStore();
  RemoteBlockStore(const RemoteBlockStore&) = delete;
  RemoteBlockStore& operator=(const RemoteBlockStore&) = delete;

  // The Redis key of a block.
  static std::string KeyOf(BlockHash hash, HashScope scope);

  // Connects the reader (and so checks the address and AUTH) once; Unavailable when it
  // cannot. The store works without this: it connects lazily.
  Status Ping();
  // Queues one block for writing. REQUIRES: bytes holds the codec's block_bytes.
  void Put(const DiskBlockHeader& header, const void* bytes);
  // Fetches hashes (a prefix chain, in order, all of `scope`) and returns the leading run
  // that is present and passes its checks: checksums, the hash it is stored under, the
  // scope, and parent links (each block's parent hash is the one before it; the first's
  // is first_parent). Never waits much longer than timeout_us per MGET.
  std::vector<RemoteBlock> GetPrefix(const std::vector<BlockHash>& hashes, HashScope scope,
                                     BlockHash first_parent);
  // Waits until every queued write has been sent or dropped (tests, shutdown).
  void Flush();
  RemoteTierStats stats() const;

 private:
  struct Conn;  // one hiredis connection with its reconnect bookkeeping
  struct PendingWrite {
    std::string key;
    std::string value;
  };
  Status EnsureConnected(Conn* conn);
  void Fail(Conn* conn, std::string_view what);
  void WriterMain();
  void SendBatch(std::vector<PendingWrite>* batch);

  RemoteTierOptions options_;
  const DiskBlockStore* codec_;
  Clock* clock_;

  std::mutex read_mu_;            // serialises GetPrefix on reader_
  std::unique_ptr<Conn> reader_;  // guarded by read_mu_
  std::unique_ptr<Conn> writer_;  // the worker thread's only

  mutable std::mutex mu_;
  std::condition_variable cv_;         // work queued, or stop
  std::condition_variable idle_cv_;    // queue drained
  std::deque<PendingWrite> queue_;     // guarded by mu_
  bool busy_ = false;                  // guarded by mu_
  bool stop_ = false;                  // guarded by mu_
  RemoteTierStats stats_;              // guarded by mu_
  std::vector<int64_t> latencies_us_;  // guarded by mu_: the last 1024 GetPrefix
  size_t next_latency_ = 0;            // guarded by mu_
  int64_t last_error_log_us_ = 0;      // guarded by mu_
  bool in_outage_ = false;             // guarded by mu_
  std::thread thread_;
};

}  // namespace kvkeep
