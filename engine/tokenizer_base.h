// TokenizerBase: what every tokenizer.json model shares: the added-token vocabulary
// (special and not, matched literally before pre-tokenization, leftmost-longest as HF's
// AddedVocabulary), the id -> token tables, and the post-processor that adds special tokens
// when asked (TemplateProcessing / BertProcessing / RobertaProcessing, single sequence).
// Models (BPE, WordPiece) implement EncodeSegment on the text between added tokens.
//
// Thread-safety: immutable after construction; EncodeSegment must be const-safe.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include <nlohmann/json.hpp>

#include "engine/tokenizer.h"

namespace kvkeep {

// Transparent string hash so maps keyed by std::string can be probed with string_view.
struct StringHash {
  using is_transparent = void;
  size_t operator()(std::string_view s) const { return std::hash<std::string_view>{}(s); }
};
template <typename V>
using StringMap = std::unordered_map<std::string, V, StringHash, std::equal_to<>>;

struct AddedToken {
  int32_t id = 0;
  std::string content;
  bool special = false;
  bool lstrip = false;       // the match swallows white space on its left
  bool rstrip = false;       // ... and on its right
  bool single_word = false;  // only matches when not inside a word
};

class TokenizerBase : public Tokenizer {
 public:
  Result<std::vector<int32_t>> Encode(std::string_view text,
                                      bool parse_special = true) const override;
  Result<std::vector<int32_t>> EncodeWithOptions(std::string_view text,
                                                 const EncodeOptions& options) const override;
  std::string TokenBytes(int32_t id) const override;
  std::optional<int32_t> TokenToId(std::string_view token) const override;
  int32_t vocab_size() const override { return static_cast<int32_t>(id_to_token_.size()); }
  bool IsSpecial(int32_t id) const override;

 protected:
  // Appends the ids of a piece of text that holds no added token.
  virtual Status EncodeSegment(std::string_view text, std::vector<int32_t>* ids) const = 0;

  // Loads added_tokens and post_processor from the parsed tokenizer.json; call after the
  // model filled token_to_id_ / id_to_token_ / id_to_bytes_.
  Status LoadShared(const nlohmann::json& root);

  StringMap<int32_t> token_to_id_;        // HF token strings (model vocab + added tokens)
  std::vector<std::string> id_to_token_;  // HF token strings
  std::vector<std::string> id_to_bytes_;  // decoded bytes of each token
  std::vector<uint8_t> is_special_;       // per id
  std::vector<AddedToken> added_;         // sorted by first byte, then longer first
  std::vector<int32_t> prefix_ids_;       // post-processor, single sequence
  std::vector<int32_t> suffix_ids_;

 private:
  // Finds the leftmost-longest added token in text[from..); returns false if none.
  bool FindAdded(std::string_view text, size_t from, bool parse_special, size_t* begin, size_t* end,
                 const AddedToken** token) const;
  Status LoadPostProcessor(const nlohmann::json& pp);

  std::vector<uint32_t> first_byte_begin_;  // [257] index into added_ by first byte
};

// Helpers shared by the models.
Result<int32_t> JsonInt(const nlohmann::json& j, const char* key);

}  // namespace kvkeep
