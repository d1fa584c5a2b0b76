// Protocol parsing/validation and the line framer.
#include "daemon/protocol.h"

#include <gtest/gtest.h>

#include <random>

#include "daemon/line_framer.h"
#include "tests/testlib/test_util.h"

namespace kvkeep {
namespace {

using protocol::ErrorCode;
using protocol::json;

struct Parsed {
  bool ok;
  protocol::Request req;
  protocol::Error error;
  json id;
};

Parsed Parse(std::string_view line, int depth = 64) {
  Parsed p;
  auto r = protocol::ParseRequest(line, depth, &p.error, &p.id);
  p.ok = r.ok();
  if (p.ok) p.req = *r;
  return p;
}

TEST(ProtocolTest, ParsesAValidRequest) {
  Parsed p = Parse(R"({"id": 7, "verb": "session.info", "session": "a"})");
  ASSERT_TRUE(p.ok);
  EXPECT_EQ(p.req.id, json(7));
  EXPECT_EQ(p.req.verb, protocol::Verb::kSessionInfo);
  EXPECT_EQ(p.req.body.at("session"), "a");
}

TEST(ProtocolTest, EveryVerbNameRoundTrips) {
  for (const char* name :
       {"hello", "session.open", "session.append", "session.generate", "session.tool_begin",
        "session.tool_end", "session.fork", "session.close", "session.info", "sessions.list",
        "stats", "cancel", "session.retain"}) {
    auto verb = protocol::ParseVerb(name);
    ASSERT_TRUE(verb.has_value()) << name;
    EXPECT_EQ(protocol::VerbName(*verb), name);
  }
}

TEST(ProtocolTest, ErrorsCarryTheirCodeAndTheIdWhenReadable) {
  Parsed bad = Parse(R"({"id": 1, "verb": "hello")");
  EXPECT_FALSE(bad.ok);
  EXPECT_EQ(bad.error.code, ErrorCode::kBadJson);
  EXPECT_TRUE(bad.id.is_null());

  Parsed array = Parse("[1, 2]");
  EXPECT_EQ(array.error.code, ErrorCode::kBadJson);

  Parsed unknown = Parse(R"({"id": "x", "verb": "session.explode"})");
  EXPECT_EQ(unknown.error.code, ErrorCode::kUnknownVerb);
  EXPECT_EQ(unknown.id, json("x"));

  Parsed missing = Parse(R"({"id": 3})");
  EXPECT_EQ(missing.error.code, ErrorCode::kUnknownVerb);

  Parsed bad_id = Parse(R"({"id": [1], "verb": "hello"})");
  EXPECT_EQ(bad_id.error.code, ErrorCode::kInvalidArgument);
}

// Issue 11, defect 9: every reply and stream event echoes the id, so a 7 MB id multiplied
// the output. Ids are capped at kMaxIdBytes; a longer one is refused and not echoed.
TEST(ProtocolTest, LongIdsAreRefusedAndNotEchoed) {
  const std::string ok_id(protocol::kMaxIdBytes, 'i');
  EXPECT_TRUE(Parse(json{{"id", ok_id}, {"verb", "hello"}}.dump()).ok);
  Parsed long_id = Parse(json{{"id", ok_id + "i"}, {"verb", "hello"}}.dump());
  EXPECT_FALSE(long_id.ok);
  EXPECT_EQ(long_id.error.code, ErrorCode::kInvalidArgument);
  EXPECT_NE(long_id.error.message.find("256"), std::string::npos);
  EXPECT_TRUE(long_id.id.is_null());
}

TEST(ProtocolTest, DepthLimitIsEnforcedBeforeParsing) {
  std::string deep =
      R"({"id": 1, "verb": "hello", "x": )" + std::string(100, '[') + std::string(100, ']') + "}";
  Parsed p = Parse(deep, 64);
  EXPECT_FALSE(p.ok);
  EXPECT_EQ(p.error.code, ErrorCode::kTooDeep);
  // Exactly at the limit is fine: the object (1) plus 63 arrays.
  std::string edge =
      R"({"id": 1, "verb": "hello", "x": )" + std::string(63, '[') + std::string(63, ']') + "}";
  EXPECT_TRUE(Parse(edge, 64).ok);
}

TEST(ProtocolTest, JsonDepthIgnoresBracketsInsideStrings) {
  EXPECT_EQ(protocol::JsonDepth(R"({"a": "[[[{{{\"[[["})", 10), 1);
  EXPECT_EQ(protocol::JsonDepth(R"([[1], [[2]]])", 10), 3);
  EXPECT_EQ(protocol::JsonDepth(std::string(50, '['), 10), 11);
}

TEST(ProtocolTest, ParamsValidateTypesAndRanges) {
  json body = {{"s", "x"}, {"n", 5}, {"f", 0.5}, {"b", true}, {"t", {1, 2, 300}}, {"bad", "7"}};
  protocol::Params p(body);
  EXPECT_EQ(*p.String("s"), "x");
  EXPECT_EQ(*p.IntOr("n", 0, 0, 10), 5);
  EXPECT_EQ(*p.IntOr("absent", 42, 0, 100), 42);
  EXPECT_DOUBLE_EQ(*p.NumberOr("f", 1, 0, 1), 0.5);
  EXPECT_TRUE(*p.BoolOr("b", false));

  auto e1 = p.IntOr("bad", 0, 0, 10);
  EXPECT_EQ(e1.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(e1.status().message().find("'bad'"), std::string::npos);
  EXPECT_EQ(p.IntOr("n", 0, 6, 10).status().code(), StatusCode::kInvalidArgument);
  // 300 is outside the vocabulary.
  EXPECT_EQ(p.Tokens("t", 256).status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(*p.Tokens("t", 301), (std::vector<int32_t>{1, 2, 300}));
  EXPECT_EQ(p.String("missing").status().code(), StatusCode::kInvalidArgument);
}

TEST(ProtocolTest, EveryServiceStatusHasOneWireCode) {
  EXPECT_EQ(protocol::WireCode(Status::Busy("x")), ErrorCode::kBusy);
  EXPECT_EQ(protocol::WireCode(Status::TooManySessions("x")), ErrorCode::kTooManySessions);
  EXPECT_EQ(protocol::WireCode(Status::TooManyRequests("x")), ErrorCode::kTooManyRequests);
  // A full storage quota keeps the code JSON-lines clients know (HTTP makes it a 429).
  EXPECT_EQ(protocol::WireCode(Status::QuotaExceeded("x")), ErrorCode::kResourceExhausted);
  EXPECT_EQ(protocol::WireCode(Status::NotFound("x")), ErrorCode::kNotFound);
  EXPECT_EQ(protocol::WireCode(Status::IOError("disk")), ErrorCode::kInternal);
  // Internal errors carry the whole Status text; others only the message.
  json internal = json::parse(protocol::ErrorLine(1, Status::Corruption("bad page")));
  EXPECT_EQ(internal["error"]["code"], "internal");
  EXPECT_EQ(internal["error"]["message"], "corruption: bad page");
  json busy = json::parse(protocol::ErrorLine(2, Status::Busy("in use")));
  EXPECT_EQ(busy["error"]["code"], "busy");
  EXPECT_EQ(busy["error"]["message"], "in use");
}

TEST(ProtocolTest, LinesAreSingleLineJson) {
  std::string r = protocol::ResultLine(json("a\nb"), {{"text", "x\ny"}});
  EXPECT_EQ(r.find('\n'), std::string::npos);
  json back = json::parse(r);
  EXPECT_EQ(back["id"], "a\nb");
  EXPECT_EQ(back["result"]["text"], "x\ny");
  json err = json::parse(protocol::ErrorLine(nullptr, ErrorCode::kLineTooLong, "too long"));
  EXPECT_TRUE(err["id"].is_null());
  EXPECT_EQ(err["error"]["code"], "line_too_long");
  // Invalid UTF-8 in generated text must not make the reply unserialisable.
  std::string ev = protocol::EventLine(1, "token", {{"text", std::string("\xff\xfe")}});
  EXPECT_NO_THROW(json::parse(ev));
}

TEST(ProtocolTest, SessionIds) {
  EXPECT_TRUE(protocol::IsValidSessionId("agent-7.b:c_d"));
  EXPECT_FALSE(protocol::IsValidSessionId(""));
  EXPECT_FALSE(protocol::IsValidSessionId("a b"));
  EXPECT_FALSE(protocol::IsValidSessionId("../x/y"));
  EXPECT_FALSE(protocol::IsValidSessionId(std::string(129, 'a')));
}

TEST(ProtocolTest, FormatsWallClock) {
  // 2021-01-01T00:00:00.250Z
  EXPECT_EQ(protocol::FormatWallMicros(int64_t{1609459200} * 1000000 + 250000),
            "2021-01-01T00:00:00.250Z");
}

std::vector<std::string> Frame(LineFramer& f, std::string_view data, int* too_long) {
  std::vector<std::string> lines;
  f.Feed(
      data, [&](std::string_view l) { lines.emplace_back(l); }, [&] { ++*too_long; });
  return lines;
}

TEST(LineFramerTest, SplitsAcrossChunksAndStripsCarriageReturns) {
  LineFramer f(100);
  int too_long = 0;
  EXPECT_TRUE(Frame(f, "ab", &too_long).empty());
  EXPECT_EQ(Frame(f, "c\r\nde\nf", &too_long), (std::vector<std::string>{"abc", "de"}));
  EXPECT_EQ(f.pending_bytes(), 1u);
  EXPECT_EQ(Frame(f, "\n", &too_long), (std::vector<std::string>{"f"}));
  EXPECT_EQ(too_long, 0);
}

TEST(LineFramerTest, OverlongLineIsReportedOnceAndSkippedToItsNewline) {
  LineFramer f(8);
  int too_long = 0;
  EXPECT_TRUE(Frame(f, "0123456", &too_long).empty());
  EXPECT_TRUE(Frame(f, "789abc", &too_long).empty());  // now 13 bytes: over the limit
  EXPECT_EQ(too_long, 1);
  EXPECT_TRUE(Frame(f, std::string(1000, 'x'), &too_long).empty());
  EXPECT_EQ(too_long, 1);
  EXPECT_EQ(Frame(f, "yy\nok\n", &too_long), (std::vector<std::string>{"ok"}));
  EXPECT_EQ(too_long, 1);
  // A line of exactly the limit passes.
  EXPECT_EQ(Frame(f, "12345678\n", &too_long), (std::vector<std::string>{"12345678"}));
}

TEST(LineFramerTest, RandomChunkingMatchesSplittingTheWholeStream) {
  const uint64_t seed = testing::TestSeed();
  std::mt19937_64 rng(seed);
  std::string stream;
  std::vector<std::string> expected;
  for (int i = 0; i < 200; ++i) {
    std::string line(rng() % 40, 'a' + static_cast<char>(i % 26));
    stream += line + "\n";
    expected.push_back(line);
  }
  LineFramer f(64);
  int too_long = 0;
  std::vector<std::string> got;
  for (size_t pos = 0; pos < stream.size();) {
    size_t n = 1 + rng() % 17;
    auto lines = Frame(f, std::string_view(stream).substr(pos, n), &too_long);
    got.insert(got.end(), lines.begin(), lines.end());
    pos += n;
  }
  EXPECT_EQ(got, expected) << "seed " << seed;
  EXPECT_EQ(too_long, 0);
}

}  // namespace
}  // namespace kvkeep
