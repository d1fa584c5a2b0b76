#include "daemon/protocol.h"

#include <ctime>

namespace kvkeep::protocol {
namespace {

constexpr std::pair<Verb, std::string_view> kVerbs[] = {
    {Verb::kHello, "hello"},
    {Verb::kSessionOpen, "session.open"},
    {Verb::kSessionAppend, "session.append"},
    {Verb::kSessionGenerate, "session.generate"},
    {Verb::kSessionToolBegin, "session.tool_begin"},
    {Verb::kSessionToolEnd, "session.tool_end"},
    {Verb::kSessionFork, "session.fork"},
    {Verb::kSessionClose, "session.close"},
    {Verb::kSessionInfo, "session.info"},
    {Verb::kSessionsList, "sessions.list"},
    {Verb::kStats, "stats"},
    {Verb::kCancel, "cancel"},
    {Verb::kSessionRetain, "session.retain"},
    {Verb::kSessionQuery, "session.query"},
};

Status Invalid(const char* key, std::string_view what) {
  return Status::InvalidArgument("'" + std::string(key) + "' " + std::string(what));
}

}  // namespace

std::string_view ErrorCodeName(ErrorCode code) {
  switch (code) {
    case ErrorCode::kBadJson:
      return "bad_json";
    case ErrorCode::kLineTooLong:
      return "line_too_long";
    case ErrorCode::kTooDeep:
      return "too_deep";
    case ErrorCode::kUnknownVerb:
      return "unknown_verb";
    case ErrorCode::kInvalidArgument:
      return "invalid_argument";
    case ErrorCode::kNotFound:
      return "not_found";
    case ErrorCode::kAlreadyExists:
      return "already_exists";
    case ErrorCode::kBusy:
      return "busy";
    case ErrorCode::kTooManySessions:
      return "too_many_sessions";
    case ErrorCode::kTooManyRequests:
      return "too_many_requests";
    case ErrorCode::kResourceExhausted:
      return "resource_exhausted";
    case ErrorCode::kPermissionDenied:
      return "permission_denied";
    case ErrorCode::kCancelled:
      return "cancelled";
    case ErrorCode::kUnavailable:
      return "unavailable";
    case ErrorCode::kInternal:
      return "internal";
  }
  return "internal";
}

ErrorCode WireCode(const Status& status) {
  switch (status.code()) {
    case StatusCode::kInvalidArgument:
      return ErrorCode::kInvalidArgument;
    case StatusCode::kNotFound:
      return ErrorCode::kNotFound;
    case StatusCode::kResourceExhausted:
    case StatusCode::kQuotaExceeded:  // the wire code JSON-lines clients already know
      return ErrorCode::kResourceExhausted;
    case StatusCode::kUnavailable:
      return ErrorCode::kUnavailable;
    case StatusCode::kCancelled:
      return ErrorCode::kCancelled;
    case StatusCode::kAlreadyExists:
      return ErrorCode::kAlreadyExists;
    case StatusCode::kPermissionDenied:
      return ErrorCode::kPermissionDenied;
    case StatusCode::kBusy:
      return ErrorCode::kBusy;
    case StatusCode::kTooManySessions:
      return ErrorCode::kTooManySessions;
    case StatusCode::kTooManyRequests:
      return ErrorCode::kTooManyRequests;
    default:
      return ErrorCode::kInternal;
  }
}

std::optional<Verb> ParseVerb(std::string_view name) {
  for (const auto& [verb, n] : kVerbs) {
    if (n == name) return verb;
  }
  return std::nullopt;
}

bool WritesStore(Verb verb) {
  switch (verb) {
    case Verb::kSessionOpen:
    case Verb::kSessionAppend:
    case Verb::kSessionGenerate:
    case Verb::kSessionToolBegin:
    case Verb::kSessionToolEnd:
    case Verb::kSessionFork:
    case Verb::kSessionClose:
    case Verb::kSessionRetain:
      return true;
    case Verb::kHello:
    case Verb::kSessionInfo:
    case Verb::kSessionsList:
    case Verb::kStats:
    case Verb::kCancel:
    case Verb::kSessionQuery:
      return false;
  }
  return true;
}

std::string_view VerbName(Verb verb) {
  for (const auto& [v, n] : kVerbs) {
    if (v == verb) return n;
  }
  return "?";
}

int JsonDepth(std::string_view text, int limit) {
  int depth = 0, max_depth = 0;
  bool in_string = false;
  for (size_t i = 0; i < text.size(); ++i) {
    char c = text[i];
    if (in_string) {
      if (c == '\\') {
        ++i;
      } else if (c == '"') {
        in_string = false;
      }
      continue;
    }
    if (c == '"') {
      in_string = true;
    } else if (c == '{' || c == '[') {
      if (++depth > max_depth) {
        max_depth = depth;
        if (max_depth > limit) return limit + 1;
      }
    } else if (c == '}' || c == ']') {
      --depth;
    }
  }
  return max_depth;
}

Result<Request> ParseRequest(std::string_view line, int max_depth, Error* error, json* id_out) {
  *id_out = nullptr;
  auto fail = [error](ErrorCode code, std::string message) {
    *error = {code, std::move(message)};
    return Status::InvalidArgument(error->message);
  };
  if (JsonDepth(line, max_depth) > max_depth) {
    return fail(ErrorCode::kTooDeep,
                "JSON nesting deeper than max_json_depth " + std::to_string(max_depth));
  }
  json doc = json::parse(line, nullptr, /*allow_exceptions=*/false);
  if (doc.is_discarded()) return fail(ErrorCode::kBadJson, "request is not valid JSON");
  if (!doc.is_object()) return fail(ErrorCode::kBadJson, "request must be a JSON object");
  Request req;
  if (auto it = doc.find("id"); it != doc.end()) {
    if (!it->is_string() && !it->is_number_integer() && !it->is_null()) {
      return fail(ErrorCode::kInvalidArgument, "'id' must be a string or an integer");
    }
    // Every reply and stream event echoes the id: a long one would multiply the output.
    if (it->is_string() && it->get_ref<const std::string&>().size() > kMaxIdBytes) {
      return fail(ErrorCode::kInvalidArgument,
                  "'id' is longer than " + std::to_string(kMaxIdBytes) + " bytes");
    }
    req.id = *it;
    *id_out = *it;
  }
  auto verb_it = doc.find("verb");
  if (verb_it == doc.end() || !verb_it->is_string()) {
    return fail(ErrorCode::kUnknownVerb, "'verb' (a string) is missing");
  }
  auto verb = ParseVerb(verb_it->get_ref<const std::string&>());
  if (!verb) {
    return fail(ErrorCode::kUnknownVerb, "unknown verb '" + verb_it->get<std::string>() + "'");
  }
  req.verb = *verb;
  req.body = std::move(doc);
  return req;
}

bool Params::Has(const char* key) const {
  auto it = body_.find(key);
  return it != body_.end() && !it->is_null();
}

Result<std::string> Params::String(const char* key) const {
  if (!Has(key)) return Invalid(key, "is required");
  const json& v = body_.at(key);
  if (!v.is_string()) return Invalid(key, "must be a string");
  return v.get<std::string>();
}

Result<std::string> Params::StringOr(const char* key, std::string dflt) const {
  if (!Has(key)) return dflt;
  return String(key);
}

Result<int64_t> Params::IntOr(const char* key, int64_t dflt, int64_t min, int64_t max) const {
  if (!Has(key)) return dflt;
  const json& v = body_.at(key);
  if (!v.is_number_integer()) return Invalid(key, "must be an integer");
  // Unsigned values above INT64_MAX read as negative here and fail the range check.
  int64_t x = v.is_number_unsigned() && v.get<uint64_t>() > uint64_t{INT64_MAX} ? int64_t{-1}
                                                                                : v.get<int64_t>();
  if (x < min || x > max) {
    return Invalid(key, "must be in [" + std::to_string(min) + ", " + std::to_string(max) + "]");
  }
  return x;
}

Result<double> Params::NumberOr(const char* key, double dflt, double min, double max) const {
  if (!Has(key)) return dflt;
  const json& v = body_.at(key);
  if (!v.is_number()) return Invalid(key, "must be a number");
  double x = v.get<double>();
  if (!(x >= min && x <= max)) {
    return Invalid(key, "must be in [" + std::to_string(min) + ", " + std::to_string(max) + "]");
  }
  return x;
}

Result<bool> Params::BoolOr(const char* key, bool dflt) const {
  if (!Has(key)) return dflt;
  const json& v = body_.at(key);
  if (!v.is_boolean()) return Invalid(key, "must be a boolean");
  return v.get<bool>();
}

Result<std::vector<int32_t>> Params::Tokens(const char* key, int32_t vocab_size) const {
  auto it = body_.find(key);
  if (it == body_.end() || !it->is_array()) return Invalid(key, "must be an array of token ids");
  std::vector<int32_t> out;
  out.reserve(it->size());
  for (const json& t : *it) {
    if (!t.is_number_integer() || t.get<int64_t>() < 0 || t.get<int64_t>() >= vocab_size) {
      return Invalid(key, "must hold token ids in [0, " + std::to_string(vocab_size) + ")");
    }
    out.push_back(t.get<int32_t>());
  }
  return out;
}

std::string ResultLine(const json& id, json result) {
  json line = {{"id", id}, {"result", std::move(result)}};
  return line.dump(-1, ' ', false, json::error_handler_t::replace);
}

std::string ErrorLine(const json& id, ErrorCode code, std::string_view message) {
  json line = {{"id", id},
               {"error", {{"code", ErrorCodeName(code)}, {"message", std::string(message)}}}};
  return line.dump(-1, ' ', false, json::error_handler_t::replace);
}

std::string ErrorLine(const json& id, const Error& error) {
  return ErrorLine(id, error.code, error.message);
}

std::string ErrorLine(const json& id, const Status& status) {
  const ErrorCode code = WireCode(status);
  return ErrorLine(id, code, code == ErrorCode::kInternal ? status.ToString() : status.message());
}

std::string EventLine(const json& id, std::string_view event, json fields) {
  json line = {{"id", id}, {"event", std::string(event)}};
  line.update(fields);
  return line.dump(-1, ' ', false, json::error_handler_t::replace);
}

bool IsValidSessionId(std::string_view id) {
  if (id.empty() || id.size() > 128) return false;
  for (char c : id) {
    bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '.' || c == '_' || c == ':' || c == '-';
    if (!ok) return false;
  }
  return true;
}

std::string FormatWallMicros(int64_t wall_us) {
  time_t secs = static_cast<time_t>(wall_us / 1'000'000);
  struct tm tm_utc;
  gmtime_r(&secs, &tm_utc);
  char buf[40];
  size_t n = strftime(buf, sizeof(buf), "%Y-%m-%dT%H:%M:%S", &tm_utc);
  snprintf(buf + n, sizeof(buf) - n, ".%03dZ", static_cast<int>((wall_us / 1000) % 1000));
  return buf;
}

}  // namespace kvkeep::protocol
