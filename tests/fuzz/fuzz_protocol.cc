// fuzz_protocol: the request parser and the typed parameter readers (daemon/protocol.h)
// on arbitrary bytes. A request line must either parse, or fail with a named error that
// serialises to one valid JSON line; parameters of a parsed request are read with every
// getter. Crashes, sanitizer findings and broken invariants abort.
#include <cstdint>
#include <cstdlib>
#include <string_view>

#include "daemon/protocol.h"

namespace {

using kvkeep::protocol::Error;
using nlohmann::json;

void Check(bool ok) {
  if (!ok) std::abort();
}

// A getter that refuses a parameter names why, and its error line is one valid JSON line.
void CheckRefusal(const json& id, const kvkeep::Status& status) {
  if (status.ok()) return;
  Check(!status.message().empty());
  const std::string out = kvkeep::protocol::ErrorLine(id, status);
  Check(out.find('\n') == std::string::npos);
  Check(!json::parse(out, nullptr, /*allow_exceptions=*/false).is_discarded());
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view line(reinterpret_cast<const char*>(data), size);
  Error error;
  json id;
  auto request = kvkeep::protocol::ParseRequest(line, /*max_depth=*/64, &error, &id);
  if (!request.ok()) {
    Check(!error.message.empty());
    const std::string out = kvkeep::protocol::ErrorLine(id, error);
    Check(out.find('\n') == std::string::npos);
    Check(!json::parse(out, nullptr, /*allow_exceptions=*/false).is_discarded());
    return 0;
  }
  const kvkeep::protocol::Params params(request->body);
  for (const char* key : {"session", "system", "tool", "content", "forced", "id", "messages"}) {
    CheckRefusal(request->id, params.String(key).status());
    CheckRefusal(request->id, params.StringOr(key, "").status());
    CheckRefusal(request->id, params.IntOr(key, 0, -1000, 1000).status());
    CheckRefusal(request->id, params.NumberOr(key, 0, -1e9, 1e9).status());
    CheckRefusal(request->id, params.BoolOr(key, false).status());
    CheckRefusal(request->id, params.Tokens(key, 1024).status());
    (void)params.Has(key);
  }
  const std::string out = kvkeep::protocol::ResultLine(request->id, json::object());
  Check(out.find('\n') == std::string::npos);
  return 0;
}
