// HttpStream (daemon/http_server.h): the hand-off between a generation writing SSE chunks
// and the HTTP server reading them, and when a stream counts as abandoned (its client gone),
// which cancels the generation. The end-to-end case, a client hanging up while a scripted
// 4,400-token reply streams, is tests/openai/test_openai_api.py
// `test_disconnect_mid_stream_cancels_generation`.
#include <gtest/gtest.h>

#include <string>

#include "daemon/http_server.h"

namespace kvkeep {
namespace {

TEST(HttpStream, AnUnendedStreamThatTheServerFreesIsAbandonedOnce) {
  HttpStream stream;
  int abandoned = 0;
  stream.SetOnAbandon([&] { ++abandoned; });
  stream.Write("data: 1\n\n");
  stream.Abandon();  // the server freed the response: a write to the peer failed
  stream.Abandon();
  EXPECT_EQ(abandoned, 1);
  // Nothing written before or after reaches a reader any more.
  stream.Write("data: 2\n\n");
  std::string out;
  EXPECT_FALSE(stream.Read(&out, [] { return true; }));
  EXPECT_EQ(out, "");
}

TEST(HttpStream, AStreamThatEndedIsNotAbandonedWhenFreed) {
  HttpStream stream;
  int abandoned = 0;
  stream.SetOnAbandon([&] { ++abandoned; });
  stream.Write("data: [DONE]\n\n");
  stream.Close();
  std::string out;
  EXPECT_TRUE(stream.Read(&out, [] { return true; }));
  EXPECT_EQ(out, "data: [DONE]\n\n");
  stream.Abandon();  // the server frees every response once its body ended
  EXPECT_EQ(abandoned, 0);
}

TEST(HttpStream, AReaderThatFindsThePeerGoneAbandonsTheStreamOnce) {
  HttpStream stream;
  int abandoned = 0;
  stream.SetOnAbandon([&] { ++abandoned; });
  std::string out;
  // Nothing to send: after one tick the reader asks whether the peer is still there.
  EXPECT_FALSE(stream.Read(&out, [] { return false; }));
  EXPECT_EQ(abandoned, 1);
  stream.Abandon();  // then the server frees the response
  EXPECT_EQ(abandoned, 1);
}

}  // namespace
}  // namespace kvkeep
