// fuzz_gguf: the GGUF reader (engine/gguf_file.h) and what reads a parsed file on arbitrary
// bytes. A file either fails with a message naming what is wrong, or parses; then every
// metadata getter, the config/tokenizer/chat-template translations (engine/gguf_model.h) and
// the dequantisation of every tensor (up to a size cap) must run without reading outside
// the image (ASan) and with every tensor's bytes matching its type's geometry.
#include <cstdint>
#include <cstdlib>
#include <string>
#include <vector>

#include "engine/gguf_file.h"
#include "engine/gguf_model.h"
#include "engine/gguf_types.h"

namespace {

constexpr int64_t kMaxDequantElements = int64_t{1} << 20;

void Require(bool ok) {
  if (!ok) std::abort();
}

// A failed lookup must say what failed.
template <typename T>
void Check(const kvkeep::Result<T>& r) {
  if (!r.ok()) Require(!r.status().message().empty());
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string bytes(reinterpret_cast<const char*>(data), size);
  auto file = kvkeep::GgufFile::Parse(bytes, "fuzz.gguf");
  if (!file.ok()) {
    Require(!file.status().message().empty());
    return 0;
  }
  const kvkeep::GgufFile& f = **file;
  for (const auto& [key, value] : f.metadata()) {
    Check(f.GetString(key));
    Check(f.GetInt(key));
    Check(f.GetFloat(key));
    Check(f.GetArray(key, value.array_type));
  }
  Check(kvkeep::GgufConfigJson(f));
  Check(kvkeep::GgufTokenizerJson(f));
  Check(kvkeep::GgufTokenizerConfigJson(f));
  std::vector<float> out;
  for (const kvkeep::GgufTensorInfo& t : f.tensors()) {
    auto info = kvkeep::FindGgmlType(static_cast<uint32_t>(t.type));
    Require(info.has_value());
    const int64_t n = t.NumElements();
    Require(n >= 0 && n % info->block_elements == 0);
    Require(static_cast<int64_t>(t.num_bytes) == n / info->block_elements * info->block_bytes);
    Require(t.data >= reinterpret_cast<const uint8_t*>(bytes.data()) &&
            t.data + t.num_bytes <= reinterpret_cast<const uint8_t*>(bytes.data()) + size);
    Require(f.FindTensor(t.name) == &t);
    if (n > kMaxDequantElements) continue;
    out.resize(static_cast<size_t>(n));
    kvkeep::DequantizeGgml(t.type, t.data, n, out.data());
  }
  return 0;
}
