// Peer credentials and the admin-group check.
#include "daemon/peer_cred.h"

#include <grp.h>
#include <gtest/gtest.h>
#include <pwd.h>
#include <sys/socket.h>
#include <unistd.h>

namespace kvkeep {
namespace {

TEST(PeerCredTest, ReadsTheOtherEndsCredentials) {
  int fds[2];
  ASSERT_EQ(socketpair(AF_UNIX, SOCK_STREAM, 0, fds), 0);
  auto cred = GetPeerCred(fds[0]);
  ASSERT_TRUE(cred.ok()) << cred.status().ToString();
  EXPECT_EQ(cred->pid, getpid());
  EXPECT_EQ(cred->uid, getuid());
  EXPECT_EQ(cred->gid, getgid());
  close(fds[0]);
  close(fds[1]);
  EXPECT_FALSE(GetPeerCred(-1).ok());
}

TEST(PeerCredTest, LooksUpGroupsByNameOrNumber) {
  EXPECT_EQ(*LookupGroup("12345"), 12345u);
  struct group* root = getgrgid(0);
  ASSERT_NE(root, nullptr);
  EXPECT_EQ(*LookupGroup(root->gr_name), 0u);
  EXPECT_TRUE(LookupGroup("no-such-group-kvkeep").status().IsNotFound());
}

TEST(PeerCredTest, AdminIsRootOrAMemberOfTheAdminGroup) {
  EXPECT_TRUE(IsAdmin({1, 0, 0}, std::nullopt));  // root, always
  // A uid that is not root and has no admin group configured: never.
  EXPECT_FALSE(IsAdmin({1, 65534, 65534}, std::nullopt));
  // Primary group match.
  EXPECT_TRUE(IsAdmin({1, 65534, 65534}, gid_t{65534}));
  EXPECT_FALSE(IsAdmin({1, 65534, 65534}, gid_t{4242}));
  // Supplementary membership through the passwd entry: find a user listed as a member of
  // some group other than its primary one.
  setgrent();
  while (struct group* g = getgrent()) {
    for (char** m = g->gr_mem; m && *m; ++m) {
      struct passwd* pw = getpwnam(*m);
      if (pw == nullptr || pw->pw_uid == 0 || pw->pw_gid == g->gr_gid) continue;
      EXPECT_TRUE(IsAdmin({1, pw->pw_uid, pw->pw_gid}, g->gr_gid))
          << *m << " is a member of " << g->gr_name;
      endgrent();
      return;
    }
  }
  endgrent();
  GTEST_SKIP() << "no user with a supplementary group in /etc/group to check membership with";
}

}  // namespace
}  // namespace kvkeep
