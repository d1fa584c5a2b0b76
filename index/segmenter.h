// Segmenter: cuts a session's messages into the segments that get embedded.
//
//   prose (user and assistant text): sentences, split after . ! ? (and runs of them)
//     followed by white space, and at blank lines;
//   code and tool output: blocks of consecutive non-blank lines, cut at blank lines;
//   both: a segment longer than max_segment_chars is cut at that many bytes (at a UTF-8
//     character boundary);
//   windows: w consecutive messages (default 4), rendered one per line as
//     "speaker: text", optionally after the message's date. Windows never cross a group
//     boundary (a LoCoMo session, say), so a group's last window may be shorter.
//
// Every segment keeps where it came from: its message range and, for sentences and
// blocks, its byte span inside the message, so a segment maps back to its messages
// (and through them to their KV).
//
// Thread-safety: pure functions.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace kvkeep::index {

enum class MessageKind { kProse, kCode, kToolOutput };

struct Message {
  std::string speaker;  // role or speaker name, rendered in windows
  std::string text;
  MessageKind kind = MessageKind::kProse;
  int32_t group = 0;  // windows stop at a change of group
  std::string date;   // optional; rendered in windows when asked
};

struct Segment {
  int32_t first_message = 0;  // index into the message list
  int32_t end_message = 0;    // one past the last message
  int64_t begin_byte = 0;     // span inside first_message's text (sentences, blocks);
  int64_t end_byte = 0;       // 0..0 for windows, which cover whole messages
  std::string text;
};

struct SegmenterOptions {
  int64_t max_segment_chars = 1000;  // cap on one sentence or block, in bytes
  int32_t window_messages = 4;       // w
  bool window_dates = true;          // prefix each date change in a window with "[date]"
};

// Byte spans [begin, end) of the sentences (prose) or line blocks (code and tool output)
// of text, white space trimmed, each at most max_chars bytes. Empty text gives none.
std::vector<std::pair<int64_t, int64_t>> SplitSpans(std::string_view text, MessageKind kind,
                                                    int64_t max_chars);

// Sentence or block segments of every message.
std::vector<Segment> SegmentMessages(const std::vector<Message>& messages,
                                     const SegmenterOptions& options);

// Windows of options.window_messages consecutive messages within a group.
std::vector<Segment> MakeWindows(const std::vector<Message>& messages,
                                 const SegmenterOptions& options);

}  // namespace kvkeep::index
