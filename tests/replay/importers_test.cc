#include "tools/replay/importers.h"

#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <set>

#include "tests/testlib/test_util.h"
#include "tools/replay/trace.h"

namespace kvkeep::replay {
namespace {

namespace fs = std::filesystem;

std::vector<std::string> FilesIn(const std::string& dir, const std::string& suffix) {
  std::vector<std::string> out;
  for (const auto& e : fs::directory_iterator(dir)) {
    std::string p = e.path().string();
    if (p.size() >= suffix.size() &&
        p.compare(p.size() - suffix.size(), suffix.size(), suffix) == 0)
      out.push_back(p);
  }
  std::sort(out.begin(), out.end());
  return out;
}

// Structural validity of a canonical session, independent of the importer's logic.
void ExpectValid(const Session& s) {
  SCOPED_TRACE(s.source_file);
  EXPECT_FALSE(s.id.empty());
  EXPECT_GT(s.NumModelTurns(), 0);
  std::vector<std::string> open;  // tool_begin without tool_end, FIFO
  for (const Event& e : s.events) {
    EXPECT_GE(e.duration_s, 0);
    if (e.type == EventType::kToolBegin) open.push_back(e.tool);
    if (e.type == EventType::kToolEnd) {
      ASSERT_FALSE(open.empty()) << "tool_end without tool_begin";
      EXPECT_EQ(open.front(), e.tool);
      open.erase(open.begin());
      EXPECT_NE(e.timing, Timing::kNone);
    }
    if (e.type == EventType::kModel && e.tool_calls.empty() && !e.tokens) {
      EXPECT_FALSE(e.text.empty() && !e.completion_tokens) << "model turn with no content";
    }
  }
  EXPECT_TRUE(open.empty()) << "unclosed tool_begin";
}

void ExpectRoundTrip(const std::vector<Session>& sessions) {
  for (const Session& s : sessions) {
    Result<Session> back = SessionFromJson(SessionToJson(s));
    ASSERT_TRUE(back.ok()) << back.status().ToString();
    EXPECT_TRUE(*back == s) << s.id;
  }
}

struct Corpus {
  const char* format;
  const char* dir;
  const char* suffix;
};

TEST(Importers, EveryFileOfEveryFormatInSharedData) {
  KVKEEP_REQUIRE_SHARED_DATA();
  const std::string root = testing::SharedDataDir();
  const Corpus corpora[] = {
      {"mini-swe-agent", "traces/mini-swe-agent-v2-deepseek", ".json"},
      {"mini-swe-agent", "traces/mini-swe-agent-v1-gemini", ".json"},
      {"swe-agent", "traces/swe-agent", ".traj"},
      {"nebius", "traces/swe-agent-nebius-rows", ".json"},
      {"openhands", "traces/openhands", ".jsonl"},
      {"mooncake", "workloads", "mooncake_synthetic_trace.jsonl"},
      {"burstgpt", "workloads", "burstgpt_slice.csv"},
      {"burstgpt", "workloads", "burstgpt3_slice.csv"},
  };
  for (const Corpus& c : corpora) {
    SCOPED_TRACE(c.dir);
    std::vector<std::string> files = FilesIn(root + "/" + c.dir, c.suffix);
    ASSERT_FALSE(files.empty());
    std::vector<Session> sessions;
    ImportReport report;
    ASSERT_TRUE(ImportFiles(c.format, files, {}, &sessions, &report).ok());
    EXPECT_EQ(report.files, static_cast<int>(files.size()));
    ASSERT_GT(sessions.size(), 0u);
    // Agent trajectories are one session per file and none may be skipped; the workload
    // files legitimately skip failed requests (0 response tokens).
    if (std::string(c.format) != "mooncake" && std::string(c.format) != "burstgpt") {
      EXPECT_EQ(report.skipped, 0) << (report.errors.empty() ? "" : report.errors[0]);
      EXPECT_EQ(sessions.size(), files.size());
    }
    for (const Session& s : sessions) ExpectValid(s);
    ExpectRoundTrip(sessions);
  }
}

TEST(Importers, MiniSweV11KeepsRecordedTimingsAndToolCalls) {
  std::vector<Session> out;
  ASSERT_TRUE(
      ImportMiniSweAgent(testing::FixturesDir() + "/replay/mini-swe-agent-v2.traj.json", {}, &out)
          .ok());
  ASSERT_EQ(out.size(), 1u);
  const Session& s = out[0];
  ExpectValid(s);
  EXPECT_EQ(s.events[0].type, EventType::kSystem);
  EXPECT_EQ(s.events[1].type, EventType::kUser);
  const Event& model = s.events[2];
  ASSERT_EQ(model.type, EventType::kModel);
  ASSERT_EQ(model.tool_calls.size(), 1u);
  EXPECT_EQ(model.tool_calls[0].name, "bash");
  ASSERT_TRUE(model.completion_tokens.has_value());
  const Event& begin = s.events[3];
  ASSERT_EQ(begin.type, EventType::kToolBegin);
  EXPECT_FALSE(begin.command.empty());
  EXPECT_EQ(begin.command.find("{"), std::string::npos) << "command, not the JSON arguments";
  const Event& end = s.events[4];
  ASSERT_EQ(end.type, EventType::kToolEnd);
  EXPECT_EQ(end.timing, Timing::kRecorded);
  EXPECT_EQ(end.call_id, begin.call_id);
  // The second model call's latency is measured from the first tool result.
  EXPECT_EQ(s.events[5].type, EventType::kModel);
  EXPECT_EQ(s.events[5].timing, Timing::kRecorded);
}

TEST(Importers, MiniSweV1ObservationsBecomeToolResults) {
  std::vector<Session> out;
  ASSERT_TRUE(
      ImportMiniSweAgent(testing::FixturesDir() + "/replay/mini-swe-agent-v1.traj.json", {}, &out)
          .ok());
  ASSERT_EQ(out.size(), 1u);
  ExpectValid(out[0]);
  int observed = 0;
  for (const Event& e : out[0].events) {
    if (e.type == EventType::kToolEnd) {
      EXPECT_EQ(e.timing, Timing::kSynthetic);
      // Every result is an observation; the last command has none (the excerpt ends).
      if (!e.text.empty()) {
        ++observed;
        EXPECT_NE(e.text.find("<returncode>"), std::string::npos);
        EXPECT_TRUE(e.exit_code.has_value());
      }
    }
  }
  EXPECT_EQ(observed, 2);
  // Re-importing gives identical (deterministic) synthetic timings.
  std::vector<Session> again;
  ASSERT_TRUE(
      ImportMiniSweAgent(testing::FixturesDir() + "/replay/mini-swe-agent-v1.traj.json", {}, &again)
          .ok());
  EXPECT_TRUE(again[0] == out[0]);
}

TEST(Importers, MooncakeEqualHashIdsGiveEqualTokenBlocks) {
  std::vector<Session> out;
  ImportReport report;
  ASSERT_TRUE(
      ImportMooncake(testing::FixturesDir() + "/replay/mooncake.jsonl", {}, &out, &report).ok());
  ASSERT_EQ(report.skipped, 0);
  ASSERT_GE(out.size(), 2u);
  // Map every 512-token block to its hash id and compare contents across all requests.
  std::map<int64_t, std::vector<int32_t>> by_id;
  int shared = 0, distinct_pairs = 0;
  for (const Session& s : out) {
    const SyntheticTokens& t = *s.events[0].tokens;
    std::vector<int32_t> ids = SyntheticTokenIds(t, 256);
    ASSERT_EQ(static_cast<int64_t>(ids.size()), t.count);
    for (size_t b = 0; b < t.block_ids.size(); ++b) {
      size_t begin = b * 512, end = std::min(ids.size(), begin + 512);
      if (end - begin < 512) continue;  // a partial last block
      std::vector<int32_t> block(ids.begin() + begin, ids.begin() + end);
      for (int32_t id : block) ASSERT_TRUE(id >= 0 && id < 256);
      auto [it, fresh] = by_id.try_emplace(t.block_ids[b], block);
      if (!fresh) {
        EXPECT_EQ(it->second, block) << "hash id " << t.block_ids[b];
        ++shared;
      }
    }
  }
  EXPECT_GT(shared, 0) << "fixture must contain a shared prefix";
  for (auto a = by_id.begin(); a != by_id.end() && distinct_pairs < 50; ++a) {
    auto b = std::next(a);
    if (b == by_id.end()) break;
    EXPECT_NE(a->second, b->second);
    ++distinct_pairs;
  }
}

TEST(Importers, BurstGptSessionsGrowTheirContext) {
  std::vector<Session> out;
  ImportReport report;
  ASSERT_TRUE(
      ImportBurstGpt(testing::FixturesDir() + "/replay/burstgpt3.csv", {}, &out, &report).ok());
  ASSERT_FALSE(out.empty());
  bool multi_turn = false;
  for (const Session& s : out) {
    ExpectValid(s);
    if (s.NumModelTurns() > 1) {
      multi_turn = true;
      // turn k+1's user tokens are only what is new: request - (previous context)
      for (const Event& e : s.events) {
        if (e.type == EventType::kUser) {
          ASSERT_TRUE(e.tokens.has_value());
        }
      }
    }
    EXPECT_GE(s.arrival_s, 0);
  }
  EXPECT_TRUE(multi_turn);
}

class MalformedInput : public ::testing::Test {
 protected:
  std::string Write(const std::string& name, const std::string& body) {
    std::string path = dir_.File(name);
    std::ofstream(path) << body;
    return path;
  }
  testing::TempDir dir_;
};

TEST_F(MalformedInput, TruncatedJsonNamesTheFile) {
  std::string path = Write("t.traj.json", R"({"trajectory_format": "mini-swe-agent-1.1", "mess)");
  std::vector<Session> out;
  ImportReport report;
  ASSERT_TRUE(ImportFiles("mini-swe-agent", {path}, {}, &out, &report).ok());
  EXPECT_TRUE(out.empty());
  EXPECT_EQ(report.skipped, 1);
  ASSERT_EQ(report.errors.size(), 1u);
  EXPECT_NE(report.errors[0].find(path), std::string::npos) << report.errors[0];
  EXPECT_NE(report.errors[0].find("not valid JSON"), std::string::npos);
}

TEST_F(MalformedInput, MissingAndWrongTypedFieldsNameTheRecord) {
  std::string path = Write("w.traj.json", R"({"trajectory_format": "mini-swe-agent-1.1",
      "messages": [{"role": "system", "content": "s"}, {"content": "no role"}]})");
  std::vector<Session> out;
  Status st = ImportMiniSweAgent(path, {}, &out);
  ASSERT_FALSE(st.ok());
  EXPECT_NE(st.message().find("messages[1]"), std::string::npos) << st.message();

