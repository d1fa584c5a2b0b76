#include <algorithm>
#include <array>
#include <cstdio>
#include <mutex>

#include "engine/bpe_model.h"
#include "engine/tokenizer_base.h"
#include "engine/tokenizer_regex.h"
#include "engine/tokenizer_unicode.h"

namespace kvkeep {
namespace {

using nlohmann::json;

// HF ByteLevel decoder on one token string: every char mapped back to its byte, or the
// token's own UTF-8 bytes when one of its chars is not the image of a byte.
std::string ByteLevelDecodeToken(std::string_view token) {
  std::string out;
  size_t pos = 0;
  while (pos < token.size()) {
    int b = unicode::UnicodeToByte(unicode::NextCodePoint(token, &pos));
    if (b < 0) return std::string(token);
    out.push_back(static_cast<char>(b));
  }
  return out;
}

struct Merge {
  uint32_t rank;
  int32_t new_id;
};

uint64_t PairKey(int32_t a, int32_t b) {
  return (static_cast<uint64_t>(static_cast<uint32_t>(a)) << 32) | static_cast<uint32_t>(b);
}

// Word -> ids cache, sharded to keep lock contention low. Stops growing when full.
class WordCache {
 public:
  bool Lookup(std::string_view word, std::vector<int32_t>* ids) const {
    Shard& s = shards_[StringHash{}(word) % kShards];
    std::lock_guard<std::mutex> lock(s.mu);
    auto it = s.map.find(word);
    if (it == s.map.end()) return false;
    ids->insert(ids->end(), it->second.begin(), it->second.end());
    return true;
  }
  void Insert(std::string_view word, const int32_t* ids, size_t n) const {
    Shard& s = shards_[StringHash{}(word) % kShards];
    std::lock_guard<std::mutex> lock(s.mu);
    if (s.map.size() >= kCapacityPerShard) return;
    s.map.emplace(std::string(word), std::vector<int32_t>(ids, ids + n));
  }

 private:
  static constexpr size_t kShards = 16;
  static constexpr size_t kCapacityPerShard = 4096;
  struct Shard {
    std::mutex mu;
    StringMap<std::vector<int32_t>> map;
  };
  mutable std::array<Shard, kShards> shards_;
};

class BpeTokenizer final : public TokenizerBase {
 public:
  static Result<std::unique_ptr<Tokenizer>> Load(const json& root);
  std::string Decode(const std::vector<int32_t>& ids, bool skip_special) const override;

 protected:
  Status EncodeSegment(std::string_view text, std::vector<int32_t>* ids) const override;

 private:
  struct PreStep {
    std::unique_ptr<SplitRegex> re;
    bool removed = false;  // "Removed" behaviour: matches are dropped
  };

  Status LoadNormalizer(const json& n);
  Status LoadPreTokenizer(const json& p);
  Status LoadModel(const json& model);
  void EncodeWord(std::string_view word, std::vector<int32_t>* ids) const;

