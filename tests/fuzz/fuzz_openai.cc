// fuzz_openai: the OpenAI request translation (daemon/openai_messages.h) on arbitrary bytes
// read as a JSON body: FlattenRequest of its `messages` and `tools` (or of the whole value),
// the match keys of what it returns, and the model-output parsers (ParseOutput,
// SingleBashBlock) on the raw bytes. A body is either flattened or refused with a message
// naming the field; output with no parsed tool call is returned whole as text.
#include <cstdint>
#include <cstdlib>
#include <string>

#include "daemon/openai_messages.h"

namespace {

void Check(bool ok) {
  if (!ok) std::abort();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using nlohmann::json;
  const std::string text(reinterpret_cast<const char*>(data), size);
  const json body = json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (!body.is_discarded()) {
    const bool wrapped = body.is_object() && body.contains("messages");
    const json& messages = wrapped ? body["messages"] : body;
    const json* tools = wrapped && body.contains("tools") ? &body["tools"] : nullptr;
    auto flat = kvkeep::openai::FlattenRequest(messages, tools);
    if (!flat.ok()) {
      Check(!flat.status().message().empty());
    } else {
      for (const auto& m : *flat) (void)kvkeep::openai::MatchKey(m.role, m.content, json());
    }
  }
  const auto parsed = kvkeep::openai::ParseOutput(text, "fuzz");
  Check(parsed.tool_calls.is_null() || parsed.tool_calls.is_array());
  if (parsed.tool_calls.empty()) Check(parsed.content == text);
  (void)kvkeep::openai::SingleBashBlock(text);
  return 0;
}
