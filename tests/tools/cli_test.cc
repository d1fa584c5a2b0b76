// The `kvkeep` command line, run as a user would: make-model, model-info, generate (plain
// and --chat), parity, --help on every verb, and clear errors for bad input.
#include <gtest/gtest.h>
#include <sys/wait.h>

#include <array>
#include <cstdio>
#include <string>

#include "tests/testlib/test_util.h"

namespace kvkeep {
namespace {

struct Output {
  int exit_code;
  std::string text;  // stdout and stderr together
};

Output Shell(const std::string& cmd) {
  Output out{-1, ""};
  FILE* p = popen((cmd + " 2>&1").c_str(), "r");
  if (p == nullptr) return out;
  std::array<char, 4096> buf;
  size_t n;
  while ((n = fread(buf.data(), 1, buf.size(), p)) > 0) out.text.append(buf.data(), n);
  int rc = pclose(p);
  out.exit_code = WIFEXITED(rc) ? WEXITSTATUS(rc) : -1;
  return out;
}

class Cli : public ::testing::Test {
 protected:
  void SetUp() override {
    kvkeep_ = testing::BinaryDir() + "/kvkeep";
    seed_ = std::to_string(testing::TestSeed() % 1000000);
    Output made = Shell(kvkeep_ + " make-model --preset tiny --seed " + seed_ + " --out " +
                        dir_.File("tiny"));
    ASSERT_EQ(made.exit_code, 0) << made.text;
    // make-model prints the directory, so $(kvkeep make-model ...) composes.
    EXPECT_NE(made.text.find(dir_.File("tiny")), std::string::npos);
  }
  testing::TempDir dir_;
  std::string kvkeep_;
  std::string seed_;
};

TEST_F(Cli, GenerateStreamsAndIsDeterministicWhenGreedy) {
  // A model of a fixed seed: for about 1 random seed in 40 the tiny model's greedy first
  // token is its EOS, and nothing streams (seed 836697 does it).
  const std::string model = dir_.File("tiny-seed-1");
  Output made = Shell(kvkeep_ + " make-model --preset tiny --seed 1 --out " + model);
  ASSERT_EQ(made.exit_code, 0) << made.text;
  std::string cmd = kvkeep_ + " generate --model " + model + " --prompt hi --max-tokens 12";
  Output a = Shell(cmd), b = Shell(cmd);
  ASSERT_EQ(a.exit_code, 0) << a.text;
  // The streamed text comes before the usage line on stderr.
  auto generated = [](const std::string& t) { return t.substr(0, t.find("finish=")); };
  EXPECT_FALSE(generated(a.text).empty());
  EXPECT_EQ(generated(a.text), generated(b.text));
  Output usage = Shell(kvkeep_ + " generate --model " + dir_.File("tiny") +
                       " --prompt hi --max-tokens 12 --temperature 0.8 --seed 5");
  ASSERT_EQ(usage.exit_code, 0) << usage.text;
  EXPECT_NE(usage.text.find("generated_tokens="), std::string::npos) << usage.text;
  EXPECT_NE(usage.text.find("prompt_tokens="), std::string::npos);
}

TEST_F(Cli, ChatRendersMessagesWithTheModelTemplate) {
  Output chat = Shell(kvkeep_ + " generate --model " + dir_.File("tiny") +
                      " --chat --max-tokens 4 --prompt "
                      "'[{\"role\":\"system\",\"content\":\"be brief\"},"
                      "{\"role\":\"user\",\"content\":\"hi\"}]'");
  ASSERT_EQ(chat.exit_code, 0) << chat.text;
  // The plain (ChatML-shaped) template wraps both messages and adds the generation prompt:
  // more prompt tokens than the 10 bytes of content.
  size_t at = chat.text.find("prompt_tokens=");
  ASSERT_NE(at, std::string::npos) << chat.text;
  EXPECT_GT(std::stoi(chat.text.substr(at + 14)), 20);
}

TEST_F(Cli, ModelInfoReportsTheArchitecture) {
  Output info = Shell(kvkeep_ + " model-info " + dir_.File("tiny"));
  ASSERT_EQ(info.exit_code, 0) << info.text;
  EXPECT_NE(info.text.find("LlamaForCausalLM"), std::string::npos) << info.text;
  EXPECT_NE(info.text.find("KV bytes"), std::string::npos) << info.text;
}

TEST_F(Cli, ParityOfTheCpuBackendWithItselfPasses) {
  const std::string base = kvkeep_ + " parity --model " + dir_.File("tiny") +
                           " --device cpu --against cpu --prompt 'hello there' --max-tokens 16";
  Output same = Shell(base);
  ASSERT_EQ(same.exit_code, 0) << same.text;
  EXPECT_NE(same.text.find("parity PASS: cpu against cpu"), std::string::npos) << same.text;
  EXPECT_NE(same.text.find("16 teacher-forced steps"), std::string::npos) << same.text;
  EXPECT_NE(same.text.find("argmax flips 0, outside tolerance 0"), std::string::npos) << same.text;
  // The bf16 KV cache against the exact f32 reference: not bit-exact, still within tolerance.
  Output bf16 = Shell(base + " --kv-dtype bf16 --json");
  ASSERT_EQ(bf16.exit_code, 0) << bf16.text;
  EXPECT_NE(bf16.text.find("\"pass\": true"), std::string::npos) << bf16.text;
  EXPECT_NE(bf16.text.find("\"flips_outside_tolerance\": 0"), std::string::npos) << bf16.text;
  // A limit no backend can meet (every step has rounding error) is a mismatch: exit code 1.
  Output strict = Shell(base + " --kv-dtype bf16 --max-rel-error 1e-9");
  EXPECT_EQ(strict.exit_code, 1) << strict.text;
  EXPECT_NE(strict.text.find("parity FAIL"), std::string::npos) << strict.text;
}

TEST_F(Cli, EveryVerbHasHelp) {
  for (const char* verb :
       {"make-model", "model-info", "generate", "parity", "replay", "replay import", "replay synth",
        "replay run", "status", "sessions", "chat"}) {
    Output help = Shell(kvkeep_ + " " + verb + " --help");
    EXPECT_EQ(help.exit_code, 0) << verb << ": " << help.text;
    EXPECT_NE(help.text.find("Usage"), std::string::npos) << verb;
  }
}

TEST_F(Cli, BadInputGetsAClearErrorAndNonZeroExit) {
  Output missing = Shell(kvkeep_ + " generate --model " + dir_.File("nope") + " --prompt hi");
  EXPECT_NE(missing.exit_code, 0);
  EXPECT_NE(missing.text.find("nope"), std::string::npos) << missing.text;
  Output preset = Shell(kvkeep_ + " make-model --preset huge --out " + dir_.File("x"));
  EXPECT_NE(preset.exit_code, 0);
  Output overwrite = Shell(kvkeep_ + " make-model --preset tiny --out " + dir_.File("tiny"));
  EXPECT_NE(overwrite.exit_code, 0) << "must refuse to overwrite a model without --force";
  Output device =
      Shell(kvkeep_ + " generate --model " + dir_.File("tiny") + " --prompt hi --device tpu");
  EXPECT_NE(device.exit_code, 0);
  EXPECT_NE(device.text.find("tpu"), std::string::npos) << device.text;
}

}  // namespace
}  // namespace kvkeep
