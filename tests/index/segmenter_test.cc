// Segmenter: sentence and block spans against hand-cut expectations, the length cap on
// UTF-8 boundaries, and windows that render speakers, stop at group changes and map back
// to their messages.
#include "index/segmenter.h"

#include <gtest/gtest.h>

namespace kvkeep::index {
namespace {

std::vector<std::string> Pieces(const std::string& text, MessageKind kind, int64_t cap) {
  std::vector<std::string> out;
  for (auto [b, e] : SplitSpans(text, kind, cap)) out.push_back(text.substr(b, e - b));
  return out;
}

TEST(Segmenter, SplitsProseIntoSentences) {
  EXPECT_EQ(
      Pieces("Hi there. How are you?! Fine...  Good\n\nNew para", MessageKind::kProse, 1000),
      (std::vector<std::string>{"Hi there.", "How are you?!", "Fine...", "Good", "New para"}));
  // A dot inside a token (a version, a path) is not a sentence end.
  EXPECT_EQ(Pieces("Use v1.2 of a.out now.", MessageKind::kProse, 1000),
            (std::vector<std::string>{"Use v1.2 of a.out now."}));
  EXPECT_TRUE(Pieces("   \n\n  ", MessageKind::kProse, 1000).empty());
}

TEST(Segmenter, SplitsCodeIntoBlocksAtBlankLines) {
  const std::string code = "int f() {\n  return 1;\n}\n\n\nint g();\n";
  EXPECT_EQ(Pieces(code, MessageKind::kCode, 1000),
            (std::vector<std::string>{"int f() {\n  return 1;\n}", "int g();"}));
  // Sentence ends mean nothing in code.
  EXPECT_EQ(Pieces("a. b. c.", MessageKind::kToolOutput, 1000),
            (std::vector<std::string>{"a. b. c."}));
}

TEST(Segmenter, CapsLengthWithoutSplittingCharacters) {
  std::string text;
  for (int i = 0; i < 30; ++i) text += "\xc3\xa9";  // 'é', two bytes each
  const auto spans = SplitSpans(text, MessageKind::kToolOutput, 7);
  int64_t covered = 0;
  for (auto [b, e] : spans) {
    EXPECT_LE(e - b, 7);
    EXPECT_NE(static_cast<unsigned char>(text[b]) & 0xC0, 0x80) << "starts mid-character";
    covered += e - b;
  }
  EXPECT_EQ(covered, static_cast<int64_t>(text.size()));
}

TEST(Segmenter, SegmentsKeepTheirMessageAndByteSpan) {
  std::vector<Message> msgs = {{"user", "One. Two.", MessageKind::kProse},
                               {"tool", "line1\n\nline2", MessageKind::kToolOutput}};
  const auto segs = SegmentMessages(msgs, SegmenterOptions{});
  ASSERT_EQ(segs.size(), 4u);
  for (const Segment& s : segs) {
    EXPECT_EQ(s.end_message, s.first_message + 1);
    EXPECT_EQ(msgs[s.first_message].text.substr(s.begin_byte, s.end_byte - s.begin_byte), s.text);
  }
  EXPECT_EQ(segs[1].text, "Two.");
  EXPECT_EQ(segs[3].first_message, 1);
}

TEST(Segmenter, WindowsRenderSpeakersAndStopAtGroups) {
  std::vector<Message> msgs;
  for (int i = 0; i < 7; ++i) {
    Message m;
    m.speaker = i % 2 ? "Bob" : "Ann";
    m.text = "t" + std::to_string(i);
    m.group = i < 5 ? 1 : 2;
    m.date = i < 5 ? "May 1" : "May 9";
    msgs.push_back(m);
  }
  SegmenterOptions o;
  o.window_messages = 4;
  o.window_dates = false;
  auto windows = MakeWindows(msgs, o);
  ASSERT_EQ(windows.size(), 3u);  // [0,4) [4,5) [5,7)
  EXPECT_EQ(windows[0].text, "Ann: t0\nBob: t1\nAnn: t2\nBob: t3");
  EXPECT_EQ(windows[1].first_message, 4);
  EXPECT_EQ(windows[1].end_message, 5);
  EXPECT_EQ(windows[2].first_message, 5);
  EXPECT_EQ(windows[2].end_message, 7);
  o.window_dates = true;
  windows = MakeWindows(msgs, o);
  EXPECT_EQ(windows[2].text, "[May 9]\nBob: t5\nAnn: t6");
}

}  // namespace
}  // namespace kvkeep::index
