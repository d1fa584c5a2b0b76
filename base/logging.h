// Logging set-up: one place that configures spdlog's default logger. Modules log with
// spdlog::info(...) etc.; the level comes from configuration, never from code.
#pragma once

#include <string_view>

#include "base/status.h"

namespace kvkeep {

// Sends logs to stderr (journald captures it under systemd) at the given level:
// trace, debug, info, warn, error, critical or off.
Status SetupLogging(std::string_view level);
// Changes the level at run time (SIGHUP reload).
Status SetLogLevel(std::string_view level);

}  // namespace kvkeep
