// SplitRegex: a compiled PCRE2 pattern (UTF + UCP, so \p{L}, \p{N} and \s are Unicode
// aware; JIT-compiled when available) used by the Split and ByteLevel pre-tokenizers.
// Invalid UTF-8 in the subject never matches (PCRE2_MATCH_INVALID_UTF) and ends up in the
// gaps between matches.
//
// Thread-safety: immutable after Compile; Split may be called concurrently.
#pragma once

#include <cstddef>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "base/status.h"

namespace kvkeep {

// GPT-2's pre-tokenizer pattern (ByteLevel with use_regex true).
inline constexpr std::string_view kGpt2SplitPattern =
    R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";

class SplitRegex {
 public:
  ~SplitRegex();
  SplitRegex(const SplitRegex&) = delete;
  SplitRegex& operator=(const SplitRegex&) = delete;

  static Result<std::unique_ptr<SplitRegex>> Compile(std::string_view pattern);

  // Calls fn(begin, end, is_match) for every match of the pattern in text and for every
  // non-empty gap between matches, in order (HF's "Isolated" behaviour; "Removed" callers
  // ignore the matches).
  template <typename Fn>
  void ForEachPiece(std::string_view text, Fn&& fn) const {
    std::vector<std::pair<size_t, size_t>> matches;
    Matches(text, &matches);
    size_t last = 0;
    for (auto [b, e] : matches) {
      if (b > last) fn(last, b, false);
      fn(b, e, true);
      last = e;
    }
    if (last < text.size()) fn(last, text.size(), false);
  }

  // All non-empty, non-overlapping matches, left to right.
  void Matches(std::string_view text, std::vector<std::pair<size_t, size_t>>* out) const;

 private:
  SplitRegex() = default;
  void* code_ = nullptr;  // pcre2_code_8*
};

}  // namespace kvkeep
