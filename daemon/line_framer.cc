#include "daemon/line_framer.h"

namespace kvkeep {

void LineFramer::Feed(std::string_view data, const std::function<void(std::string_view)>& on_line,
                      const std::function<void()>& on_too_long) {
  while (!data.empty()) {
    size_t nl = data.find('\n');
    std::string_view chunk = data.substr(0, nl);  // whole data when no newline
    if (skipping_) {
      if (nl == std::string_view::npos) return;
      skipping_ = false;
      data.remove_prefix(nl + 1);
      continue;
    }
    if (partial_.size() + chunk.size() > max_line_bytes_) {
      partial_.clear();
      on_too_long();
      if (nl == std::string_view::npos) {
        skipping_ = true;
        return;
      }
      data.remove_prefix(nl + 1);
      continue;
    }
    if (nl == std::string_view::npos) {
      partial_.append(chunk);
      return;
    }
    std::string_view line = chunk;
    if (!partial_.empty()) {
      partial_.append(chunk);
      line = partial_;
    }
    if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
    on_line(line);
    partial_.clear();
    data.remove_prefix(nl + 1);
  }
}

}  // namespace kvkeep
