// fuzz_trace: the canonical trace reader (tools/replay/trace.h), the format every importer
// writes, on arbitrary bytes. A line either fails with a message, or parses to a session
// whose JSON parses back to the same JSON (the writer and the reader agree).
#include <cstdint>
#include <cstdlib>
#include <string>

#include "tools/replay/trace.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view line(reinterpret_cast<const char*>(data), size);
  auto session = kvkeep::replay::SessionFromJson(line);
  if (!session.ok()) {
    if (session.status().message().empty()) std::abort();
    return 0;
  }
  const std::string once = kvkeep::replay::SessionToJson(*session);
  auto again = kvkeep::replay::SessionFromJson(once);
  if (!again.ok()) std::abort();
  if (kvkeep::replay::SessionToJson(*again) != once) std::abort();
  return 0;
}