  path = Write("n.json", R"({"trajectory": {"role": "ai"}})");
  st = ImportNebius(path, {}, &out);
  ASSERT_FALSE(st.ok());
  EXPECT_NE(st.message().find("trajectory"), std::string::npos) << st.message();

  path = Write("m.jsonl",
               "{\"timestamp\": 0, \"input_length\": 10, \"output_length\": 1, \"hash_ids\": [1]}\n"
               "{\"timestamp\": 5, \"input_length\": \"ten\", \"output_length\": 1}\n"
               "{not json\n");
  ImportReport report;
  ASSERT_TRUE(ImportMooncake(path, {}, &out, &report).ok());
  EXPECT_EQ(report.skipped, 2);
  ASSERT_EQ(report.errors.size(), 2u);
  EXPECT_NE(report.errors[0].find(":2:"), std::string::npos) << report.errors[0];
  EXPECT_NE(report.errors[1].find(":3:"), std::string::npos) << report.errors[1];

  path = Write("b.csv", "Timestamp,Request tokens\n1,2\n");
  report = {};
  EXPECT_FALSE(ImportBurstGpt(path, {}, &out, &report).ok());
}

// Found by fuzz_importers: rows out of time order, where a later row of one session
// shrinks its context (a new segment) at a timestamp before every session's first row,
// gave that segment a negative arrival_s, which the canonical reader then refused.
TEST_F(MalformedInput, BurstGptRowsOutOfTimeOrderArriveAtZeroOrLater) {
  const std::string path = Write("late.csv",
                                 "Timestamp,Session ID,Elapsed time,Model,Request tokens,"
                                 "Response tokens,Total tokens,Log Type\n"
                                 "100,a,5,GPT-4,900,40,940,Conversation log\n"
                                 "200,b,5,GPT-4,300,40,340,Conversation log\n"
                                 "50,a,5,GPT-4,100,40,140,Conversation log\n");
  std::vector<Session> out;
  ImportReport report;
  ASSERT_TRUE(ImportBurstGpt(path, {}, &out, &report).ok());
  ASSERT_EQ(out.size(), 3u);  // a, its second segment a#2, and b
  for (const Session& s : out) {
    EXPECT_GE(s.arrival_s, 0) << s.id;
    auto back = SessionFromJson(SessionToJson(s));
    EXPECT_TRUE(back.ok()) << s.id << ": " << back.status().ToString();
  }
}

// Found by fuzz_importers (UBSan): a BurstGPT token count of 1.4e46 was cast to int64_t,
// which has no such value. Counts out of range, and NaN or infinity anywhere, skip the row;
// a mini-swe-agent completion_tokens or returncode out of range reads as unknown.
TEST_F(MalformedInput, NumbersOutOfRangeAreRefusedNotCast) {
  const std::string path = Write("huge.csv",
                                 "Timestamp,Session ID,Elapsed time,Model,Request tokens,"
                                 "Response tokens,Total tokens,Log Type\n"
                                 "1,a,5,GPT-4,1.41111e46,40,940,Conversation log\n"
                                 "2,a,5,GPT-4,100,1e300,140,Conversation log\n"
                                 "inf,a,5,GPT-4,100,40,140,Conversation log\n"
                                 "3,a,nan,GPT-4,100,40,140,Conversation log\n"
                                 "4,b,5,GPT-4,100,40,140,Conversation log\n");
  std::vector<Session> out;
  ImportReport report;
  ASSERT_TRUE(ImportBurstGpt(path, {}, &out, &report).ok());
  EXPECT_EQ(report.skipped, 4);
  ASSERT_EQ(out.size(), 1u);
  EXPECT_EQ(out[0].id, "burstgpt-b");
  ASSERT_FALSE(report.errors.empty());
  EXPECT_NE(report.errors[0].find("finite"), std::string::npos) << report.errors[0];

  const std::string mooncake = Write("huge.jsonl",
                                     "{\"timestamp\": 0, \"input_length\": 9223372036854775800, "
                                     "\"output_length\": 1, \"hash_ids\": [1]}\n");
  report = {};
  ASSERT_TRUE(ImportMooncake(mooncake, {}, &out, &report).ok());
  EXPECT_EQ(report.skipped, 1);

  const std::string traj = Write("huge.traj.json", R"({"trajectory_format": "mini-swe-agent-1.1",
      "messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "u"},
        {"role": "assistant", "content": "a",
         "extra": {"response": {"usage": {"completion_tokens": 1e30}}},
         "tool_calls": [{"id": "c1", "function": {"name": "bash", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "x",
         "extra": {"returncode": -1e30}}]})");
  std::vector<Session> trajs;
  ASSERT_TRUE(ImportMiniSweAgent(traj, {}, &trajs).ok());
  ASSERT_EQ(trajs.size(), 1u);
  int checked = 0;
  for (const Event& e : trajs[0].events) {
    if (e.type == EventType::kModel) {
      EXPECT_FALSE(e.completion_tokens.has_value());
      ++checked;
    }
    if (e.type == EventType::kToolEnd) {
      EXPECT_FALSE(e.exit_code.has_value());
      ++checked;
    }
  }
  EXPECT_EQ(checked, 2);
}

TEST_F(MalformedInput, CanonicalTraceErrorsNameLineAndField) {
  std::string path = Write("trace.jsonl",
                           "{\"format\":\"kvkeep-trace\",\"version\":1,\"session\":\"a\","
                           "\"events\":[{\"type\":\"user\",\"text\":\"hi\"}]}\n"
                           "{\"format\":\"kvkeep-trace\",\"version\":1,\"session\":\"b\","
                           "\"events\":[{\"type\":\"model\",\"text\":7}]}\n");
  Result<std::vector<Session>> r = ReadTraceFile(path);
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.status().message().find(":2"), std::string::npos) << r.status().message();
  EXPECT_NE(r.status().message().find("events[0]"), std::string::npos);
  EXPECT_NE(r.status().message().find("'text'"), std::string::npos);
  EXPECT_FALSE(SessionFromJson("[1,2]").ok());
  EXPECT_FALSE(
      SessionFromJson(R"({"format":"kvkeep-trace","version":2,"session":"x","events":[]})").ok());
}

TEST(Importers, UnknownFormatIsRefused) {
  std::vector<Session> out;
  ImportReport report;
  Status st = ImportFiles("langchain", {"x"}, {}, &out, &report);
  EXPECT_TRUE(st.IsInvalidArgument());
  EXPECT_NE(st.message().find("mini-swe-agent"), std::string::npos);
}

// Found by fuzz_trace: a tool event with "tool": "" was read, then written without its
// tool, and that no longer read back.
TEST(Trace, AToolEventWithAnEmptyToolIsRefused) {
  const std::string line = R"({"format":"kvkeep-trace","version":1,"session":"s","events":[)"
                           R"({"type":"user","text":"hi"},{"type":"tool_begin","tool":""}]})";
  auto s = SessionFromJson(line);
  ASSERT_FALSE(s.ok());
  EXPECT_NE(s.status().message().find("tool"), std::string::npos) << s.status().ToString();
}

TEST(Trace, WriteThenReadIsIdentical) {
  std::vector<Session> sessions;
  ImportReport report;
  ASSERT_TRUE(ImportFiles("mini-swe-agent",
                          {testing::FixturesDir() + "/replay/mini-swe-agent-v2.traj.json",
                           testing::FixturesDir() + "/replay/mini-swe-agent-v1.traj.json"},
                          {}, &sessions, &report)
                  .ok());
  testing::TempDir dir;
  ASSERT_TRUE(WriteTraceFile(dir.File("t.jsonl"), sessions).ok());
  Result<std::vector<Session>> back = ReadTraceFile(dir.File("t.jsonl"));
  ASSERT_TRUE(back.ok()) << back.status().ToString();
  EXPECT_TRUE(*back == sessions);
}

TEST(Trace, ExtractFencedCommandTakesTheLastBlock) {
  EXPECT_EQ(ExtractFencedCommand("THOUGHT: x\n\n```bash\nls -la\n```"), "ls -la");
  EXPECT_EQ(ExtractFencedCommand("a\n```\nfind_file x\n```\nthen\n```\nopen y\n```"), "open y");
  EXPECT_EQ(ExtractFencedCommand("no block here"), "");
}

}  // namespace
}  // namespace kvkeep::replay
