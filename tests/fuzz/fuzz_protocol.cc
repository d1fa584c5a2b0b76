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
    Error e;
    (void)params.String(key, &e);
    (void)params.StringOr(key, "", &e);
    (void)params.IntOr(key, 0, -1000, 1000, &e);
    (void)params.NumberOr(key, 0, -1e9, 1e9, &e);
    (void)params.BoolOr(key, false, &e);
    (void)params.Tokens(key, 1024, &e);
    (void)params.Has(key);
  }
  const std::string out = kvkeep::protocol::ResultLine(request->id, json::object());
  Check(out.find('\n') == std::string::npos);
  return 0;
}
