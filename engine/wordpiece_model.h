// WordPiece (BERT, all-MiniLM-L6-v2) from a parsed tokenizer.json. Supported, and refused
// with NotSupported otherwise:
//   normalizer: BertNormalizer (clean_text, handle_chinese_chars, strip_accents via a
//     per-code-point NFD table, lowercase) or null;
//   pre_tokenizer: BertPreTokenizer (split on white space, isolate punctuation) or null;
//   model: WordPiece (vocab, unk_token, continuing_subword_prefix,
//     max_input_chars_per_word);
//   decoder: WordPiece (prefix removal, optional cleanup) or null;
//   post_processor: TemplateProcessing / BertProcessing (applied with add_special_tokens).
#pragma once

#include <memory>

#include <nlohmann/json.hpp>

#include "engine/tokenizer.h"

namespace kvkeep {

Result<std::unique_ptr<Tokenizer>> LoadWordPieceTokenizer(const nlohmann::json& root);

}  // namespace kvkeep
