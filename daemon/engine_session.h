// The engine's name for a daemon session: sessions are named per owner uid, so the engine
// id hashes both (XXH64 of LE32(uid) || the id's bytes; never 0, which means "no session").
// Thread-safety: pure.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

#include "cache/prefix_hash.h"
#include "policy/reclaim_policy.h"

namespace kvkeep {

inline SessionId EngineSessionOf(uint32_t uid, std::string_view id) {
  std::string bytes(4, '\0');
  for (int i = 0; i < 4; ++i) bytes[i] = static_cast<char>((uid >> (8 * i)) & 0xff);
  bytes.append(id);
  const uint64_t h = Xxh64(bytes.data(), bytes.size(), 0);
  return h == 0 ? 1 : h;
}

}  // namespace kvkeep
