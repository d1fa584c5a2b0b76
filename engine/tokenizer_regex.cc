#include "engine/tokenizer_regex.h"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

namespace kvkeep {
namespace {

pcre2_code* Code(void* p) { return static_cast<pcre2_code*>(p); }

// Match data is per thread and grown on demand (one ovector pair is enough).
struct MatchData {
  pcre2_match_data* data = pcre2_match_data_create(1, nullptr);
  ~MatchData() { pcre2_match_data_free(data); }
};

}  // namespace

SplitRegex::~SplitRegex() { pcre2_code_free(Code(code_)); }

Result<std::unique_ptr<SplitRegex>> SplitRegex::Compile(std::string_view pattern) {
  int error = 0;
  PCRE2_SIZE offset = 0;
  pcre2_code* code =
      pcre2_compile(reinterpret_cast<PCRE2_SPTR>(pattern.data()), pattern.size(),
                    PCRE2_UTF | PCRE2_UCP | PCRE2_MATCH_INVALID_UTF, &error, &offset, nullptr);
  if (code == nullptr) {
    PCRE2_UCHAR message[256];
    pcre2_get_error_message(error, message, sizeof(message));
    return Status::NotSupported("pre-tokenizer regex does not compile under PCRE2 at offset " +
                                std::to_string(offset) + ": " +
                                reinterpret_cast<const char*>(message));
  }
  pcre2_jit_compile(code, PCRE2_JIT_COMPLETE);  // falls back to the interpreter on failure
  std::unique_ptr<SplitRegex> re(new SplitRegex());
  re->code_ = code;
  return re;
}

void SplitRegex::Matches(std::string_view text, std::vector<std::pair<size_t, size_t>>* out) const {
  thread_local MatchData md;
  const auto* subject = reinterpret_cast<PCRE2_SPTR>(text.data());
  size_t start = 0;
  while (start < text.size()) {
    int rc = pcre2_match(Code(code_), subject, text.size(), start, 0, md.data, nullptr);
    if (rc < 0) break;  // PCRE2_ERROR_NOMATCH or a limit: the rest is one gap
    PCRE2_SIZE* ov = pcre2_get_ovector_pointer(md.data);
    size_t b = ov[0];
    size_t e = ov[1];
    if (e == b) {  // empty match: step over one code point
      start = b + 1;
      while (start < text.size() && (static_cast<uint8_t>(text[start]) & 0xC0) == 0x80) ++start;
      continue;
    }
    out->emplace_back(b, e);
    start = e;
  }
}

}  // namespace kvkeep
