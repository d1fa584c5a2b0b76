#include "daemon/tenant_salt.h"

#include <openssl/evp.h>
#include <openssl/hmac.h>

#include <string_view>

#include "base/hash64.h"

namespace kvkeep {

constexpr size_t kMinSecretBytes = 16;

Result<TenantSalt> TenantSalt::FromSecretFile(Env* env, const std::string& path) {
  ASSIGN_OR_RETURN(std::string secret, env->ReadFile(path));
  if (secret.ends_with('\n')) secret.pop_back();
  if (secret.size() < kMinSecretBytes) {
    return Status::InvalidArgument("cluster secret file " + path + ": shorter than " +
                                   std::to_string(kMinSecretBytes) +
                                   " bytes (make one with `head -c 32 /dev/urandom | base64`)");
  }
  return FromSecret(std::move(secret));
}

TenantSalt TenantSalt::FromSecret(std::string secret) {
  TenantSalt s;
  s.secret_ = std::move(secret);
  return s;
}

uint64_t TenantSalt::Of(uint32_t uid) const {
  if (secret_.empty()) return SplitMix64(uint64_t{uid} + 0x6b766b656570ull);
  const std::string message = "kvkeep-tenant/v1:" + std::to_string(uid);
  unsigned char mac[EVP_MAX_MD_SIZE];
  unsigned int mac_len = 0;
  HMAC(EVP_sha256(), secret_.data(), static_cast<int>(secret_.size()),
       reinterpret_cast<const unsigned char*>(message.data()), message.size(), mac, &mac_len);
  uint64_t salt = 0;
  for (int i = 7; i >= 0; --i) salt = (salt << 8) | mac[i];
  return salt;
}

}  // namespace kvkeep
