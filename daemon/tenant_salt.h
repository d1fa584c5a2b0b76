// TenantSalt: the tenant part of every prefix hash's scope (cache/prefix_hash.h HashScope),
// so that tenants never share KV blocks.
//
// Local (no cluster secret): SplitMix64 of the uid, stable across restarts of one
// instance, so its disk tier finds a tenant's blocks again.
// Cluster (--cluster-secret-file): the first 8 bytes (little-endian) of
//   HMAC-SHA256(key = the secret file's bytes, message = "kvkeep-tenant/v1:" + decimal uid)
// so every instance with the same secret gives a tenant the same salt (they share that
// tenant's blocks through the remote tier), tenants differ, and instances with different
// secrets never share. Without the secret, a salt reveals nothing usable about other
// tenants' keys. docs/scale-out.md explains the setup.
//
// Thread-safety: immutable after construction; Of is safe from any thread.
#pragma once

#include <cstdint>
#include <string>

#include "base/file.h"
#include "base/status.h"

namespace kvkeep {

class TenantSalt {
 public:
  // The per-instance salt (no secret).
  TenantSalt() = default;
  // Reads the cluster secret. InvalidArgument when the file is shorter than 16 bytes (after
  // one trailing newline is dropped); IOError/NotFound when it cannot be read.
  static Result<TenantSalt> FromSecretFile(Env* env, const std::string& path);
  // REQUIRES: secret.size() >= 16.
  static TenantSalt FromSecret(std::string secret);

  bool is_cluster() const { return !secret_.empty(); }
  uint64_t Of(uint32_t uid) const;

 private:
  std::string secret_;  // empty: local
};

}  // namespace kvkeep
