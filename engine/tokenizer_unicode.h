// Unicode helpers for the tokenizers: UTF-8 coding, the GPT-2 byte<->unicode map, and
// character properties from tables generated out of Python's unicodedata (Unicode 14;
// engine/tokenizer_unicode_tables.cc, written by tests/fixtures/gen_parity.py
// --unicode-tables). Enough for BertNormalizer (clean text, lowercase, strip accents via
// NFD) and for deciding whether a text is already in NFC.
//
// Thread-safety: pure functions over constant tables.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace kvkeep::unicode {

// Decodes the code point starting at s[*pos] and advances *pos. An invalid or truncated
// sequence yields U+FFFD and advances by one byte.
char32_t NextCodePoint(std::string_view s, size_t* pos);
void AppendUtf8(char32_t cp, std::string* out);
bool IsValidUtf8(std::string_view s);
// Number of trailing bytes of s that form an incomplete (but so far valid) UTF-8 sequence,
// 0..3. Used by StreamDecoder to hold bytes back.
size_t IncompleteUtf8Tail(std::string_view s);

// GPT-2's bytes_to_unicode(): byte b <-> a printable code point.
char32_t ByteToUnicode(uint8_t b);
// Returns -1 when cp is not the image of a byte.
int UnicodeToByte(char32_t cp);

// Character properties.
bool IsWhiteSpace(char32_t cp);      // Unicode White_Space (Rust char::is_whitespace)
bool IsOther(char32_t cp);           // general category C* (Cc, Cf, Cs, Co, Cn)
bool IsPunctuation(char32_t cp);     // general category P*
bool IsMarkNonspacing(char32_t cp);  // general category Mn
// False when cp might change under NFC (not NFC_QC=Yes alone, a combining mark, or the
// second half of a canonical composition). A string made only of NFC-stable code points is
// in NFC.
bool IsNfcStable(char32_t cp);

// Appends the full lowercase mapping of cp (per code point, no context: 'Σ' -> 'σ'), as
// Rust's char::to_lowercase.
void AppendLowercase(char32_t cp, std::u32string* out);
// Appends the canonical decomposition (NFD) of one code point, without reordering across
// code points.
void AppendNfd(char32_t cp, std::u32string* out);

namespace internal {
struct CharRange {
  char32_t first;
  char32_t last;
  uint8_t flags;  // 1 white space, 2 other (C*), 4 punctuation (P*), 8 Mn, 16 not NFC-stable
};
struct CharMapping {
  char32_t cp;
  uint32_t offset;  // into the pool
  uint32_t length;
};
extern const CharRange kCharRanges[];
extern const size_t kNumCharRanges;
extern const char32_t kLowerPool[];
extern const CharMapping kLowerMap[];
extern const size_t kNumLowerMap;
extern const char32_t kNfdPool[];
extern const CharMapping kNfdMap[];
extern const size_t kNumNfdMap;
}  // namespace internal

}  // namespace kvkeep::unicode
