// Dequantisation of every supported ggml type, bit for bit against the `gguf` Python
// package's dequantize(): on the small fixtures it wrote (tests/fixtures/gguf/types*.gguf,
// gen_gguf.py), and on every tensor of the shipped SmolLM2 file when it is installed
// (hashes in smollm2.dequant.json).
#include <gtest/gtest.h>

#include <cstring>
#include <filesystem>

#include <nlohmann/json.hpp>

#include "engine/gguf_file.h"
#include "engine/gguf_types.h"
#include "tests/engine/gguf_test_util.h"
#include "tests/testlib/test_util.h"

namespace kvkeep {
namespace {

std::string FixtureDir() { return testing::FixturesDir() + "/gguf"; }

TEST(GgufDequant, EveryTypeEqualsTheGgufPackageBitForBit) {
  Env* env = DefaultEnv();
  auto quant = GgufFile::Open(env, FixtureDir() + "/types.gguf");
  ASSERT_TRUE(quant.ok()) << quant.status().ToString();
  auto expected = GgufFile::Open(env, FixtureDir() + "/types_expected.gguf");
  ASSERT_TRUE(expected.ok()) << expected.status().ToString();
  int num_checked = 0;
  for (const char* name :
       {"F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q4_K", "Q5_K", "Q6_K"}) {
    SCOPED_TRACE(name);
    const GgufTensorInfo* q = (*quant)->FindTensor(name);
    const GgufTensorInfo* e = (*expected)->FindTensor(name);
    ASSERT_NE(q, nullptr);
    ASSERT_NE(e, nullptr);
    EXPECT_EQ(GgmlTypeName(q->type), name);
    ASSERT_EQ(e->type, GgmlType::kF32);
    ASSERT_EQ(q->dims, e->dims);
    std::vector<float> ours(static_cast<size_t>(q->NumElements()));
    DequantizeGgml(q->type, q->data, q->NumElements(), ours.data());
    int64_t num_diff = 0, first_diff = -1;
    for (size_t i = 0; i < ours.size(); ++i) {
      uint32_t a, b;
      std::memcpy(&a, &ours[i], 4);
      std::memcpy(&b, e->data + 4 * i, 4);
      if (a != b) {
        if (first_diff < 0) first_diff = static_cast<int64_t>(i);
        ++num_diff;
      }
    }
    EXPECT_EQ(num_diff, 0) << "first difference at element " << first_diff;
    ++num_checked;
  }
  EXPECT_EQ(num_checked, 11);
}

TEST(GgufDequant, ShippedModelTensorsEqualTheGgufPackage) {
  const std::string model = testing::InstalledSmolLM2();
  if (model.empty()) GTEST_SKIP() << testing::kNoSmolLM2Message;
  auto f = GgufFile::Open(DefaultEnv(), model);
  ASSERT_TRUE(f.ok()) << f.status().ToString();
  auto text = DefaultEnv()->ReadFile(FixtureDir() + "/smollm2.dequant.json");
  ASSERT_TRUE(text.ok());
  const nlohmann::json ref = nlohmann::json::parse(*text).at("tensors");
  ASSERT_EQ(ref.size(), (*f)->tensors().size());
  std::vector<float> buf;
  for (const GgufTensorInfo& t : (*f)->tensors()) {
    SCOPED_TRACE(t.name);
    ASSERT_TRUE(ref.contains(t.name));
    const nlohmann::json& r = ref.at(t.name);
    EXPECT_EQ(GgmlTypeName(t.type), r.at("type").get<std::string>());
    ASSERT_EQ(t.NumElements(), r.at("elements").get<int64_t>());
    buf.resize(static_cast<size_t>(t.NumElements()));
    DequantizeGgml(t.type, t.data, t.NumElements(), buf.data());
    EXPECT_EQ(std::to_string(testing::WeightedBitsHash(buf)), r.at("hash").get<std::string>());
  }
}

}  // namespace
}  // namespace kvkeep
