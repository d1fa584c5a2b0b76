// Tokenizer unit tests on hand-built tokenizer.json files and the synthetic model's
// tokenizer. Parity with Hugging Face tokenizers on trained vocabularies lives in
// parity_test.cc.
#include "engine/tokenizer.h"

#include <gtest/gtest.h>

#include <random>

#include <nlohmann/json.hpp>

#include "engine/synthetic_model.h"
#include "tests/testlib/test_util.h"

namespace kvkeep {
namespace {

using nlohmann::json;

// GPT-2's bytes_to_unicode, written out independently of the engine's copy.
std::string ByteSymbol(int b) {
  static const std::vector<int> kImage = [] {
    std::vector<int> image(256);
    int n = 0;
    for (int i = 0; i < 256; ++i) {
      bool keep = (i >= '!' && i <= '~') || (i >= 0xA1 && i <= 0xAC) || i >= 0xAE;
      image[i] = keep ? i : 256 + n++;
    }
    return image;
  }();
  int cp = kImage[b];
  std::string s;
  if (cp < 0x80) {
    s.push_back(static_cast<char>(cp));
  } else {
    s.push_back(static_cast<char>(0xC0 | (cp >> 6)));
    s.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  }
  return s;
}

std::unique_ptr<Tokenizer> LoadFromString(const std::string& contents) {
  testing::TempDir dir;
  EXPECT_TRUE(DefaultEnv()->WriteFileAtomic(dir.File("tokenizer.json"), contents).ok());
  auto t = LoadTokenizer(DefaultEnv(), dir.path());
  EXPECT_TRUE(t.ok()) << t.status().ToString();
  return t.ok() ? std::move(t).value() : nullptr;
}

Status LoadStatus(const json& j) {
  testing::TempDir dir;
  EXPECT_TRUE(DefaultEnv()->WriteFileAtomic(dir.File("tokenizer.json"), j.dump()).ok());
  return LoadTokenizer(DefaultEnv(), dir.File("tokenizer.json")).status();
}

std::vector<int32_t> Bytes(std::string_view s) {
  std::vector<int32_t> ids;
  for (char c : s) ids.push_back(static_cast<uint8_t>(c));
  return ids;
}

TEST(SyntheticTokenizer, EveryByteIsItsOwnId) {
  auto t = LoadFromString(SyntheticTokenizerJson());
  ASSERT_NE(t, nullptr);
  EXPECT_EQ(t->vocab_size(), kSyntheticTokenizerSize);
  std::string all;
  for (int b = 0; b < 256; ++b) all.push_back(static_cast<char>(b));
  auto ids = t->Encode(all);
  ASSERT_TRUE(ids.ok()) << ids.status().ToString();
  EXPECT_EQ(*ids, Bytes(all));
  EXPECT_EQ(t->Decode(*ids), all);
  for (int b = 0; b < 256; ++b) EXPECT_EQ(t->TokenBytes(b), std::string(1, static_cast<char>(b)));
  EXPECT_EQ(t->TokenToId(ByteSymbol(' ')), ' ');
}

TEST(SyntheticTokenizer, RandomTextRoundTrips) {
  auto t = LoadFromString(SyntheticTokenizerJson());
  ASSERT_NE(t, nullptr);
  std::mt19937_64 rng(testing::TestSeed());
  for (int iter = 0; iter < 50; ++iter) {
    std::string text(rng() % 300, '\0');
    for (char& c : text) c = static_cast<char>(rng() % 256);
    auto ids = t->Encode(text, /*parse_special=*/false);
    ASSERT_TRUE(ids.ok());
    EXPECT_EQ(*ids, Bytes(text));
    EXPECT_EQ(t->Decode(*ids), text);
  }
}

TEST(SyntheticTokenizer, SpecialTokensMatchLiterally) {
  auto t = LoadFromString(SyntheticTokenizerJson());
  ASSERT_NE(t, nullptr);
  const std::string text = "<|im_start|>user\nhé<|im_end|>\n<|im_start|";
  std::vector<int32_t> expected = {kSyntheticImStartId};
  for (int32_t id : Bytes("user\nhé")) expected.push_back(id);
  expected.push_back(kSyntheticImEndId);
  for (int32_t id : Bytes("\n<|im_start|")) expected.push_back(id);
  auto ids = t->Encode(text);
  ASSERT_TRUE(ids.ok());
  EXPECT_EQ(*ids, expected);
  EXPECT_EQ(t->Decode(*ids), text);
  EXPECT_EQ(t->Decode(*ids, /*skip_special=*/true), "user\nhé\n<|im_start|");
  EXPECT_TRUE(t->IsSpecial(kSyntheticImEndId));
  EXPECT_FALSE(t->IsSpecial('a'));
  EXPECT_EQ(t->TokenToId("<|begin_of_text|>"), kSyntheticBeginOfTextId);
  EXPECT_EQ(t->TokenToId("<|nope|>"), std::nullopt);

  auto raw = t->Encode(text, /*parse_special=*/false);
  ASSERT_TRUE(raw.ok());
  EXPECT_EQ(*raw, Bytes(text));
}

TEST(StreamDecoder, NeverSplitsAMultiByteCharacter) {
  auto t = LoadFromString(SyntheticTokenizerJson());
  ASSERT_NE(t, nullptr);
  const std::string text = "a\xC3\xA9 \xE4\xB8\xAD\xF0\x9F\x98\x80!";  // aé 中😀!
  StreamDecoder decoder(t.get());
  std::vector<std::string> pieces;
  for (int32_t id : Bytes(text)) pieces.push_back(decoder.Push(id));
  std::string joined;
  for (const std::string& p : pieces) joined += p;
  EXPECT_EQ(joined, text);
  EXPECT_EQ(decoder.Flush(), "");
  // Pieces are exactly the characters, each complete.
  std::vector<std::string> expected = {"a", "", "\xC3\xA9",         " ", "", "", "\xE4\xB8\xAD", "",
                                       "",  "", "\xF0\x9F\x98\x80", "!"};
  EXPECT_EQ(pieces, expected);
  // A truncated sequence is held back and handed out by Flush.
  StreamDecoder d2(t.get());
  EXPECT_EQ(d2.Push(0xE4), "");
  EXPECT_EQ(d2.Push(0xB8), "");
  EXPECT_EQ(d2.Flush(), "\xE4\xB8");
}

// A hand-made byte-level BPE: merges are applied by rank, not left to right.
json SmallBpe(bool ignore_merges) {
  json vocab = json::object();
  int id = 0;
  for (int b = 0; b < 256; ++b) vocab[ByteSymbol(b)] = id++;
  for (const char* t : {"ab", "bc", "abc", "Ġa", "cd"}) vocab[t] = id++;
  json j = {
      {"added_tokens", json::array({{{"id", id},
                                     {"content", "<eos>"},
                                     {"special", true},
                                     {"lstrip", false},
                                     {"rstrip", false},
                                     {"single_word", false},
                                     {"normalized", false}}})},
      {"normalizer", nullptr},
      {"pre_tokenizer", {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"use_regex", true}}},
      {"post_processor", nullptr},
      {"decoder", {{"type", "ByteLevel"}}},
      {"model",
       {{"type", "BPE"},
        {"ignore_merges", ignore_merges},
        {"vocab", vocab},
        {"merges", json::array({"b c", json::array({"a", "b"}), "a bc", "Ġ a", "c d"})}}}};
  return j;
}

TEST(BpeTokenizer, MergesFollowRank) {
  auto t = LoadFromString(SmallBpe(false).dump());
  ASSERT_NE(t, nullptr);
  const int32_t ab = 256, bc = 257, abc = 258, space_a = 259, cd = 260, eos = 261;
  // "abcd": b c (rank 0) first -> a bc d; then a bc (rank 2) -> abc d. "c d" never fires.
  EXPECT_EQ(*t->Encode("abcd"), (std::vector<int32_t>{abc, 'd'}));
  // "abab": no "b c"; "a b" merges both -> ab ab.
  EXPECT_EQ(*t->Encode("abab"), (std::vector<int32_t>{ab, ab}));
  // " a" is one pre-token (GPT-2 regex) and merges; "cd" too.
  EXPECT_EQ(*t->Encode("cd a"), (std::vector<int32_t>{cd, space_a}));
  EXPECT_EQ(*t->Encode("bc<eos>"), (std::vector<int32_t>{bc, eos}));
  EXPECT_EQ(t->Decode({abc, 'd', space_a, eos}), "abcd a<eos>");
  EXPECT_EQ(t->Decode({abc, eos}, /*skip_special=*/true), "abc");
}

TEST(BpeTokenizer, IgnoreMergesTakesWholeWordFromVocab) {
  // "bcd" is in the vocab but no merge reaches it ("b c" has rank 0 -> bc d). With
  // ignore_merges the whole pre-token wins; without it the merges decide.
  json j = SmallBpe(true);
  j["model"]["vocab"]["bcd"] = 300;
  auto t = LoadFromString(j.dump());
  ASSERT_NE(t, nullptr);
  EXPECT_EQ(*t->Encode("bcd"), (std::vector<int32_t>{300}));
  j["model"]["ignore_merges"] = false;
  auto t2 = LoadFromString(j.dump());
  ASSERT_NE(t2, nullptr);
  EXPECT_EQ(*t2->Encode("bcd"), (std::vector<int32_t>{257, 'd'}));
}

TEST(BpeTokenizer, AddedTokenStripAndSingleWord) {
  json j = SmallBpe(false);
  j["added_tokens"].push_back({{"id", 270},
                               {"content", "<mask>"},
                               {"special", true},
                               {"lstrip", true},
                               {"rstrip", true},
                               {"single_word", false}});
  j["added_tokens"].push_back({{"id", 271},
                               {"content", "xy"},
                               {"special", false},
                               {"lstrip", false},
                               {"rstrip", false},
                               {"single_word", true}});
  auto t = LoadFromString(j.dump());
  ASSERT_NE(t, nullptr);
  EXPECT_EQ(*t->Encode("d  <mask>  d"), (std::vector<int32_t>{'d', 270, 'd'}));
  EXPECT_EQ(*t->Encode("d xy d"), (std::vector<int32_t>{'d', ' ', 271, ' ', 'd'}));
  EXPECT_EQ(*t->Encode("dxy"), (std::vector<int32_t>{'d', 'x', 'y'}));
  // Non-special added tokens still match when special parsing is off.
  EXPECT_EQ(*t->Encode("xy<mask>", /*parse_special=*/false),
            (std::vector<int32_t>{271, '<', 'm', 'a', 's', 'k', '>'}));
}

TEST(BpeTokenizer, RefusesWhatItDoesNotImplement) {
  json j = SmallBpe(false);
  j["model"]["byte_fallback"] = true;
  EXPECT_EQ(LoadStatus(j).code(), StatusCode::kNotSupported);
  j = SmallBpe(false);
  j["normalizer"] = {{"type", "NFKC"}};
  EXPECT_EQ(LoadStatus(j).code(), StatusCode::kNotSupported);
  j = SmallBpe(false);
  j["pre_tokenizer"] = {{"type", "Metaspace"}};
  EXPECT_EQ(LoadStatus(j).code(), StatusCode::kNotSupported);
  j = SmallBpe(false);
  j["model"]["type"] = "Unigram";
  EXPECT_EQ(LoadStatus(j).code(), StatusCode::kNotSupported);
  j = SmallBpe(false);
  j["model"]["merges"].push_back("a zz");
  EXPECT_EQ(LoadStatus(j).code(), StatusCode::kInvalidArgument);
  testing::TempDir dir;
  ASSERT_TRUE(DefaultEnv()->WriteFileAtomic(dir.File("tokenizer.json"), "{not json").ok());
  EXPECT_EQ(LoadTokenizer(DefaultEnv(), dir.path()).status().code(), StatusCode::kInvalidArgument);
  EXPECT_FALSE(LoadTokenizer(DefaultEnv(), dir.File("missing")).ok());
}

TEST(BpeTokenizer, NfcNormalizerRefusesTextNfcWouldChange) {
  json j = SmallBpe(false);
  j["normalizer"] = {{"type", "NFC"}};
  auto t = LoadFromString(j.dump());
  ASSERT_NE(t, nullptr);
  EXPECT_TRUE(t->Encode("caf\xC3\xA9 \xE4\xB8\xAD").ok());  // precomposed é, CJK: stable
  auto decomposed = t->Encode("cafe\xCC\x81");              // e + U+0301
  EXPECT_EQ(decomposed.status().code(), StatusCode::kNotSupported);
}

TEST(WordPieceTokenizer, BertBasics) {
  json vocab = json::object();
  int id = 0;
  for (const char* t : {"[PAD]", "[UNK]", "[CLS]", "[SEP]", "hello", "world", "un", "##aff",
                        "##able", ",", "!", "cafe", "中", "a"}) {
    vocab[t] = id++;
  }
  json added = json::array();
  for (const char* t : {"[PAD]", "[UNK]", "[CLS]", "[SEP]"}) {
    added.push_back({{"id", vocab[t]}, {"content", t}, {"special", true}});
  }
  json j = {{"added_tokens", added},
            {"normalizer",
             {{"type", "BertNormalizer"},
              {"clean_text", true},
              {"handle_chinese_chars", true},
              {"strip_accents", nullptr},
              {"lowercase", true}}},
            {"pre_tokenizer", {{"type", "BertPreTokenizer"}}},
            {"post_processor",
             {{"type", "BertProcessing"},
              {"sep", json::array({"[SEP]", 3})},
              {"cls", json::array({"[CLS]", 2})}}},
            {"decoder", {{"type", "WordPiece"}, {"prefix", "##"}, {"cleanup", true}}},
            {"model",
             {{"type", "WordPiece"},
              {"unk_token", "[UNK]"},
              {"continuing_subword_prefix", "##"},
              {"max_input_chars_per_word", 10},
              {"vocab", vocab}}}};
  auto t = LoadFromString(j.dump());
  ASSERT_NE(t, nullptr);
  // Lowercase, accents stripped (É -> e), CJK isolated, punctuation split, unknown -> [UNK],
  // too long -> [UNK].
  auto ids = t->Encode("Hello,\tWORLD! Unaffable CAFÉ中a zzz aaaaaaaaaaa");
  ASSERT_TRUE(ids.ok());
  EXPECT_EQ(*ids, (std::vector<int32_t>{4, 9, 5, 10, 6, 7, 8, 11, 12, 13, 1, 1}));
  auto with = t->EncodeWithOptions("hello", {.parse_special = true, .add_special_tokens = true});
  EXPECT_EQ(*with, (std::vector<int32_t>{2, 4, 3}));
  EXPECT_EQ(t->Decode({2, 4, 9, 5, 10, 6, 7, 8, 3}, /*skip_special=*/true),
            "hello, world! unaffable");
}

}  // namespace
}  // namespace kvkeep
