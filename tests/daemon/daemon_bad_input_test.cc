// Bad input: each case gets its documented error, the daemon survives, and a client
// connected throughout is unaffected.
#include <thread>

#include "tests/daemon/daemon_harness.h"

namespace kvkeep::testing {
namespace {

class DaemonBadInputTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    fixture_ = new DaemonFixture();
    ASSERT_TRUE(fixture_->daemon.Start()) << fixture_->daemon.Log();
    bystander_ = new LineClient(fixture_->daemon.socket_path());
    bystander_->Ok({{"id", 1}, {"verb", "session.open"}, {"session", "bystander"}});
  }
  static void TearDownTestSuite() {
    delete bystander_;
    delete fixture_;
  }
  void TearDown() override {
    // After every case the daemon is alive and the bystander's session still works.
    ASSERT_TRUE(fixture_->daemon.Alive()) << fixture_->daemon.Log();
    json r = bystander_->Ok({{"id", 2},
                             {"verb", "session.append"},
                             {"session", "bystander"},
                             {"messages", {{{"role", "user"}, {"content", "still here"}}}}});
    EXPECT_TRUE(r.is_object());
  }
  const std::string& socket() { return fixture_->daemon.socket_path(); }

  static DaemonFixture* fixture_;
  static LineClient* bystander_;
};
DaemonFixture* DaemonBadInputTest::fixture_ = nullptr;
LineClient* DaemonBadInputTest::bystander_ = nullptr;

TEST_F(DaemonBadInputTest, MalformedJsonIsBadJsonAndTheConnectionGoesOn) {
  LineClient c(socket());
  ASSERT_TRUE(c.SendRaw("{\"id\": 1, \"verb\": \n"));
  json e = *c.ReadJson();
  EXPECT_EQ(e["error"]["code"], "bad_json");
  EXPECT_TRUE(e["id"].is_null());
  ASSERT_TRUE(c.SendRaw("[1,2,3]\n"));
  EXPECT_EQ((*c.ReadJson())["error"]["code"], "bad_json");
  ASSERT_TRUE(c.SendRaw("\n   \n"));  // blank lines are ignored
  EXPECT_EQ(c.Ok({{"id", 9}, {"verb", "hello"}})["protocol"], 1);
}

TEST_F(DaemonBadInputTest, TruncatedLineThenDisconnect) {
  {
    LineClient c(socket());
    ASSERT_TRUE(c.SendRaw("{\"id\": 1, \"verb\": \"hel"));
  }  // closes without a newline
  LineClient c(socket());
  EXPECT_EQ(c.Ok({{"id", 1}, {"verb", "hello"}})["server"], "kvkeepd");
}

TEST_F(DaemonBadInputTest, HalfClosedClientStillGetsItsReplies) {
  LineClient c(socket());
  ASSERT_TRUE(c.SendRaw("{\"id\": 1, \"verb\": \"hello\"}\n{\"id\": 2, \"verb\": \"stats\"}\n"));
  c.ShutdownWrite();
  EXPECT_EQ((*c.ReadJson())["id"], 1);
  EXPECT_EQ((*c.ReadJson())["id"], 2);
  EXPECT_FALSE(c.ReadLine(10000).has_value());  // then the daemon closes
}

TEST_F(DaemonBadInputTest, OversizedLineAtTheDefaultLimit) {
  LineClient c(socket());
  std::string big = "{\"id\": 1, \"verb\": \"hello\", \"pad\": \"" + std::string(9 << 20, 'x') +
                    "\"}\n{\"id\": 2, \"verb\": \"hello\"}\n";
  std::thread writer([&] { c.SendRaw(big); });
  json e = *c.ReadJson();
  EXPECT_EQ(e["error"]["code"], "line_too_long");
  EXPECT_TRUE(e["id"].is_null());
  json next = *c.ReadJson();  // resynchronised at the newline
  EXPECT_EQ(next["id"], 2);
  EXPECT_TRUE(next.contains("result"));
  writer.join();
}

