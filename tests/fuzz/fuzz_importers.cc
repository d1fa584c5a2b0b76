// fuzz_importers: every source-format trace importer (tools/replay/importers.h) on
// arbitrary bytes. The first byte picks the format (ImportFormats() order: mini-swe-agent,
// swe-agent, nebius, openhands, mooncake, burstgpt); the rest becomes the file. A bad file
// or record is skipped with an error that names it; every session imported must write as
// canonical JSON and read back to the same JSON (what the replayer then loads).
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "tools/replay/importers.h"

namespace {

struct Scratch {
  const std::string path = "/tmp/kvkeep-fuzz-importers-" + std::to_string(::getpid());
  ~Scratch() { std::remove(path.c_str()); }
};

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const Scratch scratch;
  if (size == 0) return 0;
  const auto& formats = kvkeep::replay::ImportFormats();
  const std::string& format = formats[data[0] % formats.size()];
  if (FILE* f = std::fopen(scratch.path.c_str(), "wb")) {
    if (size > 1) std::fwrite(data + 1, 1, size - 1, f);
    std::fclose(f);
  }
  std::vector<kvkeep::replay::Session> sessions;
  kvkeep::replay::ImportReport report;
  const kvkeep::Status st =
      kvkeep::replay::ImportFiles(format, {scratch.path}, {}, &sessions, &report);
  if (!st.ok()) std::abort();  // only an unknown format may fail, and every one is known
  for (const std::string& error : report.errors) {
    if (error.empty()) std::abort();
  }
  for (const kvkeep::replay::Session& s : sessions) {
    const std::string once = kvkeep::replay::SessionToJson(s);
    auto again = kvkeep::replay::SessionFromJson(once);
    if (!again.ok()) {
      std::fprintf(stderr, "imported session does not read back: %s\n%s\n",
                   again.status().ToString().c_str(), once.substr(0, 4096).c_str());
      std::abort();
    }
    if (const std::string twice = kvkeep::replay::SessionToJson(*again); twice != once) {
      std::fprintf(stderr, "imported session changes on a round trip:\n%s\n%s\n",
                   once.substr(0, 4096).c_str(), twice.substr(0, 4096).c_str());
      std::abort();
    }
  }
  return 0;
}
