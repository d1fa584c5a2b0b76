#include "base/logging.h"

#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/spdlog.h>

#include <string>

namespace kvkeep {

Status SetLogLevel(std::string_view level) {
  auto parsed = spdlog::level::from_str(std::string(level));
  // from_str maps unknown names to "off"; only accept "off" when asked for.
  if (parsed == spdlog::level::off && level != "off") {
    return Status::InvalidArgument("unknown log level '" + std::string(level) +
                                   "' (trace, debug, info, warn, error, critical, off)");
  }
  spdlog::set_level(parsed);
  return Status::OK();
}

Status SetupLogging(std::string_view level) {
  static bool installed = false;
  if (!installed) {
    auto logger = spdlog::stderr_color_mt("kvkeep");
    logger->set_pattern("%Y-%m-%dT%H:%M:%S.%e %^%l%$ %v");
    spdlog::set_default_logger(logger);
    installed = true;
  }
  return SetLogLevel(level);
}

}  // namespace kvkeep
