// safetensors: round trips through the writers, reading a hand-built file, and rejection
// of every kind of malformed file with Corruption naming the file and the tensor.
#include "engine/safetensors.h"

#include <gtest/gtest.h>

#include <cstring>
#include <random>

#include "tests/testlib/test_util.h"

namespace kvkeep {
namespace {

// A file made by hand: u64 little-endian header length, header, data.
std::string RawFile(const std::string& header, const std::string& data) {
  std::string out;
  uint64_t n = header.size();
  for (int i = 0; i < 8; ++i) out.push_back(static_cast<char>((n >> (8 * i)) & 0xff));
  return out + header + data;
}

class SafetensorsTest : public ::testing::Test {
 protected:
  Result<std::unique_ptr<SafetensorsFile>> OpenRaw(const std::string& contents) {
    path_ = dir_.File("t.safetensors");
    EXPECT_TRUE(env_->WriteFileAtomic(path_, contents).ok());
    return SafetensorsFile::Open(env_, path_);
  }
  // Expects Corruption whose message names the file and every string in `names`.
  void ExpectCorrupt(const std::string& contents, std::vector<std::string> names) {
    Result<std::unique_ptr<SafetensorsFile>> f = OpenRaw(contents);
    ASSERT_FALSE(f.ok());
    EXPECT_EQ(f.status().code(), StatusCode::kCorruption) << f.status().ToString();
    names.push_back(path_);
    for (const std::string& n : names) {
      EXPECT_NE(f.status().message().find(n), std::string::npos)
          << "'" << n << "' not in: " << f.status().ToString();
    }
  }
  Env* env_ = DefaultEnv();
  testing::TempDir dir_;
  std::string path_;
};

TEST_F(SafetensorsTest, DTypeNamesAndSizes) {
  struct Row {
    DType dtype;
    const char* name;
    int bytes;
  };
  for (const Row& r :
       {Row{DType::kF32, "F32", 4}, Row{DType::kBF16, "BF16", 2}, Row{DType::kF16, "F16", 2},
        Row{DType::kI32, "I32", 4}, Row{DType::kI64, "I64", 8}, Row{DType::kU8, "U8", 1}}) {
    EXPECT_EQ(DTypeName(r.dtype), r.name);
    EXPECT_EQ(DTypeBytes(r.dtype), r.bytes);
    Result<DType> parsed = ParseDType(r.name);
    ASSERT_TRUE(parsed.ok());
    EXPECT_EQ(*parsed, r.dtype);
  }
  EXPECT_FALSE(ParseDType("F12").ok());
}

TEST_F(SafetensorsTest, ReadsHandBuiltFile) {
  // Two F32 values then three U8 values, with the metadata entry and padding spaces.
  std::string data("\x00\x00\x80\x3f\x00\x00\x00\xc0\x01\x02\x03", 11);
  std::string header =
      R"({"__metadata__":{"format":"pt"},"b":{"dtype":"U8","shape":[3],"data_offsets":[8,11]},)"
      R"("a":{"dtype":"F32","shape":[1,2],"data_offsets":[0,8]}}   )";
  Result<std::unique_ptr<SafetensorsFile>> f = OpenRaw(RawFile(header, data));
  ASSERT_TRUE(f.ok()) << f.status().ToString();
  EXPECT_EQ((*f)->Names(), (std::vector<std::string>{"a", "b"}));
  const TensorView* a = (*f)->Find("a");
  ASSERT_NE(a, nullptr);
  EXPECT_EQ(a->dtype, DType::kF32);
  EXPECT_EQ(a->shape, (std::vector<int64_t>{1, 2}));
  EXPECT_EQ(a->NumElements(), 2);
  ASSERT_EQ(a->num_bytes, 8u);
  float v[2];
  std::memcpy(v, a->data, 8);
  EXPECT_EQ(v[0], 1.0f);
  EXPECT_EQ(v[1], -2.0f);
  const TensorView* b = (*f)->Find("b");
  ASSERT_NE(b, nullptr);
  EXPECT_EQ(b->data[0], 1);
  EXPECT_EQ(b->data[2], 3);
  EXPECT_EQ((*f)->Find("c"), nullptr);
  EXPECT_EQ((*f)->Find("__metadata__"), nullptr);
}

TEST_F(SafetensorsTest, ReadsFileWrittenByReferenceLibrary) {
  const std::string path = testing::FixturesDir() + "/models/numpy_written.safetensors";
  Result<std::unique_ptr<SafetensorsFile>> f = SafetensorsFile::Open(env_, path);
  ASSERT_TRUE(f.ok()) << f.status().ToString();
  const TensorView* a = (*f)->Find("a");
  const TensorView* b = (*f)->Find("b");
  const TensorView* c = (*f)->Find("c");
  ASSERT_TRUE(a && b && c);
  EXPECT_EQ(a->dtype, DType::kF32);
  EXPECT_EQ(a->shape, (std::vector<int64_t>{2, 3}));
  for (int i = 0; i < 6; ++i) {
    float v;
    std::memcpy(&v, a->data + 4 * i, 4);
    EXPECT_EQ(v, static_cast<float>(i));
  }
  EXPECT_EQ(b->dtype, DType::kI64);
  int64_t third;
  std::memcpy(&third, b->data + 16, 8);
  EXPECT_EQ(third, 3);
  EXPECT_EQ(c->dtype, DType::kF16);
  EXPECT_EQ(c->shape, std::vector<int64_t>{4});
  EXPECT_EQ(c->data[0], 0x00);  // 1.0 in fp16 is 0x3c00, little-endian
  EXPECT_EQ(c->data[1], 0x3c);
}

TEST_F(SafetensorsTest, RoundTripAllDTypes) {
  std::mt19937_64 rng(testing::TestSeed());
  std::vector<TensorToWrite> tensors;
  const DType dtypes[] = {DType::kF32, DType::kBF16, DType::kF16,
                          DType::kI32, DType::kI64,  DType::kU8};
  for (DType dt : dtypes) {
    TensorToWrite t;
    t.name = "t." + std::string(DTypeName(dt));
    t.dtype = dt;
    t.shape = {static_cast<int64_t>(rng() % 7 + 1), static_cast<int64_t>(rng() % 5 + 1)};
    t.data.resize(t.shape[0] * t.shape[1] * DTypeBytes(dt));
    for (char& c : t.data) c = static_cast<char>(rng());
    tensors.push_back(std::move(t));
  }
  tensors.push_back({"scalar", DType::kF32, {}, std::string(4, '\x7')});
  tensors.push_back({"empty", DType::kBF16, {0, 3}, ""});
  const std::string path = dir_.File("rt.safetensors");
  ASSERT_TRUE(WriteSafetensors(env_, path, tensors, {{"format", "pt"}}).ok());

  Result<std::unique_ptr<SafetensorsFile>> f = SafetensorsFile::Open(env_, path);
  ASSERT_TRUE(f.ok()) << f.status().ToString();
  EXPECT_EQ((*f)->Names().size(), tensors.size());
  for (const TensorToWrite& t : tensors) {
    const TensorView* v = (*f)->Find(t.name);
    ASSERT_NE(v, nullptr) << t.name;
    EXPECT_EQ(v->dtype, t.dtype) << t.name;
    EXPECT_EQ(v->shape, t.shape) << t.name;
    ASSERT_EQ(v->num_bytes, t.data.size()) << t.name;
    EXPECT_EQ(std::memcmp(v->data, t.data.data(), t.data.size()), 0) << t.name;
  }
  // The header is padded to a multiple of 8 bytes, as the reference writer does.
  Result<std::string> raw = env_->ReadFile(path);
  ASSERT_TRUE(raw.ok());
  uint64_t header_len = 0;
  std::memcpy(&header_len, raw->data(), 8);
  EXPECT_EQ(header_len % 8, 0u);
}

TEST_F(SafetensorsTest, WriterRejectsWrongDataSizeAndDuplicates) {
  EXPECT_TRUE(WriteSafetensors(env_, dir_.File("x"), {{"a", DType::kF32, {2}, "1234"}})
                  .IsInvalidArgument());
  EXPECT_TRUE(WriteSafetensors(env_, dir_.File("x"),
                               {{"a", DType::kU8, {1}, "1"}, {"a", DType::kU8, {1}, "2"}})
                  .IsInvalidArgument());
}

TEST_F(SafetensorsTest, StreamingWriterRoundTrip) {
  const std::string path = dir_.File("s.safetensors");
  std::vector<SafetensorsWriter::TensorSpec> specs = {{"x", DType::kU8, {10}},
                                                      {"y", DType::kI32, {3}}};
  Result<std::unique_ptr<SafetensorsWriter>> w = SafetensorsWriter::Create(path, specs);
  ASSERT_TRUE(w.ok()) << w.status().ToString();
  EXPECT_EQ((*w)->total_data_bytes(), 22u);
  ASSERT_TRUE((*w)->Append("01234", 5).ok());  // pieces need not match tensors
  ASSERT_TRUE((*w)->Append("56789abcdefghijk", 16).ok());
  EXPECT_TRUE((*w)->Finish().IsInvalidArgument());  // one byte short
  EXPECT_FALSE(env_->FileExists(path));

  w = SafetensorsWriter::Create(path, specs);
  ASSERT_TRUE(w.ok());
  ASSERT_TRUE((*w)->Append("0123456789abcdefghijkl", 22).ok());
  EXPECT_TRUE((*w)->Append("m", 1).IsInvalidArgument());
  Status st = (*w)->Finish();
  ASSERT_TRUE(st.ok()) << st.ToString();
  Result<std::unique_ptr<SafetensorsFile>> f = SafetensorsFile::Open(env_, path);
  ASSERT_TRUE(f.ok()) << f.status().ToString();
  EXPECT_EQ(std::string(reinterpret_cast<const char*>((*f)->Find("y")->data), 12), "abcdefghijkl");
}

TEST_F(SafetensorsTest, AbandonedStreamingWriterLeavesNoFile) {
  const std::string path = dir_.File("s.safetensors");
  {
    auto w = SafetensorsWriter::Create(path, {{"x", DType::kU8, {4}}});
    ASSERT_TRUE(w.ok());
    ASSERT_TRUE((*w)->Append("ab", 2).ok());
  }
  Result<std::vector<std::string>> left = env_->ListDir(dir_.path());
  ASSERT_TRUE(left.ok());
  EXPECT_TRUE(left->empty()) << (*left)[0];
}

TEST_F(SafetensorsTest, RejectsTooShortFile) { ExpectCorrupt("abc", {}); }

TEST_F(SafetensorsTest, RejectsHeaderLengthBeyondFile) {
  std::string file = RawFile(R"({"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]}})", "x");
  file[0] = '\xff';  // header length now far beyond the file
  file[1] = '\x7f';
  ExpectCorrupt(file, {"header length"});
}

