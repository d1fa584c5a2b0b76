// Byte-level BPE (GPT-2, Llama-3, Qwen2 and the synthetic model) from a parsed
// tokenizer.json. Supported, and refused with NotSupported otherwise:
//   normalizer: null, NFC (text that NFC would change is refused at encode time, see
//     docs/tokenizers.md), or a Sequence of those;
//   pre_tokenizer: ByteLevel (use_regex true: GPT-2 pattern; add_prefix_space), Split
//     (Regex or String pattern, behaviour Isolated or Removed, not inverted), or a
//     Sequence of those that contains a ByteLevel;
//   model: BPE with vocab, merges ("a b" strings or ["a", "b"] pairs), ignore_merges,
//     no dropout, no subword prefix/suffix;
//   decoder: ByteLevel; post_processor: ByteLevel, TemplateProcessing, Sequence.
#pragma once

#include <memory>

#include <nlohmann/json.hpp>

#include "engine/tokenizer.h"

namespace kvkeep {

Result<std::unique_ptr<Tokenizer>> LoadBpeTokenizer(const nlohmann::json& root);

}  // namespace kvkeep