TEST_F(DaemonBadInputTest, TooDeepJson) {
  LineClient c(socket());
  std::string deep = "{\"id\": 3, \"verb\": \"hello\", \"x\": " + std::string(1000, '[') +
                     std::string(1000, ']') + "}\n";
  ASSERT_TRUE(c.SendRaw(deep));
  EXPECT_EQ((*c.ReadJson())["error"]["code"], "too_deep");
}

TEST_F(DaemonBadInputTest, UnknownVerbEchoesTheId) {
  LineClient c(socket());
  json e = c.Terminal({{"id", "abc"}, {"verb", "session.explode"}});
  EXPECT_EQ(e["id"], "abc");
  EXPECT_EQ(e["error"]["code"], "unknown_verb");
  EXPECT_EQ(c.ErrorCode({{"id", 2}}), "unknown_verb");
  EXPECT_EQ(c.ErrorCode({{"id", 3}, {"verb", 7}}), "unknown_verb");
}

TEST_F(DaemonBadInputTest, WrongTypesAreInvalidArgument) {
  LineClient c(socket());
  c.Ok({{"id", 1}, {"verb", "session.open"}, {"session", "types"}});
  EXPECT_EQ(c.ErrorCode({{"id", 2}, {"verb", "session.open"}, {"session", 5}}), "invalid_argument");
  EXPECT_EQ(c.ErrorCode({{"id", 3}, {"verb", "session.open"}, {"session", "bad id/x"}}),
            "invalid_argument");
  EXPECT_EQ(c.ErrorCode(
                {{"id", 4}, {"verb", "session.append"}, {"session", "types"}, {"messages", "hi"}}),
            "invalid_argument");
  EXPECT_EQ(c.ErrorCode({{"id", 5},
                         {"verb", "session.append"},
                         {"session", "types"},
                         {"messages", {{{"role", "wizard"}, {"content", "x"}}}}}),
            "invalid_argument");
  EXPECT_EQ(c.ErrorCode({{"id", 6},
                         {"verb", "session.append"},
                         {"session", "types"},
                         {"messages", {{{"role", "user"}, {"tokens", {1, 999999}}}}}}),
            "invalid_argument");
  EXPECT_EQ(
      c.ErrorCode(
          {{"id", 7}, {"verb", "session.generate"}, {"session", "types"}, {"max_tokens", "ten"}}),
      "invalid_argument");
  EXPECT_EQ(
      c.ErrorCode(
          {{"id", 8}, {"verb", "session.generate"}, {"session", "types"}, {"temperature", -1}}),
      "invalid_argument");
  EXPECT_EQ(c.ErrorCode({{"id", 9},
                         {"verb", "session.generate"},
                         {"session", "types"},
                         {"forced", "a"},
                         {"forced_tokens", {1}}}),
            "invalid_argument");
  EXPECT_EQ(
      c.ErrorCode({{"id", 10}, {"verb", "session.close"}, {"session", "types"}, {"keep", "yes"}}),
      "invalid_argument");
  EXPECT_EQ(c.ErrorCode({{"id", 11}, {"verb", "stats"}, {"format", "xml"}}), "invalid_argument");
  // An id of the wrong type cannot be echoed: the error carries a null id.
  ASSERT_TRUE(c.Send({{"id", {{"a", 1}}}, {"verb", "hello"}}));
  json bad_id = *c.ReadJson();
  EXPECT_TRUE(bad_id["id"].is_null());
  EXPECT_EQ(bad_id["error"]["code"], "invalid_argument");
  // A failed append left nothing behind.
  EXPECT_EQ(c.Ok({{"id", 12}, {"verb", "session.info"}, {"session", "types"}})["num_messages"], 0);
}

