#include "index/segmenter.h"

#include <algorithm>

namespace kvkeep::index {
namespace {

bool IsSpace(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f'; }

// Appends [begin, end) trimmed of white space, cut into pieces of at most max_chars bytes
// that never split a UTF-8 character.
void AddSpan(std::string_view text, int64_t begin, int64_t end, int64_t max_chars,
             std::vector<std::pair<int64_t, int64_t>>* out) {
  while (begin < end && IsSpace(text[begin])) ++begin;
  while (end > begin && IsSpace(text[end - 1])) --end;
  max_chars = std::max<int64_t>(max_chars, 4);
  while (begin < end) {
    int64_t cut = std::min(end, begin + max_chars);
    // Back off continuation bytes (10xxxxxx) so the cut lands on a character start.
    while (cut < end && cut > begin + 1 && (static_cast<unsigned char>(text[cut]) & 0xC0) == 0x80) {
      --cut;
    }
    int64_t piece_end = cut;
    while (piece_end > begin && IsSpace(text[piece_end - 1])) --piece_end;
    if (piece_end > begin) out->emplace_back(begin, piece_end);
    begin = cut;
    while (begin < end && IsSpace(text[begin])) ++begin;
  }
}

}  // namespace

std::vector<std::pair<int64_t, int64_t>> SplitSpans(std::string_view text, MessageKind kind,
                                                    int64_t max_chars) {
  std::vector<std::pair<int64_t, int64_t>> spans;
  const auto n = static_cast<int64_t>(text.size());
  int64_t start = 0;
  int64_t i = 0;
  while (i < n) {
    // A blank line ends a sentence and a block alike.
    if (text[i] == '\n') {
      int64_t j = i + 1;
      while (j < n && (text[j] == ' ' || text[j] == '\t' || text[j] == '\r')) ++j;
      if (j < n && text[j] == '\n') {
        AddSpan(text, start, i, max_chars, &spans);
        start = i = j + 1;
        continue;
      }
    }
    if (kind == MessageKind::kProse && (text[i] == '.' || text[i] == '!' || text[i] == '?')) {
      int64_t j = i + 1;
      while (j < n && (text[j] == '.' || text[j] == '!' || text[j] == '?' || text[j] == '"' ||
                       text[j] == '\'' || text[j] == ')')) {
        ++j;
      }
      if (j == n || IsSpace(text[j])) {
        AddSpan(text, start, j, max_chars, &spans);
        start = i = j;
        continue;
      }
    }
    ++i;
  }
  AddSpan(text, start, n, max_chars, &spans);
  return spans;
}

std::vector<Segment> SegmentMessages(const std::vector<Message>& messages,
                                     const SegmenterOptions& options) {
  std::vector<Segment> segments;
  for (size_t m = 0; m < messages.size(); ++m) {
    const std::string& text = messages[m].text;
    for (auto [begin, end] : SplitSpans(text, messages[m].kind, options.max_segment_chars)) {
      segments.push_back(
          {static_cast<int32_t>(m), static_cast<int32_t>(m + 1), begin, end,
           text.substr(static_cast<size_t>(begin), static_cast<size_t>(end - begin))});
    }
  }
  return segments;
}

std::vector<Segment> MakeWindows(const std::vector<Message>& messages,
                                 const SegmenterOptions& options) {
  const int32_t w = std::max(options.window_messages, 1);
  std::vector<Segment> windows;
  const auto n = static_cast<int32_t>(messages.size());
  int32_t m = 0;
  while (m < n) {
    Segment window;
    window.first_message = m;
    const std::string* last_date = nullptr;
    int32_t count = 0;
    while (m < n && count < w &&
           (count == 0 || messages[m].group == messages[window.first_message].group)) {
      const Message& msg = messages[m];
      if (options.window_dates && !msg.date.empty() && (!last_date || *last_date != msg.date)) {
        window.text += "[" + msg.date + "]\n";
        last_date = &msg.date;
      }
      window.text += msg.speaker.empty() ? msg.text : msg.speaker + ": " + msg.text;
      window.text += '\n';
      ++m;
      ++count;
    }
    window.end_message = m;
    if (!window.text.empty()) window.text.pop_back();
    windows.push_back(std::move(window));
  }
  return windows;
}

}  // namespace kvkeep::index
