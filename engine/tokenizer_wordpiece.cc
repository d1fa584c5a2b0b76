#include <algorithm>

#include "engine/tokenizer_base.h"
#include "engine/tokenizer_unicode.h"
#include "engine/wordpiece_model.h"

namespace kvkeep {
namespace {

using nlohmann::json;

bool IsChineseChar(char32_t c) {
  return (c >= 0x4E00 && c <= 0x9FFF) || (c >= 0x3400 && c <= 0x4DBF) ||
         (c >= 0x20000 && c <= 0x2A6DF) || (c >= 0x2A700 && c <= 0x2B73F) ||
         (c >= 0x2B740 && c <= 0x2B81F) || (c >= 0x2B920 && c <= 0x2CEAF) ||
         (c >= 0xF900 && c <= 0xFAFF) || (c >= 0x2F800 && c <= 0x2FA1F);
}

bool IsBertWhitespace(char32_t c) {
  return c == '\t' || c == '\n' || c == '\r' || unicode::IsWhiteSpace(c);
}

bool IsBertControl(char32_t c) {
  if (c == '\t' || c == '\n' || c == '\r') return false;
  return unicode::IsOther(c);
}

bool IsBertPunctuation(char32_t c) {
  if (c < 0x80)
    return (c >= 33 && c <= 47) || (c >= 58 && c <= 64) || (c >= 91 && c <= 96) ||
           (c >= 123 && c <= 126);
  return unicode::IsPunctuation(c);
}

// HF's decoders::wordpiece::cleanup.
void Cleanup(std::string* s) {
  static const std::pair<std::string_view, std::string_view> kRules[] = {
      {" .", "."},   {" ?", "?"},     {" !", "!"},    {" ,", ","},
      {" ' ", "'"},  {" n't", "n't"}, {" 'm", "'m"},  {" do not", " don't"},
      {" 's", "'s"}, {" 've", "'ve"}, {" 're", "'re"}};
  for (const auto& [from, to] : kRules) {
    size_t pos = 0;
    while ((pos = s->find(from, pos)) != std::string::npos) {
      s->replace(pos, from.size(), to);
      pos += to.size();
    }
  }
}

class WordPieceTokenizer final : public TokenizerBase {
 public:
  static Result<std::unique_ptr<Tokenizer>> Load(const json& root);
  std::string Decode(const std::vector<int32_t>& ids, bool skip_special) const override;

 protected:
  Status EncodeSegment(std::string_view text, std::vector<int32_t>* ids) const override;

 private:
  std::u32string Normalize(std::string_view text) const;
  void EncodeWord(std::string_view word, size_t num_chars, std::vector<int32_t>* ids) const;