TEST_F(DaemonBadInputTest, UnknownSessionIsNotFound) {
  LineClient c(socket());
  for (const char* verb : {"session.append", "session.generate", "session.info", "session.close",
                           "session.fork", "session.tool_begin", "session.tool_end"}) {
    json req = {{"id", 1},
                {"verb", verb},
                {"session", "no-such-session"},
                {"messages", {{{"role", "user"}, {"content", "x"}}}},
                {"tool", "t"},
                {"content", "x"}};
    EXPECT_EQ(c.ErrorCode(req), "not_found") << verb;
  }
}

TEST_F(DaemonBadInputTest, ClientDisconnectingMidStreamCancelsItsGeneration) {
  {
    LineClient c(socket());
    c.Ok({{"id", 1}, {"verb", "session.open"}, {"session", "vanish"}});
    c.Ok({{"id", 2},
          {"verb", "session.append"},
          {"session", "vanish"},
          {"messages", {{{"role", "user"}, {"content", "talk a lot"}}}}});
    ASSERT_TRUE(c.Send({{"id", 3},
                        {"verb", "session.generate"},
                        {"session", "vanish"},
                        {"max_tokens", 4000},
                        {"stream", true}}));
    json ev = *c.ReadJson();
    ASSERT_EQ(ev["event"], "token");
  }  // gone mid-stream
  // The engine must drop the request: the session stops generating long before 4000
  // tokens could have been decoded, and nothing was appended.
  LineClient c(socket());
  json info;
  for (int i = 0; i < 200; ++i) {
    info = c.Ok({{"id", 4}, {"verb", "session.info"}, {"session", "vanish"}});
    if (info["generating"] == false) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(25));
  }
  EXPECT_EQ(info["generating"], false);
  EXPECT_EQ(info["num_messages"], 1);
  json stats = c.Ok({{"id", 5}, {"verb", "stats"}});
  EXPECT_LT(stats["tokens"]["generated"].get<int64_t>(), 4000);
}

TEST_F(DaemonBadInputTest, CancelByRequestId) {
  LineClient c(socket());
  c.Ok({{"id", 1}, {"verb", "session.open"}, {"session", "cancel-me"}});
  c.Ok({{"id", 2},
        {"verb", "session.append"},
        {"session", "cancel-me"},
        {"messages", {{{"role", "user"}, {"content", "go"}}}}});
  ASSERT_TRUE(c.Send({{"id", "gen"},
                      {"verb", "session.generate"},
                      {"session", "cancel-me"},
                      {"max_tokens", 4000},
                      {"stream", true}}));
  ASSERT_EQ((*c.ReadJson())["event"], "token");
  // A second generate on the same session while the first runs is busy.
  EXPECT_EQ(c.ErrorCode({{"id", "again"}, {"verb", "session.generate"}, {"session", "cancel-me"}}),
            "busy");
  ASSERT_TRUE(c.Send({{"id", "stop"}, {"verb", "cancel"}, {"target", "gen"}}));
  bool cancel_ok = false, gen_cancelled = false;
  while (!(cancel_ok && gen_cancelled)) {
    auto line = c.ReadJson();
    ASSERT_TRUE(line.has_value());
    if ((*line)["id"] == "stop") cancel_ok = (*line)["result"]["cancelled"] == true;
    if ((*line)["id"] == "gen" && line->contains("error")) {
      EXPECT_EQ((*line)["error"]["code"], "cancelled");
      gen_cancelled = true;
    }
  }
  EXPECT_EQ(c.ErrorCode({{"id", 3}, {"verb", "cancel"}, {"target", "gen"}}), "not_found");
  EXPECT_EQ(c.ErrorCode({{"id", 4}, {"verb", "cancel"}}), "invalid_argument");
  json info = c.Ok({{"id", 5}, {"verb", "session.info"}, {"session", "cancel-me"}});
  EXPECT_EQ(info["num_messages"], 1);  // a cancelled generation appends nothing
  EXPECT_EQ(info["generating"], false);
}

}  // namespace
}  // namespace kvkeep::testing
