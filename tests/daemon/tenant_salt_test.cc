// Tenant salts: per instance without a secret; with a cluster secret, HMAC-SHA256 checked
// against Python's hmac module, equal across instances for one tenant, different between
// tenants and between secrets; short or missing secret files are refused.
#include "daemon/tenant_salt.h"

#include <gtest/gtest.h>

#include <fstream>

#include "tests/testlib/test_util.h"

namespace kvkeep {
namespace {

constexpr char kSecret[] = "0123456789abcdef-cluster-secret";

// Known answers from an independent implementation:
//   python3 -c "import hmac,hashlib; m=hmac.new(SECRET, b'kvkeep-tenant/v1:%d' % UID,
//               hashlib.sha256).digest(); print(hex(int.from_bytes(m[:8], 'little')))"
TEST(TenantSaltTest, ClusterSaltIsHmacSha256OfTheTenant) {
  const TenantSalt a = TenantSalt::FromSecret(kSecret);
  EXPECT_TRUE(a.is_cluster());
  EXPECT_EQ(a.Of(1000), 0xd64b65b62e43a94aull);
  EXPECT_EQ(a.Of(1001), 0x649d8d511fbb1272ull);
  EXPECT_EQ(TenantSalt::FromSecret("another-secret-of-32-bytes-xxxxx").Of(1000),
            0x2e061739cea3a878ull);
}

TEST(TenantSaltTest, SameOnEveryInstanceDifferentBetweenTenantsAndSecrets) {
  testing::TempDir dir;
  const std::string path = dir.File("secret");
  std::ofstream(path) << kSecret << "\n";  // one trailing newline is not part of it
  auto on_a = TenantSalt::FromSecretFile(DefaultEnv(), path);
  auto on_b = TenantSalt::FromSecretFile(DefaultEnv(), path);
  ASSERT_TRUE(on_a.ok()) << on_a.status().ToString();
  ASSERT_TRUE(on_b.ok());
  const TenantSalt local;
  EXPECT_FALSE(local.is_cluster());
  for (uint32_t uid : {0u, 1u, 1000u, 65534u}) {
    EXPECT_EQ(on_a->Of(uid), on_b->Of(uid));
    EXPECT_EQ(on_a->Of(uid), TenantSalt::FromSecret(kSecret).Of(uid));
    EXPECT_NE(on_a->Of(uid), on_a->Of(uid + 1));
    EXPECT_NE(on_a->Of(uid), TenantSalt::FromSecret(std::string(kSecret) + "x").Of(uid));
    EXPECT_NE(on_a->Of(uid), local.Of(uid));
    EXPECT_EQ(local.Of(uid), TenantSalt().Of(uid));  // stable per instance
  }
}

TEST(TenantSaltTest, ShortOrMissingSecretIsRefused) {
  testing::TempDir dir;
  const std::string path = dir.File("short");
  std::ofstream(path) << "too-short\n";
  auto st = TenantSalt::FromSecretFile(DefaultEnv(), path);
  EXPECT_EQ(st.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(st.status().message().find("16 bytes"), std::string::npos);
  EXPECT_FALSE(TenantSalt::FromSecretFile(DefaultEnv(), dir.File("absent")).ok());
}

}  // namespace
}  // namespace kvkeep