  bool nfc_ = false;
  bool byte_level_ = false;
  bool add_prefix_space_ = false;
  bool ignore_merges_ = false;
  std::vector<PreStep> steps_;
  StringMap<int32_t> bytes_to_id_;  // decoded bytes of model vocab entries -> id
  std::array<int32_t, 256> byte_id_{};
  std::unordered_map<uint64_t, Merge> merges_;
  WordCache cache_;
};

Status BpeTokenizer::LoadNormalizer(const json& n) {
  if (n.is_null()) return Status::OK();
  std::string type = n.value("type", "");
  if (type == "NFC") {
    nfc_ = true;
    return Status::OK();
  }
  if (type == "Sequence") {
    for (const json& s : n.value("normalizers", json::array())) RETURN_IF_ERROR(LoadNormalizer(s));
    return Status::OK();
  }
  return Status::NotSupported("tokenizer.json: BPE normalizer type '" + type + "'");
}

Status BpeTokenizer::LoadPreTokenizer(const json& p) {
  if (p.is_null()) return Status::OK();
  std::string type = p.value("type", "");
  if (type == "Sequence") {
    for (const json& s : p.value("pretokenizers", json::array())) {
      RETURN_IF_ERROR(LoadPreTokenizer(s));
    }
    return Status::OK();
  }
  if (type == "ByteLevel") {
    if (byte_level_) return Status::NotSupported("tokenizer.json: two ByteLevel pre-tokenizers");
    byte_level_ = true;
    if (p.value("add_prefix_space", false)) {
      if (!steps_.empty()) {
        return Status::NotSupported("tokenizer.json: ByteLevel add_prefix_space after a Split");
      }
      add_prefix_space_ = true;
    }
    if (p.value("use_regex", true)) {
      PreStep step;
      ASSIGN_OR_RETURN(step.re, SplitRegex::Compile(kGpt2SplitPattern));
      steps_.push_back(std::move(step));
    }
    return Status::OK();
  }
  if (type == "Split") {
    if (byte_level_) return Status::NotSupported("tokenizer.json: Split after ByteLevel");
    if (p.value("invert", false)) return Status::NotSupported("tokenizer.json: inverted Split");
    std::string behavior = p.value("behavior", "");
    if (behavior != "Isolated" && behavior != "Removed") {
      return Status::NotSupported("tokenizer.json: Split behavior '" + behavior + "'");
    }
    const json& pattern = p.at("pattern");
    std::string regex;
    if (pattern.contains("Regex")) {
      regex = pattern.at("Regex").get<std::string>();
    } else {
      regex = "\\Q" + pattern.at("String").get<std::string>() + "\\E";
    }
    PreStep step;
    ASSIGN_OR_RETURN(step.re, SplitRegex::Compile(regex));
    step.removed = behavior == "Removed";
    steps_.push_back(std::move(step));
    return Status::OK();
  }
  return Status::NotSupported("tokenizer.json: BPE pre_tokenizer type '" + type + "'");
}

Status BpeTokenizer::LoadModel(const json& model) {
  if (!model.value("dropout", json()).is_null() && model.at("dropout").get<double>() > 0) {
    return Status::NotSupported("tokenizer.json: BPE dropout");
  }
  for (const char* key : {"continuing_subword_prefix", "end_of_word_suffix"}) {
    auto it = model.find(key);
    if (it != model.end() && it->is_string() && !it->get<std::string>().empty()) {
      return Status::NotSupported(std::string("tokenizer.json: BPE ") + key);
    }
  }
  if (model.value("byte_fallback", false)) {
    return Status::NotSupported("tokenizer.json: BPE byte_fallback (sentencepiece-style BPE)");
  }
  ignore_merges_ = model.value("ignore_merges", false);
  const json& vocab = model.at("vocab");
  int32_t size = 0;
  for (auto it = vocab.begin(); it != vocab.end(); ++it) {
    size = std::max(size, it.value().get<int32_t>() + 1);
  }
  id_to_token_.resize(size);
  id_to_bytes_.resize(size);
  byte_id_.fill(-1);
  for (auto it = vocab.begin(); it != vocab.end(); ++it) {
    int32_t id = it.value().get<int32_t>();
    if (id < 0) return Status::InvalidArgument("tokenizer.json: negative vocab id");
    id_to_token_[id] = it.key();
    token_to_id_[it.key()] = id;
    std::string bytes = ByteLevelDecodeToken(it.key());
    if (bytes.size() == 1) byte_id_[static_cast<uint8_t>(bytes[0])] = id;
    bytes_to_id_[bytes] = id;
    id_to_bytes_[id] = std::move(bytes);
  }
  uint32_t rank = 0;
  for (const json& m : model.value("merges", json::array())) {
    std::string a, b;
    if (m.is_string()) {
      const std::string& s = m.get_ref<const std::string&>();
      size_t space = s.find(' ');
      if (space == std::string::npos || s.find(' ', space + 1) != std::string::npos) {
        return Status::InvalidArgument("tokenizer.json: malformed merge '" + s + "'");
      }
      a = s.substr(0, space);
      b = s.substr(space + 1);
    } else {
      a = m.at(0).get<std::string>();
      b = m.at(1).get<std::string>();
    }
    auto ia = token_to_id_.find(a);
    auto ib = token_to_id_.find(b);
    auto inew = token_to_id_.find(a + b);
    if (ia == token_to_id_.end() || ib == token_to_id_.end() || inew == token_to_id_.end()) {
      return Status::InvalidArgument("tokenizer.json: merge '" + a + " " + b +
                                     "' uses a token that is not in the vocab");
    }
    merges_.insert_or_assign(PairKey(ia->second, ib->second), Merge{rank++, inew->second});
  }
  return Status::OK();
}

Result<std::unique_ptr<Tokenizer>> BpeTokenizer::Load(const json& root) {
  std::unique_ptr<BpeTokenizer> t(new BpeTokenizer());
  RETURN_IF_ERROR(t->LoadNormalizer(root.value("normalizer", json())));
  RETURN_IF_ERROR(t->LoadPreTokenizer(root.value("pre_tokenizer", json())));
  if (!t->byte_level_) {
    return Status::NotSupported("tokenizer.json: BPE without a ByteLevel pre-tokenizer");
  }
  const json& decoder = root.value("decoder", json());
  if (decoder.is_null() || decoder.value("type", "") != "ByteLevel") {
    return Status::NotSupported("tokenizer.json: BPE decoder other than ByteLevel: " +
                                decoder.dump());
  }
  RETURN_IF_ERROR(t->LoadModel(root.at("model")));
  RETURN_IF_ERROR(t->LoadShared(root));
  for (size_t id = 0; id < t->id_to_token_.size(); ++id) {
    t->id_to_bytes_[id] = ByteLevelDecodeToken(t->id_to_token_[id]);
  }
  return std::unique_ptr<Tokenizer>(std::move(t));
}

Status BpeTokenizer::EncodeSegment(std::string_view text, std::vector<int32_t>* ids) const {
  if (nfc_) {
    size_t pos = 0;
    while (pos < text.size()) {
      if (static_cast<uint8_t>(text[pos]) < 0x80) {
        ++pos;
        continue;
      }
      char32_t cp = unicode::NextCodePoint(text, &pos);
      if (!unicode::IsNfcStable(cp)) {
        char buf[16];
        std::snprintf(buf, sizeof(buf), "U+%04X", static_cast<unsigned>(cp));
        return Status::NotSupported(std::string("NFC normalizer: text holds ") + buf +
                                    ", which NFC may change; only NFC-stable text is supported");
      }
    }
  }
  std::string prefixed;
  if (add_prefix_space_ && !text.empty() && text[0] != ' ') {
    prefixed.reserve(text.size() + 1);
    prefixed.push_back(' ');
    prefixed.append(text);
    text = prefixed;
  }
  if (steps_.empty()) {
    EncodeWord(text, ids);
    return Status::OK();
  }
  // Run the split steps; the last one feeds BPE directly.
  std::vector<std::pair<size_t, size_t>> pieces{{0, text.size()}};
  std::vector<std::pair<size_t, size_t>> next;
  for (size_t s = 0; s < steps_.size(); ++s) {
    const PreStep& step = steps_[s];
    bool last = s + 1 == steps_.size();
    next.clear();
    for (const auto& piece : pieces) {
      // Plain names, not a structured binding: the lambda captures them (clang 14).
      const size_t pb = piece.first, pe = piece.second;
      step.re->ForEachPiece(text.substr(pb, pe - pb), [&](size_t b, size_t e, bool is_match) {
        if (is_match && step.removed) return;
        if (last) {
          EncodeWord(text.substr(pb + b, e - b), ids);
        } else {
          next.emplace_back(pb + b, pb + e);
        }
      });
    }
    pieces.swap(next);
  }
  return Status::OK();
}

void BpeTokenizer::EncodeWord(std::string_view word, std::vector<int32_t>* ids) const {
  if (word.empty()) return;
  if (ignore_merges_ || word.size() == 1) {
    auto it = bytes_to_id_.find(word);
    if (it != bytes_to_id_.end()) {
      ids->push_back(it->second);
      return;
    }
  }
  constexpr size_t kMaxCachedBytes = 64;
  if (word.size() <= kMaxCachedBytes && cache_.Lookup(word, ids)) return;

  struct Symbol {
    int32_t id;
    int32_t prev;
    int32_t next;
  };
  struct Candidate {
    uint32_t rank;
    int32_t pos;
    int32_t left;
    int32_t right;
    int32_t new_id;
    bool operator>(const Candidate& o) const {
      return rank != o.rank ? rank > o.rank : pos > o.pos;
    }
  };
  const int32_t n = static_cast<int32_t>(word.size());
  std::vector<Symbol> syms(n);
  for (int32_t i = 0; i < n; ++i) {
    // Every byte has a token in a byte-level vocabulary; a vocabulary missing one drops it,
    // as HF does for an unknown symbol without unk_token.
    syms[i] = Symbol{byte_id_[static_cast<uint8_t>(word[i])], i - 1, i + 1 < n ? i + 1 : -1};
  }
  std::vector<Candidate> heap;
  auto push_pair = [&](int32_t pos) {
    int32_t nx = syms[pos].next;
    if (nx < 0 || syms[pos].id < 0 || syms[nx].id < 0) return;
    auto it = merges_.find(PairKey(syms[pos].id, syms[nx].id));
    if (it == merges_.end()) return;
    heap.push_back({it->second.rank, pos, syms[pos].id, syms[nx].id, it->second.new_id});
    std::push_heap(heap.begin(), heap.end(), std::greater<>());
  };
  for (int32_t i = 0; i + 1 < n; ++i) push_pair(i);
  while (!heap.empty()) {
    std::pop_heap(heap.begin(), heap.end(), std::greater<>());
    Candidate c = heap.back();
    heap.pop_back();
    Symbol& left = syms[c.pos];
    if (left.id != c.left || left.next < 0 || syms[left.next].id != c.right) continue;
    int32_t removed = left.next;
    left.id = c.new_id;
    left.next = syms[removed].next;
    if (left.next >= 0) syms[left.next].prev = c.pos;
    syms[removed].id = -2;  // dead
    if (left.prev >= 0) push_pair(left.prev);
    push_pair(c.pos);
  }
  size_t first = ids->size();
  for (int32_t i = 0; i >= 0 && i < n; i = syms[i].next) {
    if (syms[i].id >= 0) ids->push_back(syms[i].id);
  }
  if (word.size() <= kMaxCachedBytes) cache_.Insert(word, ids->data() + first, ids->size() - first);
}

std::string BpeTokenizer::Decode(const std::vector<int32_t>& ids, bool skip_special) const {
  std::string out;
  for (int32_t id : ids) {
    if (id < 0 || id >= vocab_size()) continue;
    if (skip_special && is_special_[id]) continue;
    out += id_to_bytes_[id];
  }
  return out;
}

}  // namespace

Result<std::unique_ptr<Tokenizer>> LoadBpeTokenizer(const json& root) {
  return BpeTokenizer::Load(root);
}

}  // namespace kvkeep
