// Tokenizer: text <-> token ids, loaded from a Hugging Face tokenizer.json.
// Implementations: byte-level BPE (GPT-2 / Llama-3 / Qwen2 style, which also covers the
// synthetic model's 256-byte vocabulary) and WordPiece (BERT / MiniLM).
//
// Thread-safety: Encode/Decode are const and safe to call concurrently.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "base/file.h"
#include "base/status.h"

namespace kvkeep {

// Options of Tokenizer::EncodeWithOptions.
struct EncodeOptions {
  // Match special added tokens written literally in the text (e.g. "<|im_start|>").
  bool parse_special = true;
  // Apply the tokenizer.json post-processor, as HF's encode(text, add_special_tokens=True):
  // [CLS] ... [SEP] for BERT, <|begin_of_text|> for Llama-3. Encode() never does.
  bool add_special_tokens = false;
};

class Tokenizer {
 public:
  virtual ~Tokenizer() = default;
  // Encodes text. Special tokens written literally in the text (e.g. "<|im_start|>") are
  // recognised as single ids when parse_special is true.
  virtual Result<std::vector<int32_t>> Encode(std::string_view text,
                                              bool parse_special = true) const = 0;
  // Decodes ids to text; invalid UTF-8 at the end is kept as is (see StreamDecoder).
  virtual std::string Decode(const std::vector<int32_t>& ids, bool skip_special = false) const = 0;
  // Raw bytes of one token (after byte-level un-mapping); empty for unknown ids.
  virtual std::string TokenBytes(int32_t id) const = 0;
  virtual std::optional<int32_t> TokenToId(std::string_view token) const = 0;
  virtual int32_t vocab_size() const = 0;
  virtual bool IsSpecial(int32_t id) const = 0;
  // Encode with every option spelled out. The default ignores add_special_tokens.
  virtual Result<std::vector<int32_t>> EncodeWithOptions(std::string_view text,
                                                         const EncodeOptions& options) const {
    return Encode(text, options.parse_special);
  }
};

// Loads dir/tokenizer.json (or a path to the file itself), or the tokenizer of a .gguf
// file (GgufTokenizerJson).
Result<std::unique_ptr<Tokenizer>> LoadTokenizer(Env* env, const std::string& path);

// Incremental detokenizer for streaming: feeds ids, returns only complete UTF-8 text,
// holding back a trailing partial multi-byte sequence until it completes.
class StreamDecoder {
 public:
  explicit StreamDecoder(const Tokenizer* tokenizer) : tokenizer_(tokenizer) {}
  std::string Push(int32_t id);
  // Whatever is held back, flushed at the end of a stream (may be invalid UTF-8).
  std::string Flush();

 private:
  const Tokenizer* tokenizer_;
  std::string pending_;
};

}  // namespace kvkeep
