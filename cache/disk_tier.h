// DiskBlockStore: the disk tier's files. One file per block under the tier's directory,
// named by the block's content hash ("<16 hex digits>.kvb"), holding a fixed header (the
// fields a restart needs to rebuild the block's record, cache/block_pool.h AdoptDiskBlock)
// and the block's KV bytes, each with its own XXH64 checksum. Files are written to
// "<name>.tmp" with positioned writes and renamed into place, without fsync: write-back
// on demotion survives kill -9 (the page cache keeps it); after a power cut a torn file
// fails its checksum and the block is recomputed.
//
// File layout, little-endian:
//   "KVKB" u32 version (1) | u32 block_size | u64 block_bytes | u64 hash | u64 parent_hash |
//   u64 model_id_hash | u64 tenant_salt | i32 tokens[block_size] | u64 payload_xxh64 |
//   u64 header_xxh64 (of every header byte before it) | payload (block_bytes)
//
// Thread-safety: Write, Read and Remove of distinct hashes may run concurrently; the disk
// worker (cache/disk_worker.h) is the only caller in the engine.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "base/file.h"
#include "cache/block_pool.h"
#include "cache/prefix_hash.h"

namespace kvkeep {

// What a block file says about its block.
struct DiskBlockHeader {
  BlockHash hash;
  BlockHash parent_hash;
  HashScope scope;
  std::vector<int32_t> tokens;
};

class DiskBlockStore {
 public:
  // REQUIRES: env outlives the store; block_size > 0; block_bytes > 0.
  DiskBlockStore(Env* env, std::string dir, int32_t block_size, size_t block_bytes);

  const std::string& dir() const { return dir_; }
  size_t file_bytes() const;
  size_t block_bytes() const { return block_bytes_; }

  // Creates the directory (0700) and removes leftover *.tmp files.
  Status Open();
  // Writes one block; REQUIRES: header.tokens.size() == block_size, bytes holds block_bytes.
  Status Write(const DiskBlockHeader& header, const void* bytes);
  // Reads hash's payload into dst (block_bytes). NotFound without a file; Corruption when a
  // checksum, the size or the header does not match (the caller drops the block).
  Status Read(BlockHash hash, void* dst);
  // Deletes hash's file; OK if it is already gone.
  Status Remove(BlockHash hash);
  // The headers of every well-formed file (header checksum, sizes and name agree). Files
  // that fail are deleted and counted in *num_bad (payloads are checked on Read).
  Result<std::vector<DiskBlockHeader>> Scan(int32_t* num_bad);

  std::string PathOf(BlockHash hash) const;

  // A block file's bytes (header and payload) as one string: the remote tier stores this
  // same format (cache/remote_tier.h). REQUIRES: as Write.
  std::string EncodeBlock(const DiskBlockHeader& header, const void* bytes) const;
  // Checks and parses EncodeBlock's bytes: the header into *header, the payload into dst
  // (block_bytes). Corruption when a checksum, the size or the header does not match, or
  // the bytes name a block other than `expected`.
  Status DecodeBlock(std::string_view data, BlockHash expected, DiskBlockHeader* header,
                     void* dst) const;

 private:
  size_t header_bytes() const;
  std::string EncodeHeader(const DiskBlockHeader& header, uint64_t payload_sum) const;
  // Parses and checks a header; returns the payload checksum.
  Result<uint64_t> DecodeHeader(const std::string& bytes, DiskBlockHeader* header) const;

  Env* env_;
  std::string dir_;
  int32_t block_size_;
  size_t block_bytes_;
};

// Adopts scanned blocks into pool's disk tier, each after its parent (the pool verifies
// that a header's hash is the hash of its parent, tokens and scope). Returns the hashes it
// could not adopt (an orphan, a duplicate, a lying header, or no room): delete their files.
std::vector<BlockHash> AdoptDiskBlocks(const std::vector<DiskBlockHeader>& headers,
                                       BlockPool* pool);

}  // namespace kvkeep
