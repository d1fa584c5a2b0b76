// Protocol: the wire format of docs/protocol.md, without any I/O. Parses one request line
// (depth-limited JSON object with `id` and `verb`), reads typed parameters, and renders
// reply, event and error lines. Stable error codes live here and nowhere else.
//
// Thread-safety: free functions and values.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "base/status.h"

namespace kvkeep::protocol {

using nlohmann::json;

inline constexpr int kProtocolVersion = 1;

// Wire error codes (docs/protocol.md, "Error codes").
enum class ErrorCode {
  kBadJson,
  kLineTooLong,
  kTooDeep,
  kUnknownVerb,
  kInvalidArgument,
  kNotFound,
  kAlreadyExists,
  kBusy,
  kTooManySessions,
  kTooManyRequests,
  kResourceExhausted,
  kPermissionDenied,
  kCancelled,
  kUnavailable,
  kInternal,
};
std::string_view ErrorCodeName(ErrorCode code);

// A framing/parse error of one line (ParseRequest), before any service handler runs.
struct Error {
  ErrorCode code = ErrorCode::kInternal;
  std::string message;
};
// The one mapping from a Status to a wire code: every StatusCode the service returns has
// its own code; IOError, Corruption and the rest become `internal`.
ErrorCode WireCode(const Status& status);

enum class Verb {
  kHello,
  kSessionOpen,
  kSessionAppend,
  kSessionGenerate,
  kSessionToolBegin,
  kSessionToolEnd,
  kSessionFork,
  kSessionClose,
  kSessionInfo,
  kSessionsList,
  kStats,
  kCancel,
  kSessionRetain,
  kSessionQuery,
};
std::optional<Verb> ParseVerb(std::string_view name);
std::string_view VerbName(Verb verb);
// Whether handling the verb writes the store (and so waits for a group commit).
bool WritesStore(Verb verb);

struct Request {
  json id;  // string, integer or null (absent)
  Verb verb = Verb::kHello;
  json body;  // the whole request object
};

// Deepest nesting of objects/arrays in text, scanning outside strings; stops counting once
// `limit` is exceeded (returns limit + 1). Malformed text is fine (the parser rejects it).
int JsonDepth(std::string_view text, int limit);

// The longest string request id (bytes); longer ids are refused (and not echoed).
inline constexpr size_t kMaxIdBytes = 256;

// Parses one line. On failure *id_out holds the request's id when it could be read.
Result<Request> ParseRequest(std::string_view line, int max_depth, Error* error, json* id_out);

// Typed parameter access on a request object; each getter fails with InvalidArgument
// naming the field when the type or value is wrong. Absent and null read the same.
class Params {
 public:
  explicit Params(const json& body) : body_(body) {}
  bool Has(const char* key) const;
  Result<std::string> String(const char* key) const;  // required
  Result<std::string> StringOr(const char* key, std::string dflt) const;
  Result<int64_t> IntOr(const char* key, int64_t dflt, int64_t min, int64_t max) const;
  Result<double> NumberOr(const char* key, double dflt, double min, double max) const;
  Result<bool> BoolOr(const char* key, bool dflt) const;
  // An array of token ids in [0, vocab_size).
  Result<std::vector<int32_t>> Tokens(const char* key, int32_t vocab_size) const;

 private:
  const json& body_;
};

// Lines (without the trailing newline, which the writer adds).
std::string ResultLine(const json& id, json result);
std::string ErrorLine(const json& id, ErrorCode code, std::string_view message);
std::string ErrorLine(const json& id, const Error& error);
// REQUIRES: !status.ok(). Internal codes carry the full Status text as the message.
std::string ErrorLine(const json& id, const Status& status);
std::string EventLine(const json& id, std::string_view event, json fields);

// A session id: 1-128 chars of [A-Za-z0-9._:-].
bool IsValidSessionId(std::string_view id);

// RFC 3339 UTC with milliseconds, e.g. "2026-11-22T19:40:00.123Z".
std::string FormatWallMicros(int64_t wall_us);

}  // namespace kvkeep::protocol
