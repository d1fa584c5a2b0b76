// GgufFile: parsing of every metadata type, and malformed files (truncated at every byte,
// bad magic, absurd counts, offsets past the end, unknown types) refused with an error that
// names the field, never a crash. Files are built byte by byte here (GgufBuilder) or come
// from tests/fixtures/gguf (written by the `gguf` Python package, gen_gguf.py).
#include "engine/gguf_file.h"

#include <gtest/gtest.h>

#include <cstring>
#include <string>

#include "tests/engine/gguf_test_util.h"
#include "tests/testlib/test_util.h"

namespace kvkeep {
namespace {

using testing::GgufBuilder;

// A valid v2 file: two metadata keys, one 32x2 F32 tensor and one 32x1 Q8_0 tensor.
std::string ValidFile(uint32_t version = 2) {
  GgufBuilder b;
  b.Header(version, 2, 2);
  b.Str("general.architecture").U32(8).Str("llama");
  b.Str("test.scale").U32(6).F32(0.5f);
  b.Tensor("a", 32, 2, /*F32*/ 0, 0);
  b.Tensor("b", 32, 1, /*Q8_0*/ 8, 256);
  b.PadTo(32).Zeros(256 + 34);
  return b.bytes();
}

TEST(GgufFile, ParsesAHandBuiltFile) {
  for (uint32_t version : {2u, 3u}) {
    std::string bytes = ValidFile(version);
    auto f = GgufFile::Parse(bytes, "mem");
    ASSERT_TRUE(f.ok()) << f.status().ToString();
    EXPECT_EQ((*f)->version(), version);
    EXPECT_EQ(*(*f)->GetString("general.architecture"), "llama");
    EXPECT_EQ(*(*f)->GetFloat("test.scale"), 0.5);
    ASSERT_EQ((*f)->tensors().size(), 2u);
    const GgufTensorInfo* a = (*f)->FindTensor("a");
    ASSERT_NE(a, nullptr);
    EXPECT_EQ(a->RowMajorShape(), (std::vector<int64_t>{2, 32}));
    EXPECT_EQ(a->num_bytes, 256u);
    const GgufTensorInfo* b = (*f)->FindTensor("b");
    EXPECT_EQ(b->type, GgmlType::kQ8_0);
    EXPECT_EQ(b->num_bytes, 34u);
    EXPECT_EQ(b->data - a->data, 256);
    EXPECT_EQ((*f)->GetString("test.scale").status().code(), StatusCode::kInvalidArgument);
    EXPECT_EQ((*f)->GetString("nope").status().code(), StatusCode::kNotFound);
  }
}

// Every prefix of a valid file is refused cleanly (ASan/UBSan builds check "no OOB read").
TEST(GgufFile, EveryTruncationIsAnError) {
  const std::string bytes = ValidFile();
  for (size_t n = 0; n < bytes.size(); ++n) {
    std::string cut = bytes.substr(0, n);
    auto f = GgufFile::Parse(cut, "cut");
    ASSERT_FALSE(f.ok()) << "prefix of " << n << " bytes parsed";
    EXPECT_EQ(f.status().code(), StatusCode::kCorruption) << f.status().ToString();
  }
}

TEST(GgufFile, TruncationNamesTheField) {
  GgufBuilder b;  // the first key claims 20 bytes; 7 follow
  b.Header(3, 0, 1).U64(20);
  const std::string bytes = b.bytes() + "general";
  auto f = GgufFile::Parse(bytes, "cut");
  ASSERT_FALSE(f.ok());
  EXPECT_NE(f.status().message().find("metadata[0] key"), std::string::npos)
      << f.status().ToString();
}

TEST(GgufFile, BadMagic) {
  std::string bytes = ValidFile();
  bytes[0] = 'X';
  auto f = GgufFile::Parse(bytes, "bad");
  ASSERT_FALSE(f.ok());
  EXPECT_NE(f.status().message().find("bad magic"), std::string::npos);
}

TEST(GgufFile, UnsupportedVersion) {
  for (uint32_t version : {1u, 4u, 0x03000000u}) {
    GgufBuilder b;
    b.Header(version, 0, 0);
    auto f = GgufFile::Parse(b.bytes(), "v");
    ASSERT_FALSE(f.ok());
    EXPECT_EQ(f.status().code(), StatusCode::kNotSupported);
    EXPECT_NE(f.status().message().find("version"), std::string::npos);
  }
}

TEST(GgufFile, AbsurdCountsAreRefusedBeforeAllocating) {
  {
    GgufBuilder b;
    b.Header(3, uint64_t{1} << 62, 0).Zeros(64);
    auto f = GgufFile::Parse(b.bytes(), "t");
    ASSERT_FALSE(f.ok());
    EXPECT_NE(f.status().message().find("tensor_count"), std::string::npos);
  }
  {
    GgufBuilder b;
    b.Header(3, 0, ~uint64_t{0}).Zeros(64);
    auto f = GgufFile::Parse(b.bytes(), "kv");
    ASSERT_FALSE(f.ok());
    EXPECT_NE(f.status().message().find("metadata_kv_count"), std::string::npos);
  }
  {  // an array claiming 2^60 strings
    GgufBuilder b;
    b.Header(3, 0, 1).Str("tokenizer.ggml.tokens").U32(9).U32(8).U64(uint64_t{1} << 60);
    auto f = GgufFile::Parse(b.bytes(), "arr");
    ASSERT_FALSE(f.ok());
    EXPECT_NE(f.status().message().find("array count"), std::string::npos);
  }
  {  // a string longer than the file
    GgufBuilder b;
    b.Header(3, 0, 1).U64(~uint64_t{0}).Zeros(16);
    auto f = GgufFile::Parse(b.bytes(), "str");
    ASSERT_FALSE(f.ok());
    EXPECT_NE(f.status().message().find("string length"), std::string::npos);
  }
  {  // dimensions whose product overflows
    GgufBuilder b;
    b.Header(3, 1, 0).Tensor("t", uint64_t{1} << 40, uint64_t{1} << 40, 0, 0);
    auto f = GgufFile::Parse(b.bytes(), "dims");
    ASSERT_FALSE(f.ok());
    EXPECT_NE(f.status().message().find("overflows"), std::string::npos);
  }
}

TEST(GgufFile, OffsetPastTheEnd) {
  GgufBuilder b;
  b.Header(3, 1, 0).Tensor("w", 32, 4, 0, 1024).PadTo(32).Zeros(512);
  auto f = GgufFile::Parse(b.bytes(), "off");
  ASSERT_FALSE(f.ok());
  EXPECT_EQ(f.status().code(), StatusCode::kCorruption);
  EXPECT_NE(f.status().message().find("tensor 'w' offset 1024"), std::string::npos)
      << f.status().ToString();
  EXPECT_NE(f.status().message().find("past the end"), std::string::npos);
}

TEST(GgufFile, MisalignedOffset) {
  GgufBuilder b;
  b.Header(3, 1, 0).Tensor("w", 32, 1, 0, 4).PadTo(32).Zeros(256);
  auto f = GgufFile::Parse(b.bytes(), "align");
  ASSERT_FALSE(f.ok());
  EXPECT_NE(f.status().message().find("alignment"), std::string::npos);
}

TEST(GgufFile, UnknownTypes) {
  {  // tensor type 99
    GgufBuilder b;
    b.Header(3, 1, 0).Tensor("w", 32, 1, 99, 0).PadTo(32).Zeros(256);
    auto f = GgufFile::Parse(b.bytes(), "type");
    ASSERT_FALSE(f.ok());
    EXPECT_EQ(f.status().code(), StatusCode::kNotSupported);
    EXPECT_NE(f.status().message().find("tensor 'w' has ggml type 99"), std::string::npos);
  }
  {  // metadata value type 13
    GgufBuilder b;
    b.Header(3, 0, 1).Str("k").U32(13).U64(0);
    auto f = GgufFile::Parse(b.bytes(), "vtype");
    ASSERT_FALSE(f.ok());
    EXPECT_NE(f.status().message().find("metadata 'k'"), std::string::npos);
    EXPECT_NE(f.status().message().find("unknown value type 13"), std::string::npos);
  }
  {  // a row length that is not a whole number of Q4_1 blocks
    GgufBuilder b;
    b.Header(3, 1, 0).Tensor("q", 48, 1, 3, 0).PadTo(32).Zeros(64);
    auto f = GgufFile::Parse(b.bytes(), "block");
    ASSERT_FALSE(f.ok());
    EXPECT_NE(f.status().message().find("block size"), std::string::npos);
  }
}

TEST(GgufFile, DuplicateNames) {
  GgufBuilder b;
  b.Header(3, 2, 0).Tensor("w", 32, 1, 0, 0).Tensor("w", 32, 1, 0, 128).PadTo(32).Zeros(256);
  auto f = GgufFile::Parse(b.bytes(), "dup");
  ASSERT_FALSE(f.ok());
  EXPECT_NE(f.status().message().find("duplicate"), std::string::npos);
}

// The fixture written by the `gguf` Python package: every metadata value type.
TEST(GgufFile, ReadsEveryValueTypeWrittenByTheGgufPackage) {
  auto f = GgufFile::Open(DefaultEnv(), testing::FixturesDir() + "/gguf/types.gguf");
  ASSERT_TRUE(f.ok()) << f.status().ToString();
  const GgufFile& g = **f;
  EXPECT_EQ(g.version(), 3u);
  EXPECT_EQ(*g.GetInt("test.u8"), 200);
  EXPECT_EQ(*g.GetInt("test.i8"), -100);
  EXPECT_EQ(*g.GetInt("test.u16"), 60000);
  EXPECT_EQ(*g.GetInt("test.i16"), -30000);
  EXPECT_EQ(*g.GetInt("test.u32"), 4000000000);
  EXPECT_EQ(*g.GetInt("test.i32"), -2000000000);
  EXPECT_EQ(*g.GetFloat("test.f32"), 0.25);
  EXPECT_TRUE(g.Find("test.bool")->boolean);
  EXPECT_EQ(*g.GetString("test.string"), "h\xc3\xa9llo");
  EXPECT_EQ(*g.GetInt("test.u64"), int64_t{1} << 40);
  EXPECT_EQ(*g.GetInt("test.i64"), -(int64_t{1} << 40));
  EXPECT_EQ(*g.GetFloat("test.f64"), 1e-300);
  auto ints = g.GetArray("test.array_i32", GgufValueType::kInt32);
  ASSERT_TRUE(ints.ok()) << ints.status().ToString();
  ASSERT_EQ((*ints)->array.size(), 3u);
  EXPECT_EQ((*ints)->array[1].integer, -2);
  auto strs = g.GetArray("test.array_str", GgufValueType::kString);
  ASSERT_TRUE(strs.ok());
  EXPECT_EQ((*strs)->array[1].string, "bc");
  EXPECT_EQ((*strs)->array[2].string, "");
  auto nested = g.GetArray("test.array_nested", GgufValueType::kArray);
  ASSERT_TRUE(nested.ok()) << nested.status().ToString();
  ASSERT_EQ((*nested)->array.size(), 2u);
  EXPECT_EQ((*nested)->array[0].array[1].integer, 2);
  EXPECT_EQ(g.GetInt("test.string").status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(g.tensors().size(), 11u);
}

TEST(GgufFile, IsGgufPath) {
  EXPECT_TRUE(IsGgufPath("/models/SmolLM2-135M-Instruct.Q4_1.gguf"));
  EXPECT_FALSE(IsGgufPath("/models/qwen2.5-0.5b"));
  EXPECT_FALSE(IsGgufPath("gguf"));
}

}  // namespace
}  // namespace kvkeep
