// The daemon's side of the systemd service protocols, without libsystemd:
//   * sd_notify(3): "READY=1", "STATUS=...", "WATCHDOG=1", "RELOADING=1", "STOPPING=1"
//     as one datagram to $NOTIFY_SOCKET (a path, or an abstract name written "@name");
//   * sd_listen_fds(3): a socket passed by kvkeepd.socket as fd 3 (SD_LISTEN_FDS_START),
//     announced by LISTEN_PID, LISTEN_FDS and LISTEN_FDNAMES;
//   * sd_watchdog_enabled(3): WATCHDOG_USEC (and WATCHDOG_PID when set).
// Each function is a no-op, or returns "nothing", when its variables are unset, so the
// daemon runs unchanged outside systemd.
//
// Environment variables are read through Env::GetEnvVar. SdListenUnixFd also unsets the
// LISTEN_* variables (with unsetenv(3); Env has no setter) so children do not inherit them.
//
// Thread-safety: SdNotify may be called from any thread (one sendto per call).
// SdListenUnixFd mutates the process environment: call it once, early in main, before
// other threads start.
#pragma once

#include <chrono>
#include <map>
#include <optional>
#include <string>
#include <string_view>

#include "base/file.h"
#include "base/status.h"

namespace kvkeep::daemon {

// The first passed file descriptor (SD_LISTEN_FDS_START in sd-daemon.h).
inline constexpr int kSdListenFdsStart = 3;

// Sends `state` (e.g. "READY=1\nSTATUS=model loaded") to $NOTIFY_SOCKET. A no-op when
// the variable is unset or empty (not running under systemd). Failures (a malformed
// variable, a failed send) are logged at warn level: notification is best effort, and
// systemd itself reports a daemon that never becomes ready.
void SdNotify(std::string_view state, Env* env = DefaultEnv());
// As SdNotify, but returns the failure instead of logging it (for tests and callers
// that must know).
Status SdNotifyOrError(std::string_view state, Env* env = DefaultEnv());

// The listening AF_UNIX stream socket passed by socket activation, or nullopt when the
// process was not socket-activated (LISTEN_PID unset or naming another process,
// LISTEN_FDS unset or 0). On success fd 3 is marked close-on-exec and the caller owns it.
// Always unsets LISTEN_PID, LISTEN_FDS and LISTEN_FDNAMES, as sd_listen_fds(3) does when
// asked to unset the environment.
// Errors: InvalidArgument when the variables are malformed, when more than one fd is
// passed, or when fd 3 is not a listening AF_UNIX stream socket.
Result<std::optional<int>> SdListenUnixFdOrError(Env* env = DefaultEnv());
// Every passed listening AF_UNIX stream socket, by its LISTEN_FDNAMES name ("unknown"
// when unnamed). Empty when not socket-activated. Same checks and unsetting as above.
Result<std::map<std::string, int>> SdListenUnixFdsOrError(Env* env = DefaultEnv());
// As SdListenUnixFdOrError, but logs an error and returns nullopt on failure (the
// daemon then binds its own socket).
std::optional<int> SdListenUnixFd(Env* env = DefaultEnv());

// The watchdog interval systemd expects pings within (WATCHDOG_USEC), or zero when the
// watchdog is off, or WATCHDOG_PID names another process. Ping at half this interval.
std::chrono::microseconds SdWatchdogInterval(Env* env = DefaultEnv());

}  // namespace kvkeep::daemon