TEST_F(SafetensorsTest, RejectsBadJson) {
  ExpectCorrupt(RawFile(R"({"a":{"dtype":"U8",)", ""), {"JSON"});
  ExpectCorrupt(RawFile(R"([1,2,3])", ""), {"object"});
}

TEST_F(SafetensorsTest, RejectsUnknownDType) {
  ExpectCorrupt(RawFile(R"({"w":{"dtype":"Q7","shape":[1],"data_offsets":[0,1]}})", "x"),
                {"\"w\"", "Q7"});
}

TEST_F(SafetensorsTest, KnownButUnsupportedDTypeIsNotSupported) {
  Result<std::unique_ptr<SafetensorsFile>> f =
      OpenRaw(RawFile(R"({"w":{"dtype":"F64","shape":[1],"data_offsets":[0,8]}})", "12345678"));
  ASSERT_FALSE(f.ok());
  EXPECT_EQ(f.status().code(), StatusCode::kNotSupported);
  EXPECT_NE(f.status().message().find("\"w\""), std::string::npos);
}

TEST_F(SafetensorsTest, RejectsOffsetsOutOfBounds) {
  ExpectCorrupt(RawFile(R"({"w":{"dtype":"U8","shape":[4],"data_offsets":[2,6]}})", "abcd"),
                {"\"w\""});
  ExpectCorrupt(RawFile(R"({"w":{"dtype":"U8","shape":[0],"data_offsets":[3,1]}})", "abcd"),
                {"\"w\"", "begin > end"});
  ExpectCorrupt(RawFile(R"({"w":{"dtype":"U8","shape":[2],"data_offsets":[-1,1]}})", "abcd"),
                {"\"w\""});
  ExpectCorrupt(RawFile(R"({"w":{"dtype":"U8","shape":[2]}})", "abcd"), {"\"w\"", "data_offsets"});
}

