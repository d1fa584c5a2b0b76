// Peer credentials of a Unix-socket connection (SO_PEERCRED) and group membership checks
// for the admin group (getgrouplist over the uid's passwd entry, so supplementary groups
// count).
//
// Thread-safety: reentrant.
#pragma once

#include <sys/types.h>

#include <optional>
#include <string>

#include "base/status.h"

namespace kvkeep {

struct PeerCred {
  pid_t pid = 0;
  uid_t uid = 0;
  gid_t gid = 0;
};

// The credentials of the process on the other end of a connected Unix socket.
Result<PeerCred> GetPeerCred(int fd);

// Resolves a group name (or a decimal gid) to a gid; NotFound if unknown.
Result<gid_t> LookupGroup(const std::string& name);

// True when uid is root, or when admin_gid is set and is the peer's gid or one of the
// uid's supplementary groups.
bool IsAdmin(const PeerCred& peer, std::optional<gid_t> admin_gid);

}  // namespace kvkeep
