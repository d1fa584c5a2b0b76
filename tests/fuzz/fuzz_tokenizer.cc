// fuzz_tokenizer: the tokenizers (engine/tokenizer.h) encode, then decode. The first byte
// picks one of the parity fixtures: three byte-level BPE tokenizers (GPT-2 and Llama 3: valid
// UTF-8 must round-trip exactly; Qwen2 normalises to NFC) and two WordPiece ones
// (normalising). For the normalising ones only: no crash, every id in the vocabulary.
// Special-token literals are parsed too.
#include <cstdint>
#include <cstdlib>
#include <memory>
#include <string>
#include <vector>

#include "engine/tokenizer.h"

namespace {

struct Loaded {
  std::unique_ptr<kvkeep::Tokenizer> tokenizer;
  bool utf8_exact = false;  // valid UTF-8 round-trips
};

std::vector<Loaded> LoadAll() {
  std::vector<Loaded> out;
  kvkeep::Env* env = kvkeep::DefaultEnv();
  const std::string fixtures =
      std::string(KVKEEP_SOURCE_DIR) + "/tests/fixtures/parity/tokenizers/";
  const struct {
    std::string path;
    bool utf8_exact;
  } specs[] = {{fixtures + "bpe_gpt2", true},
               {fixtures + "bpe_llama3", true},
               {fixtures + "bpe_qwen2", false},  // NFC-normalising
               {fixtures + "wordpiece_cased", false},
               {fixtures + "wordpiece_uncased", false}};
  for (const auto& spec : specs) {
    auto t = kvkeep::LoadTokenizer(env, spec.path);
    if (!t.ok()) std::abort();  // a fixture that does not load is a bug, not an input
    out.push_back({std::move(t).value(), spec.utf8_exact});
  }
  return out;
}

bool ValidUtf8(std::string_view s) {
  for (size_t i = 0; i < s.size();) {
    const auto c = static_cast<uint8_t>(s[i]);
    size_t n = c < 0x80 ? 1 : (c >> 5) == 6 ? 2 : (c >> 4) == 14 ? 3 : (c >> 3) == 30 ? 4 : 0;
    if (n == 0 || i + n > s.size()) return false;
    uint32_t cp = n == 1 ? c : c & (0x7f >> n);
    for (size_t k = 1; k < n; ++k) {
      const auto cc = static_cast<uint8_t>(s[i + k]);
      if ((cc >> 6) != 2) return false;
      cp = (cp << 6) | (cc & 0x3f);
    }
    static constexpr uint32_t kMin[] = {0, 0, 0x80, 0x800, 0x10000};
    if (cp < kMin[n] || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff)) return false;
    i += n;
  }
  return true;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const std::vector<Loaded> tokenizers = LoadAll();
  if (size == 0) return 0;
  const Loaded& t = tokenizers[data[0] % tokenizers.size()];
  const std::string_view text(reinterpret_cast<const char*>(data + 1), size - 1);
  for (const bool parse_special : {false, true}) {
    auto ids = t.tokenizer->Encode(text, parse_special);
    if (!ids.ok()) {
      if (ids.status().message().empty()) std::abort();
      continue;
    }
    for (int32_t id : *ids) {
      if (id < 0 || id >= t.tokenizer->vocab_size()) std::abort();
    }
    const std::string back = t.tokenizer->Decode(*ids);
    if (!parse_special && t.utf8_exact && ValidUtf8(text) && back != text) {
      std::abort();
    }
  }
  return 0;
}
