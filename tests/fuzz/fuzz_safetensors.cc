// fuzz_safetensors: the safetensors reader (engine/safetensors.h) on arbitrary bytes. The
// bytes become the file; SafetensorsFile::Open either refuses it with a message or
// validates it, and then every tensor it lists must lie inside the mapping with exactly
// shape x dtype bytes (read whole, so ASan sees any overrun).
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>

#include "engine/safetensors.h"

namespace {

struct Scratch {
  const std::string path =
      "/tmp/kvkeep-fuzz-safetensors-" + std::to_string(::getpid()) + ".safetensors";
  ~Scratch() { std::remove(path.c_str()); }
};

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const Scratch scratch;
  if (FILE* f = std::fopen(scratch.path.c_str(), "wb")) {
    if (size > 0) std::fwrite(data, 1, size, f);
    std::fclose(f);
  }
  auto file = kvkeep::SafetensorsFile::Open(kvkeep::DefaultEnv(), scratch.path);
  if (!file.ok()) {
    if (file.status().message().empty()) std::abort();
    return 0;
  }
  static volatile uint64_t sink = 0;  // keeps the reads
  uint64_t sum = 0;
  for (const std::string& name : (*file)->Names()) {
    const kvkeep::TensorView* t = (*file)->Find(name);
    if (t == nullptr) std::abort();
    if (t->num_bytes !=
        static_cast<size_t>(t->NumElements()) * static_cast<size_t>(kvkeep::DTypeBytes(t->dtype))) {
      std::abort();
    }
    for (size_t i = 0; i < t->num_bytes; ++i) sum += t->data[i];
  }
  sink = sink + sum;
  return 0;
}