  // Normalizer.
  bool has_normalizer_ = false;
  bool clean_text_ = true;
  bool chinese_chars_ = true;
  bool strip_accents_ = true;
  bool lowercase_ = true;
  bool bert_pre_tokenizer_ = false;
  // Model.
  int32_t unk_id_ = -1;
  std::string prefix_ = "##";
  size_t max_chars_per_word_ = 100;
  // Decoder.
  bool has_decoder_ = false;
  std::string decoder_prefix_ = "##";
  bool cleanup_ = true;
};

Result<std::unique_ptr<Tokenizer>> WordPieceTokenizer::Load(const json& root) {
  std::unique_ptr<WordPieceTokenizer> t(new WordPieceTokenizer());
  const json& norm = root.value("normalizer", json());
  if (!norm.is_null()) {
    if (norm.value("type", "") != "BertNormalizer") {
      return Status::NotSupported("tokenizer.json: WordPiece normalizer " + norm.dump());
    }
    t->has_normalizer_ = true;
    t->clean_text_ = norm.value("clean_text", true);
    t->chinese_chars_ = norm.value("handle_chinese_chars", true);
    t->lowercase_ = norm.value("lowercase", true);
    const json& strip = norm.value("strip_accents", json());
    t->strip_accents_ = strip.is_null() ? t->lowercase_ : strip.get<bool>();
  }
  const json& pre = root.value("pre_tokenizer", json());
  if (!pre.is_null()) {
    if (pre.value("type", "") != "BertPreTokenizer") {
      return Status::NotSupported("tokenizer.json: WordPiece pre_tokenizer " + pre.dump());
    }
    t->bert_pre_tokenizer_ = true;
  }
  const json& model = root.at("model");
  t->prefix_ = model.value("continuing_subword_prefix", "##");
  t->max_chars_per_word_ = model.value("max_input_chars_per_word", 100);
  const json& vocab = model.at("vocab");
  int32_t size = 0;
  for (auto it = vocab.begin(); it != vocab.end(); ++it) {
    size = std::max(size, it.value().get<int32_t>() + 1);
  }
  t->id_to_token_.resize(size);
  t->id_to_bytes_.resize(size);
  for (auto it = vocab.begin(); it != vocab.end(); ++it) {
    int32_t id = it.value().get<int32_t>();
    if (id < 0) return Status::InvalidArgument("tokenizer.json: negative vocab id");
    t->id_to_token_[id] = it.key();
    t->id_to_bytes_[id] = it.key();
    t->token_to_id_[it.key()] = id;
  }
  std::string unk = model.value("unk_token", "[UNK]");
  auto unk_it = t->token_to_id_.find(unk);
  if (unk_it == t->token_to_id_.end()) {
    return Status::InvalidArgument("tokenizer.json: WordPiece unk_token '" + unk +
                                   "' is not in the vocab");
  }
  t->unk_id_ = unk_it->second;
  const json& dec = root.value("decoder", json());
  if (!dec.is_null()) {
    if (dec.value("type", "") != "WordPiece") {
      return Status::NotSupported("tokenizer.json: WordPiece decoder " + dec.dump());
    }
    t->has_decoder_ = true;
    t->decoder_prefix_ = dec.value("prefix", "##");
    t->cleanup_ = dec.value("cleanup", true);
  }
  RETURN_IF_ERROR(t->LoadShared(root));
  return std::unique_ptr<Tokenizer>(std::move(t));
}

std::u32string WordPieceTokenizer::Normalize(std::string_view text) const {
  std::u32string out;
  out.reserve(text.size());
  std::u32string tmp;
  size_t pos = 0;
  while (pos < text.size()) {
    char32_t c = unicode::NextCodePoint(text, &pos);
    if (!has_normalizer_) {
      out.push_back(c);
      continue;
    }
    if (clean_text_) {
      if (c == 0 || c == 0xFFFD || IsBertControl(c)) continue;
      if (IsBertWhitespace(c)) c = ' ';
    }
    bool pad = chinese_chars_ && IsChineseChar(c);
    if (pad) out.push_back(' ');
    tmp.clear();
    if (strip_accents_) {
      std::u32string decomposed;
      unicode::AppendNfd(c, &decomposed);
      for (char32_t d : decomposed) {
        if (!unicode::IsMarkNonspacing(d)) tmp.push_back(d);
      }
    } else {
      tmp.push_back(c);
    }
    for (char32_t d : tmp) {
      if (lowercase_) {
        unicode::AppendLowercase(d, &out);
      } else {
        out.push_back(d);
      }
    }
    if (pad) out.push_back(' ');
  }
  return out;
}

Status WordPieceTokenizer::EncodeSegment(std::string_view text, std::vector<int32_t>* ids) const {
  std::u32string norm = Normalize(text);
  std::string word;
  size_t num_chars = 0;
  auto flush = [&]() {
    if (num_chars > 0) EncodeWord(word, num_chars, ids);
    word.clear();
    num_chars = 0;
  };
  for (char32_t c : norm) {
    if (bert_pre_tokenizer_ && unicode::IsWhiteSpace(c)) {
      flush();
    } else if (bert_pre_tokenizer_ && IsBertPunctuation(c)) {
      flush();
      unicode::AppendUtf8(c, &word);
      num_chars = 1;
      flush();
    } else {
      unicode::AppendUtf8(c, &word);
      ++num_chars;
    }
  }
  flush();
  return Status::OK();
}

void WordPieceTokenizer::EncodeWord(std::string_view word, size_t num_chars,
                                    std::vector<int32_t>* ids) const {
  if (num_chars > max_chars_per_word_) {
    ids->push_back(unk_id_);
    return;
  }
  size_t first = ids->size();
  std::string candidate;
  size_t start = 0;
  while (start < word.size()) {
    size_t end = word.size();
    int32_t found = -1;
    while (end > start) {
      candidate.clear();
      if (start > 0) candidate = prefix_;
      candidate.append(word.substr(start, end - start));
      auto it = token_to_id_.find(candidate);
      if (it != token_to_id_.end()) {
        found = it->second;
        break;
      }
      // Step back one code point.
      do {
        --end;
      } while (end > start && (static_cast<uint8_t>(word[end]) & 0xC0) == 0x80);
    }
    if (found < 0) {
      ids->resize(first);
      ids->push_back(unk_id_);
      return;
    }
    ids->push_back(found);
    start = end;
  }
}

std::string WordPieceTokenizer::Decode(const std::vector<int32_t>& ids, bool skip_special) const {
  std::string out;
  bool first = true;
  for (int32_t id : ids) {
    if (id < 0 || id >= vocab_size()) continue;
    if (skip_special && is_special_[id]) continue;
    std::string token = id_to_token_[id];
    if (!has_decoder_) {
      if (!first) out.push_back(' ');
      out += token;
    } else {
      if (!first) {
        if (token.compare(0, decoder_prefix_.size(), decoder_prefix_) == 0) {
          token.erase(0, decoder_prefix_.size());
        } else {
          token.insert(0, " ");
        }
      }
      if (cleanup_) Cleanup(&token);
      out += token;
    }
    first = false;
  }
  return out;
}

}  // namespace

Result<std::unique_ptr<Tokenizer>> LoadWordPieceTokenizer(const json& root) {
  return WordPieceTokenizer::Load(root);
}

}  // namespace kvkeep
