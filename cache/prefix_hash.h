// Content hashes that name full KV blocks on every tier (GPU, host, disk) and on disk
// across restarts. The definition below is a persistent format: changing it orphans
// every stored block. docs/kv_cache.md repeats it.
//
// Algorithm: XXH64 (Yann Collet's xxHash, 64-bit variant, spec
// https://github.com/Cyan4973/xxHash/blob/dev/doc/xxhash_spec.md) with seed 0 over a
// byte message. All integers are serialised little-endian regardless of host order.
//
//   HashModelId(id)  = XXH64(seed 0, the UTF-8 bytes of id)
//   HashBlock(parent, tokens, model_id_hash, tenant_salt)
//                    = XXH64(seed 0, LE64(parent) || LE64(model_id_hash) ||
//                            LE64(tenant_salt) || LE32(tokens[0]) || ... ||
//                            LE32(tokens[n-1]))
//
// The first block of a sequence uses parent = kRootParentHash, the eight ASCII bytes
// "kvkeep/0" read as a little-endian uint64 (0x302f7065656b766b). Every field has a fixed
// width, so the message encoding is injective.
//
// A hash is a name, not a proof: BlockPool verifies every hit against the stored tokens
// and parent link (cache/block_pool.h), so a collision can never serve wrong KV.
//
// Thread-safety: pure functions.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <span>
#include <string_view>

namespace kvkeep {

// The content hash of one full block (and, through the parent chain, of its whole prefix).
struct BlockHash {
  uint64_t value = 0;
  friend bool operator==(BlockHash a, BlockHash b) = default;
};

// "kvkeep/0" as little-endian bytes: the parent of the first block of every sequence.
inline constexpr BlockHash kRootParentHash{0x302f7065656b766bULL};

// The namespace a sequence's blocks are hashed in: blocks are shared only within one
// model and one tenant.
struct HashScope {
  uint64_t model_id_hash = 0;  // HashModelId(model id)
  uint64_t tenant_salt = 0;    // per-tenant salt; 0 is an ordinary value
  friend bool operator==(const HashScope& a, const HashScope& b) = default;
};

// XXH64 of `data` with `seed` (the reference algorithm; exposed for tests and tiers).
uint64_t Xxh64(const void* data, size_t num_bytes, uint64_t seed);

// XXH64(seed 0) of the id's bytes.
uint64_t HashModelId(std::string_view model_id);

// The hash of a full block given its parent's hash. `tokens` is the block's token ids
// (block_size of them for a pool block; any length is accepted).
BlockHash HashBlock(BlockHash parent, std::span<const int32_t> tokens, uint64_t model_id_hash,
                    uint64_t tenant_salt);
inline BlockHash HashBlock(BlockHash parent, std::span<const int32_t> tokens, HashScope scope) {
  return HashBlock(parent, tokens, scope.model_id_hash, scope.tenant_salt);
}

}  // namespace kvkeep

template <>
struct std::hash<kvkeep::BlockHash> {
  size_t operator()(kvkeep::BlockHash h) const noexcept { return static_cast<size_t>(h.value); }
};
