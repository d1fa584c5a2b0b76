// LineFramer: splits a byte stream into newline-terminated lines, incrementally, with a
// maximum line length (Redis's query-buffer limit). An over-long line is reported once
// and then skipped up to its newline, so the stream resynchronises and the connection
// lives on. A trailing '\r' is stripped; bytes after the last newline wait for more input.
//
// Thread-safety: none; one per connection, used from its strand.
#pragma once

#include <cstddef>
#include <functional>
#include <string>
#include <string_view>

namespace kvkeep {

class LineFramer {
 public:
  explicit LineFramer(size_t max_line_bytes) : max_line_bytes_(max_line_bytes) {}

  // Calls on_line(line) for each complete line and on_too_long() once per over-long line.
  // Lines passed to on_line are valid until the callback returns.
  void Feed(std::string_view data, const std::function<void(std::string_view)>& on_line,
            const std::function<void()>& on_too_long);

  // Bytes of an incomplete line held back.
  size_t pending_bytes() const { return partial_.size(); }

 private:
  size_t max_line_bytes_;
  std::string partial_;
  bool skipping_ = false;  // inside an over-long line, discarding up to '\n'
};

}  // namespace kvkeep
