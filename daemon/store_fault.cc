// TESTING ONLY: kvkeepd's --testing-store-fault (daemon/store.h, StoreFault).
#include <sqlite3.h>

#include <string>
#include <vector>

#include "daemon/store.h"

namespace kvkeep {

Result<StoreFault> ParseStoreFault(std::string_view spec) {
  const Status bad = Status::InvalidArgument(
      "--testing-store-fault must be N:full|busy|ioerr|slow[:COUNT] with N, COUNT >= 1, not '" +
      std::string(spec) + "'");
  std::vector<std::string> parts;
  for (size_t start = 0;;) {
    const size_t colon = spec.find(':', start);
    parts.emplace_back(spec.substr(start, colon == std::string_view::npos ? colon : colon - start));
    if (colon == std::string_view::npos) break;
    start = colon + 1;
  }
  if (parts.size() < 2 || parts.size() > 3) return bad;
  const auto positive = [](const std::string& text, int64_t* out) {
    if (text.empty() || text.size() > 12 || text.find_first_not_of("0123456789") != text.npos) {
      return false;
    }
    *out = std::stoll(text);
    return *out >= 1;
  };
  StoreFault fault;
  if (!positive(parts[0], &fault.first_failing)) return bad;
  if (parts.size() == 3 && !positive(parts[2], &fault.count)) return bad;
  if (parts[1] == "full") {
    fault.sqlite_code = SQLITE_FULL;
  } else if (parts[1] == "busy") {
    fault.sqlite_code = SQLITE_BUSY;
  } else if (parts[1] == "ioerr") {
    fault.sqlite_code = SQLITE_IOERR;
  } else if (parts[1] == "slow") {
    fault.sqlite_code = SQLITE_OK;
    fault.delay_ms = kSlowStoreFaultMs;
  } else {
    return bad;
  }
  return fault;
}

}  // namespace kvkeep
