#include "engine/tokenizer_unicode.h"

#include <algorithm>
#include <array>

namespace kvkeep::unicode {
namespace {

using internal::CharMapping;
using internal::CharRange;

uint8_t Flags(char32_t cp) {
  const CharRange* begin = internal::kCharRanges;
  const CharRange* end = begin + internal::kNumCharRanges;
  const CharRange* it =
      std::upper_bound(begin, end, cp, [](char32_t v, const CharRange& r) { return v < r.first; });
  if (it == begin) return 0;
  --it;
  return cp <= it->last ? it->flags : 0;
}

const CharMapping* FindMapping(const CharMapping* map, size_t n, char32_t cp) {
  const CharMapping* it =
      std::lower_bound(map, map + n, cp, [](const CharMapping& m, char32_t v) { return m.cp < v; });
  return (it != map + n && it->cp == cp) ? it : nullptr;
}

struct ByteMaps {
  std::array<char32_t, 256> to_unicode{};
  std::array<int16_t, 324> to_byte{};  // images are < 324
  ByteMaps() {
    to_byte.fill(-1);
    int n = 0;
    for (int b = 0; b < 256; ++b) {
      bool printable = (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE);
      to_unicode[b] = printable ? static_cast<char32_t>(b) : static_cast<char32_t>(256 + n++);
      to_byte[to_unicode[b]] = static_cast<int16_t>(b);
    }
  }
};

const ByteMaps& Maps() {
  static const ByteMaps maps;
  return maps;
}

}  // namespace

char32_t NextCodePoint(std::string_view s, size_t* pos) {
  const auto* p = reinterpret_cast<const uint8_t*>(s.data()) + *pos;
  size_t left = s.size() - *pos;
  uint8_t c = p[0];
  if (c < 0x80) {
    *pos += 1;
    return c;
  }
  int len = 0;
  char32_t cp = 0;
  char32_t min = 0;
  if ((c & 0xE0) == 0xC0) {
    len = 2, cp = c & 0x1F, min = 0x80;
  } else if ((c & 0xF0) == 0xE0) {
    len = 3, cp = c & 0x0F, min = 0x800;
  } else if ((c & 0xF8) == 0xF0) {
    len = 4, cp = c & 0x07, min = 0x10000;
  }
  if (len == 0 || static_cast<size_t>(len) > left) {
    *pos += 1;
    return 0xFFFD;
  }
  for (int i = 1; i < len; ++i) {
    if ((p[i] & 0xC0) != 0x80) {
      *pos += 1;
      return 0xFFFD;
    }
    cp = (cp << 6) | (p[i] & 0x3F);
  }
  if (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) {
    *pos += 1;
    return 0xFFFD;
  }
  *pos += len;
  return cp;
}

void AppendUtf8(char32_t cp, std::string* out) {
  if (cp < 0x80) {
    out->push_back(static_cast<char>(cp));
  } else if (cp < 0x800) {
    out->push_back(static_cast<char>(0xC0 | (cp >> 6)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else if (cp < 0x10000) {
    out->push_back(static_cast<char>(0xE0 | (cp >> 12)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else {
    out->push_back(static_cast<char>(0xF0 | (cp >> 18)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 12) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  }
}

bool IsValidUtf8(std::string_view s) {
  size_t pos = 0;
  while (pos < s.size()) {
    if (static_cast<uint8_t>(s[pos]) < 0x80) {
      ++pos;
      continue;
    }
    size_t before = pos;
    char32_t cp = NextCodePoint(s, &pos);
    if (cp == 0xFFFD && pos == before + 1) return false;
  }
  return true;
}

size_t IncompleteUtf8Tail(std::string_view s) {
  // Look back at most 3 bytes for a lead byte whose sequence runs past the end.
  for (size_t back = 1; back <= 3 && back <= s.size(); ++back) {
    auto c = static_cast<uint8_t>(s[s.size() - back]);
    if ((c & 0xC0) == 0x80) continue;  // continuation byte: keep looking for the lead
    size_t need = (c & 0xE0) == 0xC0 ? 2 : (c & 0xF0) == 0xE0 ? 3 : (c & 0xF8) == 0xF0 ? 4 : 1;
    return need > back ? back : 0;
  }
  return 0;
}

char32_t ByteToUnicode(uint8_t b) { return Maps().to_unicode[b]; }

int UnicodeToByte(char32_t cp) { return cp < 324 ? Maps().to_byte[cp] : -1; }

bool IsWhiteSpace(char32_t cp) { return Flags(cp) & 1; }
bool IsOther(char32_t cp) { return Flags(cp) & 2; }
bool IsPunctuation(char32_t cp) { return Flags(cp) & 4; }
bool IsMarkNonspacing(char32_t cp) { return Flags(cp) & 8; }
bool IsNfcStable(char32_t cp) { return cp < 0x300 || !(Flags(cp) & 16); }

void AppendLowercase(char32_t cp, std::u32string* out) {
  if (cp < 0x80) {
    out->push_back(cp >= 'A' && cp <= 'Z' ? cp + 32 : cp);
    return;
  }
  const CharMapping* m = FindMapping(internal::kLowerMap, internal::kNumLowerMap, cp);
  if (m == nullptr) {
    out->push_back(cp);
    return;
  }
  out->append(internal::kLowerPool + m->offset, m->length);
}

void AppendNfd(char32_t cp, std::u32string* out) {
  if (cp >= 0xAC00 && cp <= 0xD7A3) {  // Hangul syllables decompose algorithmically
    char32_t s = cp - 0xAC00;
    out->push_back(0x1100 + s / (21 * 28));
    out->push_back(0x1161 + (s % (21 * 28)) / 28);
    if (s % 28 != 0) out->push_back(0x11A7 + s % 28);
    return;
  }
  const CharMapping* m =
      cp < 0xC0 ? nullptr : FindMapping(internal::kNfdMap, internal::kNumNfdMap, cp);
  if (m == nullptr) {
    out->push_back(cp);
    return;
  }
  out->append(internal::kNfdPool + m->offset, m->length);
}

}  // namespace kvkeep::unicode
