#include "daemon/peer_cred.h"

#include <grp.h>
#include <pwd.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <vector>

namespace kvkeep {

Result<PeerCred> GetPeerCred(int fd) {
  struct ucred cred;
  socklen_t len = sizeof(cred);
  if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) != 0) {
    return Status::IOError(std::string("SO_PEERCRED: ") + std::strerror(errno));
  }
  return PeerCred{cred.pid, cred.uid, cred.gid};
}

Result<gid_t> LookupGroup(const std::string& name) {
  if (!name.empty() && name.find_first_not_of("0123456789") == std::string::npos) {
    return static_cast<gid_t>(std::stoul(name));
  }
  std::vector<char> buf(16384);
  struct group gr;
  struct group* found = nullptr;
  if (getgrnam_r(name.c_str(), &gr, buf.data(), buf.size(), &found) != 0 || found == nullptr) {
    return Status::NotFound("unknown group '" + name + "'");
  }
  return found->gr_gid;
}

bool IsAdmin(const PeerCred& peer, std::optional<gid_t> admin_gid) {
  if (peer.uid == 0) return true;
  if (!admin_gid) return false;
  if (peer.gid == *admin_gid) return true;
  std::vector<char> buf(16384);
  struct passwd pw;
  struct passwd* found = nullptr;
  if (getpwuid_r(peer.uid, &pw, buf.data(), buf.size(), &found) != 0 || found == nullptr) {
    return false;
  }
  int n = 64;
  std::vector<gid_t> groups(n);
  while (getgrouplist(found->pw_name, peer.gid, groups.data(), &n) < 0) groups.resize(n);
  groups.resize(n);
  for (gid_t g : groups) {
    if (g == *admin_gid) return true;
  }
  return false;
}

}  // namespace kvkeep
