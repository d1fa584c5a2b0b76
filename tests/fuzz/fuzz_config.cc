// fuzz_config: the daemon's configuration file (daemon/config.h ApplyConfigJson, then
// ValidateDaemonOptions) on arbitrary bytes. A file is either applied or refused with a
// message; an applied one validates or is refused with a message. Crashes, sanitizer
// findings and unnamed refusals abort.
#include <cstdint>
#include <cstdlib>
#include <string_view>

#include "daemon/config.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  kvkeep::DaemonOptions options;
  const kvkeep::Status applied = kvkeep::ApplyConfigJson(text, &options);
  if (!applied.ok()) {
    if (applied.message().empty()) std::abort();
    return 0;
  }
  const kvkeep::Status valid = kvkeep::ValidateDaemonOptions(options);
  if (!valid.ok() && valid.message().empty()) std::abort();
  return 0;
}
