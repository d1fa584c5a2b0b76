// Status and Result<T>: the error currency of kvkeep.
//
// A Status is OK or carries one of a closed set of codes plus a message. OK is a
// null pointer and allocates nothing (as in LevelDB). Result<T> holds either a value
// or a non-OK Status. Both are [[nodiscard]]. No exception crosses a module boundary:
// adapters around JSON, Asio, FAISS and SQLite catch and convert.
//
// Thread-safety: values; distinct objects may be used from distinct threads.
#pragma once

#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <variant>

namespace kvkeep {

enum class StatusCode : int {
  kOk = 0,
  kInvalidArgument = 1,
  kNotFound = 2,
  kResourceExhausted = 3,
  kUnavailable = 4,
  kCancelled = 5,
  kCorruption = 6,
  kIOError = 7,
  kNotSupported = 8,
  kDeadlineExceeded = 9,
  kInternal = 10,
  kAlreadyExists = 11,
  kPermissionDenied = 12,
  // Refusals the front ends report distinctly (JSON-lines codes; HTTP 409/429).
  kBusy = 13,             // the object is in use (a session with a generate in flight)
  kTooManySessions = 14,  // the tenant's open-session quota is full
  kTooManyRequests = 15,  // the connection's in-flight quota is full
  kQuotaExceeded = 16,    // a per-uid storage quota is full (JSON-lines: resource_exhausted)
};

// Stable lower-case name of a code, e.g. "invalid_argument". Used on the wire.
std::string_view StatusCodeName(StatusCode code);

class [[nodiscard]] Status {
 public:
  Status() = default;  // OK
  Status(StatusCode code, std::string_view message);
  Status(const Status& other);
  Status& operator=(const Status& other);
  Status(Status&&) noexcept = default;
  Status& operator=(Status&&) noexcept = default;

  static Status OK() { return Status(); }
  static Status InvalidArgument(std::string_view m) { return {StatusCode::kInvalidArgument, m}; }
  static Status NotFound(std::string_view m) { return {StatusCode::kNotFound, m}; }
  static Status ResourceExhausted(std::string_view m) {
    return {StatusCode::kResourceExhausted, m};
  }
  static Status Unavailable(std::string_view m) { return {StatusCode::kUnavailable, m}; }
  static Status Cancelled(std::string_view m) { return {StatusCode::kCancelled, m}; }
  static Status Corruption(std::string_view m) { return {StatusCode::kCorruption, m}; }
  static Status IOError(std::string_view m) { return {StatusCode::kIOError, m}; }
  static Status NotSupported(std::string_view m) { return {StatusCode::kNotSupported, m}; }
  static Status DeadlineExceeded(std::string_view m) { return {StatusCode::kDeadlineExceeded, m}; }
  static Status Internal(std::string_view m) { return {StatusCode::kInternal, m}; }
  static Status AlreadyExists(std::string_view m) { return {StatusCode::kAlreadyExists, m}; }
  static Status PermissionDenied(std::string_view m) { return {StatusCode::kPermissionDenied, m}; }
  static Status Busy(std::string_view m) { return {StatusCode::kBusy, m}; }
  static Status TooManySessions(std::string_view m) { return {StatusCode::kTooManySessions, m}; }
  static Status TooManyRequests(std::string_view m) { return {StatusCode::kTooManyRequests, m}; }
  static Status QuotaExceeded(std::string_view m) { return {StatusCode::kQuotaExceeded, m}; }

  bool ok() const { return rep_ == nullptr; }
  StatusCode code() const { return rep_ ? rep_->code : StatusCode::kOk; }
  const std::string& message() const;
  bool IsNotFound() const { return code() == StatusCode::kNotFound; }
  bool IsInvalidArgument() const { return code() == StatusCode::kInvalidArgument; }
  bool IsResourceExhausted() const { return code() == StatusCode::kResourceExhausted; }
  bool IsCancelled() const { return code() == StatusCode::kCancelled; }

  // "invalid_argument: message", or "OK".
  std::string ToString() const;
  // Returns a copy with "context: " prepended to the message. OK stays OK.
  Status WithContext(std::string_view context) const;

 private:
  struct Rep {
    StatusCode code;
    std::string message;
  };
  std::unique_ptr<Rep> rep_;
};

template <typename T>
class [[nodiscard]] Result {
 public:
  Result(T value) : v_(std::move(value)) {}        // NOLINT: implicit by design
  Result(Status status) : v_(std::move(status)) {  // NOLINT: implicit by design
    if (std::get<Status>(v_).ok()) v_ = Status::Internal("Result constructed from OK status");
  }

  bool ok() const { return std::holds_alternative<T>(v_); }
  Status status() const { return ok() ? Status::OK() : std::get<Status>(v_); }
  // REQUIRES: ok()
  T& value() & { return std::get<T>(v_); }
  const T& value() const& { return std::get<T>(v_); }
  T&& value() && { return std::get<T>(std::move(v_)); }
  T& operator*() & { return value(); }
  const T& operator*() const& { return value(); }
  T* operator->() { return &value(); }
  const T* operator->() const { return &value(); }

 private:
  std::variant<T, Status> v_;
};

}  // namespace kvkeep

#define KVKEEP_CONCAT_INNER(a, b) a##b
#define KVKEEP_CONCAT(a, b) KVKEEP_CONCAT_INNER(a, b)

#define RETURN_IF_ERROR(expr)                \
  do {                                       \
    ::kvkeep::Status _kvkeep_st = (expr);    \
    if (!_kvkeep_st.ok()) return _kvkeep_st; \
  } while (0)

#define ASSIGN_OR_RETURN_IMPL(tmp, lhs, expr) \
  auto tmp = (expr);                          \
  if (!tmp.ok()) return tmp.status();         \
  lhs = std::move(tmp).value()

// ASSIGN_OR_RETURN(auto x, Foo()); or ASSIGN_OR_RETURN(x, Foo());
#define ASSIGN_OR_RETURN(lhs, expr) \
  ASSIGN_OR_RETURN_IMPL(KVKEEP_CONCAT(_kvkeep_result_, __LINE__), lhs, expr)
