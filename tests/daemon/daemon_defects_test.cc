// Issue 11's defects 7, 8 and 9 against a real kvkeepd.
//
// Defect 7: a reply larger than the output cap (limits.max_output_buffer_bytes)
// used to close the connection with no error line, and session.info always carried the
// tool events. Now such a reply is a resource_exhausted error for its id, the connection
// keeps serving, and session.info can leave the messages and the tool events out.
#include "tests/daemon/daemon_harness.h"

namespace kvkeep::testing {
namespace {

TEST(DaemonDefectsTest, AReplyOverTheCapIsAnErrorAndInfoCanLeaveThingsOut) {
  DaemonFixture f({"--max-output-buffer-bytes", "65536"});
  ASSERT_TRUE(f.daemon.Start()) << f.daemon.Log();
  LineClient c(f.daemon.socket_path());
  c.Ok({{"id", 1}, {"verb", "session.open"}, {"session", "big"}});
  for (int i = 0; i < 2; ++i) {
    c.Ok({{"id", 2},
          {"verb", "session.append"},
          {"session", "big"},
          {"messages",
           {{{"role", "user"}, {"content", std::string(40000, 'm')}, {"tokens", {5}}}}}});
    c.Ok({{"id", 3},
          {"verb", "session.tool_begin"},
          {"session", "big"},
          {"tool", "bash"},
          {"args", std::string(40000, 'a')}});
  }
  json info = {{"id", 4}, {"verb", "session.info"}, {"session", "big"}};
  json e = c.Call(info).back();
  ASSERT_TRUE(e.contains("error")) << e.dump().substr(0, 200);
  EXPECT_EQ(e["id"], 4);
  EXPECT_EQ(e["error"]["code"], "resource_exhausted");
  EXPECT_NE(e["error"]["message"].get<std::string>().find("max_output_buffer_bytes"),
            std::string::npos);
  // Without the messages the 80 KB of tool args still pass the cap...
  info["messages"] = false;
  EXPECT_EQ(c.ErrorCode(info), "resource_exhausted");
  // ...and without the tool events too, the summary comes back on the same connection.
  info["tool_events"] = false;
  json small = c.Ok(info);
  EXPECT_EQ(small["num_messages"], 2);
  EXPECT_FALSE(small.contains("tool_events"));
  EXPECT_FALSE(small.contains("messages"));
  info["messages"] = true;
  info["tool_events"] = "yes";
  EXPECT_EQ(c.ErrorCode(info), "invalid_argument");
}

// Defect 9: `"session": ""` was taken as absent (a new session with a generated id); a 7 MB
// request id was echoed on every stream event.
TEST(DaemonDefectsTest, EmptySessionNamesAndLongIdsAreRefused) {
  DaemonFixture f;
  ASSERT_TRUE(f.daemon.Start()) << f.daemon.Log();
  LineClient c(f.daemon.socket_path());
  EXPECT_EQ(c.ErrorCode({{"id", 1}, {"verb", "session.open"}, {"session", ""}}),
            "invalid_argument");
  EXPECT_TRUE(c.Ok({{"id", 2}, {"verb", "sessions.list"}})["sessions"].empty());
  c.Ok({{"id", 3}, {"verb", "session.open"}, {"session", "p"}});
  EXPECT_EQ(
      c.ErrorCode({{"id", 4}, {"verb", "session.fork"}, {"session", "p"}, {"new_session", ""}}),
      "invalid_argument");
  ASSERT_TRUE(c.Send({{"id", std::string(1 << 20, 'i')}, {"verb", "hello"}}));
  auto reply = c.ReadJson();
  ASSERT_TRUE(reply.has_value());
  json e = *reply;
  EXPECT_EQ(e["error"]["code"], "invalid_argument");
  EXPECT_TRUE(e["id"].is_null());  // not echoed
  EXPECT_EQ(c.Ok({{"id", 5}, {"verb", "sessions.list"}})["sessions"].size(), 1u);
}

// Defect 8: a generation cut off by the context limit said `length` and stored a session
// longer than max_context_tokens, which could then not continue.
TEST(DaemonDefectsTest, AGenerationCutByTheContextSaysSoAndTheSessionStaysServable) {
  DaemonFixture f({"--kv-blocks", "8"});  // 8 blocks of 16 tokens: a 128-token context
  ASSERT_TRUE(f.daemon.Start()) << f.daemon.Log();
  LineClient c(f.daemon.socket_path());
  const int64_t max_context =
      c.Ok({{"id", 1}, {"verb", "hello"}})["model"]["max_context_tokens"].get<int64_t>();
  ASSERT_EQ(max_context, 128);
  c.Ok({{"id", 2}, {"verb", "session.open"}, {"session", "ctx"}});
  c.Ok({{"id", 3},
        {"verb", "session.append"},
        {"session", "ctx"},
        {"messages", {{{"role", "user"}, {"content", "tell me a story"}}}}});
  json r = c.Terminal({{"id", 4},
                       {"verb", "session.generate"},
                       {"session", "ctx"},
                       {"max_tokens", 500},
                       {"temperature", 0}});
  ASSERT_TRUE(r.contains("result")) << r.dump();
  // Greedy decoding of the tiny model here does not hit EOS before the limit.
  EXPECT_EQ(r["result"]["finish_reason"], "context_limit");
  EXPECT_LE(r["result"]["num_tokens"].get<int64_t>(), max_context);
  json info = c.Ok({{"id", 5}, {"verb", "session.info"}, {"session", "ctx"}, {"messages", false}});
  EXPECT_LE(info["num_tokens"].get<int64_t>(), max_context);
  // The next turn is a clear refusal, not an engine failure, and the session survives.
  EXPECT_EQ(c.ErrorCode({{"id", 6}, {"verb", "session.generate"}, {"session", "ctx"}}),
            "resource_exhausted");
  EXPECT_TRUE(f.daemon.Alive());
}

}  // namespace
}  // namespace kvkeep::testing
