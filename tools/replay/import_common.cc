#include "tools/replay/import_common.h"

#include <cmath>
#include <cstdio>
#include <ctime>

#include "base/file.h"

namespace kvkeep::replay::internal {

Result<json> ReadJsonFile(const std::string& path) {
  ASSIGN_OR_RETURN(std::string text, DefaultEnv()->ReadFile(path));
  json j = json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) return Status::InvalidArgument(path + ": not valid JSON");
  return j;
}

std::string BaseName(const std::string& path) {
  size_t slash = path.find_last_of('/');
  return slash == std::string::npos ? path : path.substr(slash + 1);
}

std::string TextOf(const json& j, const char* field) {
  if (!j.is_object() || !j.contains(field)) return "";
  const json& v = j[field];
  if (v.is_string()) return v.get<std::string>();
  if (v.is_array()) {
    std::string out;
    for (const json& part : v) {
      if (part.is_string()) {
        out += part.get<std::string>();
      } else if (part.is_object() && part.contains("text") && part["text"].is_string()) {
        out += part["text"].get<std::string>();
      }
    }
    return out;
  }
  return "";
}

std::optional<double> NumberOf(const json& j, const char* field) {
  if (!j.is_object() || !j.contains(field)) return std::nullopt;
  const json& v = j[field];
  double d;
  if (v.is_number()) {
    d = v.get<double>();
  } else if (v.is_string()) {
    const std::string& s = v.get_ref<const std::string&>();
    char* end = nullptr;
    d = std::strtod(s.c_str(), &end);
    if (end == s.c_str() || *end != '\0') return std::nullopt;
  } else {
    return std::nullopt;
  }
  if (!std::isfinite(d)) return std::nullopt;
  return d;
}

std::optional<int64_t> IntegerOf(const json& j, const char* field, int64_t lo, int64_t hi) {
  std::optional<double> d = NumberOf(j, field);
  // Compared as doubles before the cast: a double outside int64_t's range has no cast.
  if (!d || *d < static_cast<double>(lo) || *d > static_cast<double>(hi)) return std::nullopt;
  return static_cast<int64_t>(*d);
}

void SessionBuilder::System(std::string text) {
  Event e;
  e.type = EventType::kSystem;
  e.text = std::move(text);
  s_->events.push_back(std::move(e));
}

void SessionBuilder::User(std::string text) {
  Event e;
  e.type = EventType::kUser;
  e.text = std::move(text);
  s_->events.push_back(std::move(e));
}

Event& SessionBuilder::Model(std::string text, double duration_s) {
  Event e;
  e.type = EventType::kModel;
  e.text = std::move(text);
  if (duration_s >= 0) {
    e.duration_s = duration_s;
    e.timing = Timing::kRecorded;
  } else {
    e.duration_s = options_.timing.ModelSeconds(NextKey());
    e.timing = Timing::kSynthetic;
  }
  s_->events.push_back(std::move(e));
  return s_->events.back();
}

void SessionBuilder::ToolBegin(std::string tool, std::string command, std::string call_id) {
  Event e;
  e.type = EventType::kToolBegin;
  e.tool = tool.empty() ? "bash" : std::move(tool);
  e.command = std::move(command);
  e.call_id = std::move(call_id);
  s_->events.push_back(std::move(e));
}

void SessionBuilder::ToolEnd(std::string tool, std::string call_id, std::string result,
                             double duration_s, std::string_view command,
                             std::optional<int> exit_code) {
  Event e;
  e.type = EventType::kToolEnd;
  e.tool = tool.empty() ? "bash" : std::move(tool);
  e.call_id = std::move(call_id);
  e.text = std::move(result);
  e.exit_code = exit_code;
  if (duration_s >= 0) {
    e.duration_s = duration_s;
    e.timing = Timing::kRecorded;
  } else {
    e.duration_s = options_.timing.ToolSeconds(command, NextKey());
    e.timing = Timing::kSynthetic;
  }
  s_->events.push_back(std::move(e));
}

void SessionBuilder::Think(double duration_s) {
  Event e;
  e.type = EventType::kThink;
  e.duration_s = duration_s;
  e.timing = Timing::kRecorded;
  s_->events.push_back(std::move(e));
}

std::optional<int> ParseReturnCode(std::string_view text) {
  constexpr std::string_view kOpen = "<returncode>";
  size_t p = text.find(kOpen);
  if (p == std::string_view::npos) return std::nullopt;
  int code = 0;
  if (std::sscanf(std::string(text.substr(p + kOpen.size(), 12)).c_str(), "%d", &code) != 1) {
    return std::nullopt;
  }
  return code;
}

std::optional<double> ParseIsoSeconds(std::string_view ts) {
  std::tm tm{};
  double frac = 0;
  int y, mo, d, h, mi;
  double s;
  std::string str(ts);
  if (std::sscanf(str.c_str(), "%d-%d-%dT%d:%d:%lf", &y, &mo, &d, &h, &mi, &s) != 6) {
    return std::nullopt;
  }
  tm.tm_year = y - 1900;
  tm.tm_mon = mo - 1;
  tm.tm_mday = d;
  tm.tm_hour = h;
  tm.tm_min = mi;
  tm.tm_sec = 0;
  frac = s;
  return static_cast<double>(timegm(&tm)) + frac;
}

}  // namespace kvkeep::replay::internal