TEST_F(SafetensorsTest, RejectsOverlappingTensors) {
  ExpectCorrupt(RawFile(R"({"p":{"dtype":"U8","shape":[3],"data_offsets":[0,3]},)"
                        R"("q":{"dtype":"U8","shape":[2],"data_offsets":[2,4]}})",
                        "abcd"),
                {"\"p\"", "\"q\"", "overlaps"});
}

TEST_F(SafetensorsTest, RejectsSizeNotMatchingShape) {
  ExpectCorrupt(
      RawFile(R"({"w":{"dtype":"F32","shape":[2,2],"data_offsets":[0,8]}})", std::string(16, '\0')),
      {"\"w\"", "16"});
  ExpectCorrupt(
      RawFile(R"({"w":{"dtype":"F32","shape":[-2],"data_offsets":[0,8]}})", std::string(8, '\0')),
      {"\"w\""});
}

TEST_F(SafetensorsTest, RejectsTruncatedFile) {
  const std::string path = dir_.File("full.safetensors");
  ASSERT_TRUE(WriteSafetensors(env_, path,
                               {{"first", DType::kF32, {4}, std::string(16, 'a')},
                                {"last", DType::kF32, {4}, std::string(16, 'b')}})
                  .ok());
  Result<std::string> full = env_->ReadFile(path);
  ASSERT_TRUE(full.ok());
  ExpectCorrupt(full->substr(0, full->size() - 3), {"\"last\"", "truncated"});
}

TEST_F(SafetensorsTest, MissingFileIsNotFound) {
  EXPECT_TRUE(SafetensorsFile::Open(env_, dir_.File("nope")).status().IsNotFound());
}

}  // namespace
}  // namespace kvkeep
