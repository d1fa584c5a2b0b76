// fuzz_store: session restore from a damaged database (daemon/store.h). The bytes become
// the database file; Store::Open (quick_check, migrations) either refuses it with a
// message or opens it, and then every reader runs: LoadAll (sessions, messages, their
// token blobs and checksums), tool events, tool samples and tool statistics. Crashes and
// sanitizer findings abort; refusals are the expected outcome for most inputs.
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>

#include "daemon/store.h"

namespace {

// The scratch database, removed with its side files before each input and at exit.
struct Scratch {
  const std::string path = "/tmp/kvkeep-fuzz-store-" + std::to_string(::getpid()) + ".db";
  void Clear() const {
    for (const char* suffix : {"", "-wal", "-shm", "-journal"}) {
      std::remove((path + suffix).c_str());
    }
  }
  ~Scratch() { Clear(); }
};

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const Scratch scratch;
  const std::string& path = scratch.path;
  scratch.Clear();
  if (FILE* f = std::fopen(path.c_str(), "wb")) {
    if (size > 0) std::fwrite(data, 1, size, f);
    std::fclose(f);
  }
  auto store = kvkeep::Store::Open(path);
  if (!store.ok()) {
    if (store.status().message().empty()) std::abort();
    return 0;
  }
  auto sessions = (*store)->LoadAll();
  if (sessions.ok()) {
    for (const auto& s : *sessions) (void)(*store)->ListToolEvents(s.owner_uid, s.id);
  }
  (void)(*store)->ToolSamples(64);
  (void)(*store)->LoadToolStats();
  (void)(*store)->ToolLatencySamples("bash");
  return 0;
}
