#include "engine/tokenizer_base.h"

#include <algorithm>
#include <cctype>
#include <cstring>

#include "engine/tokenizer_unicode.h"

namespace kvkeep {
namespace {

using nlohmann::json;

// Code point ending just before byte `end` (UTF-8 aware), or 0 at the start.
char32_t CodePointBefore(std::string_view s, size_t end) {
  if (end == 0) return 0;
  size_t start = end - 1;
  while (start > 0 && (static_cast<uint8_t>(s[start]) & 0xC0) == 0x80 && end - start < 4) --start;
  size_t pos = start;
  return unicode::NextCodePoint(s.substr(0, end), &pos);
}

bool IsWordChar(char32_t cp) {
  if (cp < 0x80) return std::isalnum(static_cast<int>(cp)) || cp == '_';
  return !unicode::IsWhiteSpace(cp) && !unicode::IsPunctuation(cp) && !unicode::IsOther(cp);
}

}  // namespace

Result<int32_t> JsonInt(const json& j, const char* key) {
  auto it = j.find(key);
  if (it == j.end() || !it->is_number_integer()) {
    return Status::InvalidArgument(std::string("tokenizer.json: missing integer '") + key + "'");
  }
  return it->get<int32_t>();
}

Result<std::vector<int32_t>> TokenizerBase::Encode(std::string_view text,
                                                   bool parse_special) const {
  std::vector<int32_t> ids;
  ids.reserve(text.size() / 3 + 4);
  size_t segment_start = 0;
  size_t begin = 0;
  size_t end = 0;
  const AddedToken* token = nullptr;
  while (FindAdded(text, segment_start, parse_special, &begin, &end, &token)) {
    if (begin > segment_start) {
      RETURN_IF_ERROR(EncodeSegment(text.substr(segment_start, begin - segment_start), &ids));
    }
    ids.push_back(token->id);
    segment_start = end;
  }
  if (segment_start < text.size()) RETURN_IF_ERROR(EncodeSegment(text.substr(segment_start), &ids));
  return ids;
}

Result<std::vector<int32_t>> TokenizerBase::EncodeWithOptions(std::string_view text,
                                                              const EncodeOptions& options) const {
  ASSIGN_OR_RETURN(std::vector<int32_t> ids, Encode(text, options.parse_special));
  if (!options.add_special_tokens) return ids;
  std::vector<int32_t> out = prefix_ids_;
  out.insert(out.end(), ids.begin(), ids.end());
  out.insert(out.end(), suffix_ids_.begin(), suffix_ids_.end());
  return out;
}

bool TokenizerBase::FindAdded(std::string_view text, size_t from, bool parse_special, size_t* begin,
                              size_t* end, const AddedToken** token) const {
  if (added_.empty()) return false;
  for (size_t i = from; i < text.size(); ++i) {
    auto first = static_cast<uint8_t>(text[i]);
    for (uint32_t k = first_byte_begin_[first]; k < first_byte_begin_[first + 1]; ++k) {
      const AddedToken& t = added_[k];
      if (t.special && !parse_special) continue;
      if (t.content.size() > text.size() - i ||
          std::memcmp(text.data() + i, t.content.data(), t.content.size()) != 0) {
        continue;
      }
      size_t b = i;
      size_t e = i + t.content.size();
      if (t.single_word) {
        if (IsWordChar(CodePointBefore(text, b))) continue;
        size_t pos = e;
        if (e < text.size() && IsWordChar(unicode::NextCodePoint(text, &pos))) continue;
      }
      if (t.lstrip) {
        while (b > from) {
          char32_t cp = CodePointBefore(text, b);
          if (!unicode::IsWhiteSpace(cp)) break;
          size_t len = 1;
          while ((static_cast<uint8_t>(text[b - len]) & 0xC0) == 0x80) ++len;
          b -= len;
        }
      }
      if (t.rstrip) {
        while (e < text.size()) {
          size_t pos = e;
          if (!unicode::IsWhiteSpace(unicode::NextCodePoint(text, &pos))) break;
          e = pos;
        }
      }
      *begin = b;
      *end = e;
      *token = &t;
      return true;
    }
  }
  return false;
}

std::string TokenizerBase::TokenBytes(int32_t id) const {
  if (id < 0 || id >= vocab_size()) return {};
  return id_to_bytes_[id];
}

std::optional<int32_t> TokenizerBase::TokenToId(std::string_view token) const {
  auto it = token_to_id_.find(token);
  if (it == token_to_id_.end()) return std::nullopt;
  return it->second;
}

bool TokenizerBase::IsSpecial(int32_t id) const {
  return id >= 0 && id < vocab_size() && is_special_[id] != 0;
}

Status TokenizerBase::LoadShared(const json& root) {
  auto added = root.find("added_tokens");
  if (added != root.end() && added->is_array()) {
    for (const json& a : *added) {
      AddedToken t;
      ASSIGN_OR_RETURN(t.id, JsonInt(a, "id"));
      if (t.id < 0) return Status::InvalidArgument("tokenizer.json: negative added token id");
      t.content = a.value("content", "");
      if (t.content.empty()) return Status::InvalidArgument("tokenizer.json: empty added token");
      t.special = a.value("special", false);
      t.lstrip = a.value("lstrip", false);
      t.rstrip = a.value("rstrip", false);
      t.single_word = a.value("single_word", false);
      added_.push_back(t);
    }
  }
  int32_t size = static_cast<int32_t>(id_to_token_.size());
  for (const AddedToken& t : added_) size = std::max(size, t.id + 1);
  id_to_token_.resize(size);
  id_to_bytes_.resize(size);
  is_special_.resize(size, 0);
  for (const AddedToken& t : added_) {
    // An added token that is also in the model vocabulary keeps the model's decoded bytes
    // only when it is the same string; otherwise its content is its text.
    if (id_to_token_[t.id] != t.content) id_to_bytes_[t.id] = t.content;
    id_to_token_[t.id] = t.content;
    token_to_id_[t.content] = t.id;
    is_special_[t.id] = t.special ? 1 : 0;
  }
  std::stable_sort(added_.begin(), added_.end(), [](const AddedToken& a, const AddedToken& b) {
    auto fa = static_cast<uint8_t>(a.content[0]);
    auto fb = static_cast<uint8_t>(b.content[0]);
    if (fa != fb) return fa < fb;
    return a.content.size() > b.content.size();
  });
  first_byte_begin_.assign(257, 0);
  for (const AddedToken& t : added_) ++first_byte_begin_[static_cast<uint8_t>(t.content[0]) + 1];
  for (int b = 0; b < 256; ++b) first_byte_begin_[b + 1] += first_byte_begin_[b];

  auto pp = root.find("post_processor");
  if (pp != root.end() && !pp->is_null()) RETURN_IF_ERROR(LoadPostProcessor(*pp));
  return Status::OK();
}

Status TokenizerBase::LoadPostProcessor(const json& pp) {
  std::string type = pp.value("type", "");
  if (type == "ByteLevel") return Status::OK();  // offsets only
  if (type == "Sequence") {
    for (const json& p : pp.value("processors", json::array()))
      RETURN_IF_ERROR(LoadPostProcessor(p));
    return Status::OK();
  }
  if (type == "BertProcessing" || type == "RobertaProcessing") {
    const json& cls = pp.at("cls");
    const json& sep = pp.at("sep");
    prefix_ids_.push_back(cls.at(1).get<int32_t>());
    suffix_ids_.push_back(sep.at(1).get<int32_t>());
    return Status::OK();
  }
  if (type == "TemplateProcessing") {
    const json& specials = pp.value("special_tokens", json::object());
    bool seen_sequence = false;
    for (const json& item : pp.value("single", json::array())) {
      if (item.contains("Sequence")) {
        seen_sequence = true;
        continue;
      }
      std::string name = item.at("SpecialToken").at("id").get<std::string>();
      auto it = specials.find(name);
      if (it == specials.end()) {
        return Status::InvalidArgument("tokenizer.json: post_processor names unknown token " +
                                       name);
      }
      for (const json& id : it->at("ids")) {
        (seen_sequence ? suffix_ids_ : prefix_ids_).push_back(id.get<int32_t>());
      }
    }
    return Status::OK();
  }
  return Status::NotSupported("tokenizer.json: post_processor type '" + type + "'");
}

}  // namespace kvkeep
