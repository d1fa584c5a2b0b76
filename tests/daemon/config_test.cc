// Configuration: defaults from the environment, the JSON file, flag overrides, and
// --check-config of the real kvkeepd binary.
#include "daemon/config.h"

#include <gtest/gtest.h>
#include <sys/wait.h>

#include <cstdio>
#include <map>

#include "policy/policy_factory.h"
#include "tests/testlib/env_wrapper.h"
#include "tests/testlib/test_util.h"

namespace kvkeep {
namespace {

// An Env whose environment variables come from a map (files go to the real Env).
class MapEnv final : public kvkeep::testing::EnvWrapper {
 public:
  explicit MapEnv(std::map<std::string, std::string> vars) : vars_(std::move(vars)) {}
  std::string GetEnvVar(const char* name) override {
    auto it = vars_.find(name);
    return it == vars_.end() ? "" : it->second;
  }

 private:
  std::map<std::string, std::string> vars_;
};

Result<CommandLine> Parse(std::vector<const char*> args, Env* env) {
  args.insert(args.begin(), "kvkeepd");
  return ParseCommandLine(static_cast<int>(args.size()), args.data(), env);
}

TEST(ConfigTest, DefaultsFollowXdgOutsideSystemd) {
  MapEnv env({{"HOME", "/home/u"}, {"XDG_RUNTIME_DIR", "/run/user/1000"}});
  DaemonOptions o = DefaultDaemonOptions(&env);
  EXPECT_EQ(o.state_dir, "/home/u/.local/state/kvkeep");
  EXPECT_EQ(o.socket_path, "/run/user/1000/kvkeep.sock");
  EXPECT_EQ(o.socket_mode, 0660);
  EXPECT_EQ(o.limits.max_line_bytes, 8 << 20);
  EXPECT_EQ(o.policy, "ttl");
  MapEnv xdg({{"HOME", "/home/u"}, {"XDG_STATE_HOME", "/data/state"}});
  EXPECT_EQ(DefaultDaemonOptions(&xdg).state_dir, "/data/state/kvkeep");
  EXPECT_TRUE(ValidateDaemonOptions(o).ok());
}

TEST(ConfigTest, DefaultsUnderSystemd) {
  MapEnv env({{"INVOCATION_ID", "abc"}, {"HOME", "/root"}});
  DaemonOptions o = DefaultDaemonOptions(&env);
  EXPECT_EQ(o.state_dir, "/var/lib/kvkeep");
  EXPECT_EQ(o.socket_path, "/run/kvkeep/kvkeep.sock");
  MapEnv dirs({{"INVOCATION_ID", "abc"},
               {"STATE_DIRECTORY", "/var/lib/private/kvkeep:/var/lib/other"},
               {"RUNTIME_DIRECTORY", "/run/kvkeep2"}});
  DaemonOptions d = DefaultDaemonOptions(&dirs);
  EXPECT_EQ(d.state_dir, "/var/lib/private/kvkeep");
  EXPECT_EQ(d.socket_path, "/run/kvkeep2/kvkeep.sock");
}

TEST(ConfigTest, JsonFileIsAppliedAndFlagsOverrideIt) {
  testing::TempDir dir;
  const std::string path = dir.File("kvkeepd.json");
  ASSERT_TRUE(DefaultEnv()
                  ->WriteFileAtomic(path, R"({
    // comments are allowed
    "socket": "/tmp/from-file.sock", "state_dir": "/tmp/state", "socket_mode": "0600",
    "log_level": "debug", "policy": "none",
    "limits": {"max_line_bytes": 1024, "max_sessions_per_uid": 3},
    "engine": {"num_kv_blocks": 128}
  })")
                  .ok());
  MapEnv env(std::map<std::string, std::string>{{"HOME", "/home/u"}});
  auto cl = Parse(
      {"--config", path.c_str(), "--socket", "/tmp/flag.sock", "--max-line-bytes", "4096"}, &env);
  ASSERT_TRUE(cl.ok()) << cl.status().ToString();
  const DaemonOptions& o = cl->options;
  EXPECT_EQ(o.socket_path, "/tmp/flag.sock");   // flag wins
  EXPECT_EQ(o.state_dir, "/tmp/state");         // file
  EXPECT_EQ(o.socket_mode, 0600);               // file
  EXPECT_EQ(o.log_level, "debug");              // file
  EXPECT_EQ(o.policy, "none");                  // file
  EXPECT_EQ(o.limits.max_line_bytes, 4096);     // flag wins
  EXPECT_EQ(o.limits.max_sessions_per_uid, 3);  // file
  EXPECT_EQ(o.limits.max_json_depth, 64);       // default
  EXPECT_EQ(o.engine.num_kv_blocks, 128);       // file
  EXPECT_FALSE(cl->check_config);
  EXPECT_TRUE(ValidateDaemonOptions(o).ok());
}

TEST(ConfigTest, FlagsAloneNeedNoConfigFile) {
  MapEnv env(std::map<std::string, std::string>{{"HOME", "/home/u"}});
  auto cl = Parse({"--model", "/m", "--socket", "/tmp/s.sock", "--state-dir", "/tmp/st",
                   "--socket-mode", "0666", "--check-config"},
                  &env);
  ASSERT_TRUE(cl.ok()) << cl.status().ToString();
  EXPECT_EQ(cl->options.model_dir, "/m");
  EXPECT_EQ(cl->options.socket_mode, 0666);
  EXPECT_TRUE(cl->check_config);
}

TEST(ConfigTest, RejectsUnknownKeysWrongTypesAndBadValues) {
  DaemonOptions o;
  EXPECT_FALSE(ApplyConfigJson(R"({"sokcet": "/x"})", &o).ok());
  EXPECT_FALSE(ApplyConfigJson(R"({"limits": {"max_linebytes": 5}})", &o).ok());
  EXPECT_FALSE(ApplyConfigJson(R"({"io_threads": "two"})", &o).ok());
  EXPECT_FALSE(ApplyConfigJson(R"({"limits": {"max_json_depth": 0}})", &o).ok());
  EXPECT_FALSE(ApplyConfigJson(R"({"socket_mode": "0999"})", &o).ok());
  EXPECT_FALSE(ApplyConfigJson(R"([1])", &o).ok());
  EXPECT_FALSE(ApplyConfigJson(R"({"socket": )", &o).ok());
  Status st = ApplyConfigJson(R"({"limits": {"max_tokens": -1}})", &o);
  EXPECT_NE(st.message().find("limits.max_tokens"), std::string::npos) << st.message();

  DaemonOptions v;
  v.socket_path = "/tmp/s";
  v.state_dir = "/tmp/d";
  v.policy = "fifo";
  EXPECT_FALSE(ValidateDaemonOptions(v).ok());
  v.policy = "none";
  v.log_level = "loud";
  EXPECT_FALSE(ValidateDaemonOptions(v).ok());
  v.log_level = "warn";
  v.socket_path = "/" + std::string(200, 's');
  EXPECT_FALSE(ValidateDaemonOptions(v).ok());
  v.socket_path = "/tmp/s";
  EXPECT_TRUE(ValidateDaemonOptions(v).ok());
  v.engine.device = "tpu";
  st = ValidateDaemonOptions(v);
  EXPECT_NE(st.message().find("tpu"), std::string::npos) << st.message();
  DaemonOptions d;
  ASSERT_TRUE(ApplyConfigJson(R"({"engine": {"device": "cuda"}})", &d).ok());
  EXPECT_EQ(d.engine.device, "cuda");
}

// The per-uid host and disk tier caps (issue 11): file keys, flags over them, the range.
TEST(ConfigTest, LowerTierCapsPerUidFromFileAndFlags) {
  DaemonOptions o;
  ASSERT_TRUE(
      ApplyConfigJson(
          R"({"limits": {"max_host_blocks_per_uid": 30, "max_disk_blocks_per_uid": 90}})", &o)
          .ok());
  EXPECT_EQ(o.limits.max_host_blocks_per_uid, 30);
  EXPECT_EQ(o.limits.max_disk_blocks_per_uid, 90);
  DaemonOptions back;
  ASSERT_TRUE(ApplyConfigJson(DaemonOptionsToJson(o), &back).ok());
  EXPECT_EQ(back.limits.max_disk_blocks_per_uid, 90);
  Status st = ApplyConfigJson(R"({"limits": {"max_host_blocks_per_uid": -1}})", &o);
  EXPECT_NE(st.message().find("limits.max_host_blocks_per_uid"), std::string::npos) << st.message();
  MapEnv env(std::map<std::string, std::string>{{"HOME", "/home/u"}});
  auto cl = Parse({"--max-host-blocks-per-uid", "12", "--max-disk-blocks-per-uid", "34"}, &env);
  ASSERT_TRUE(cl.ok()) << cl.status().ToString();
  EXPECT_EQ(cl->options.limits.max_host_blocks_per_uid, 12);
  EXPECT_EQ(cl->options.limits.max_disk_blocks_per_uid, 34);
  EXPECT_EQ(DaemonOptions().limits.max_host_blocks_per_uid, 0);  // no cap by default
}

// The TTL rule's memory price (TtlOptions::full_pressure_cost_s_per_block_s) from the file
// and the flag, into the policy's options; a negative price is refused by name.
TEST(ConfigTest, TtlCostPerBlockSecondFromFileAndFlag) {
  DaemonOptions o;
  ASSERT_TRUE(ApplyConfigJson(R"({"ttl": {"cost_s_per_block_s": 0.002}})", &o).ok());
  EXPECT_EQ(o.ttl.cost_s_per_block_s, 0.002);
  PolicyOptions p;
  ToPolicyOptions(o, &p);
  EXPECT_EQ(p.ttl.full_pressure_cost_s_per_block_s, 0.002);
  DaemonOptions back;
  ASSERT_TRUE(ApplyConfigJson(DaemonOptionsToJson(o), &back).ok());
  EXPECT_EQ(back.ttl.cost_s_per_block_s, 0.002);
  Status st = ApplyConfigJson(R"({"ttl": {"cost_s_per_block_s": -1}})", &o);
  EXPECT_NE(st.message().find("ttl.cost_s_per_block_s"), std::string::npos) << st.message();
  MapEnv env(std::map<std::string, std::string>{{"HOME", "/home/u"}});
  auto cl = Parse({"--ttl-cost-s-per-block-s", "0.0005"}, &env);
  ASSERT_TRUE(cl.ok()) << cl.status().ToString();
  EXPECT_EQ(cl->options.ttl.cost_s_per_block_s, 0.0005);
  EXPECT_EQ(DaemonOptions().ttl.cost_s_per_block_s, TtlOptions().full_pressure_cost_s_per_block_s);
}

// The turn-end grace pin (PolicyOptions::turn_end_grace_s) from the file and the flag, into
// the policy's options; 0 turns it off, a negative one is refused by name.
TEST(ConfigTest, TurnEndGraceFromFileAndFlag) {
  EXPECT_EQ(DaemonOptions().ttl.turn_end_grace_s, PolicyOptions().turn_end_grace_s);
  DaemonOptions o;
  ASSERT_TRUE(ApplyConfigJson(R"({"ttl": {"turn_end_grace_s": 0}})", &o).ok());
  PolicyOptions p;
  ToPolicyOptions(o, &p);
  EXPECT_EQ(p.turn_end_grace_s, 0.0);
  ASSERT_TRUE(ApplyConfigJson(R"({"ttl": {"turn_end_grace_s": 1.5}})", &o).ok());
  DaemonOptions back;
  ASSERT_TRUE(ApplyConfigJson(DaemonOptionsToJson(o), &back).ok());
  EXPECT_EQ(back.ttl.turn_end_grace_s, 1.5);
  Status st = ApplyConfigJson(R"({"ttl": {"turn_end_grace_s": -0.5}})", &o);
  EXPECT_NE(st.message().find("ttl.turn_end_grace_s"), std::string::npos) << st.message();
  MapEnv env(std::map<std::string, std::string>{{"HOME", "/home/u"}});
  auto cl = Parse({"--turn-end-grace-s", "0.25"}, &env);
  ASSERT_TRUE(cl.ok()) << cl.status().ToString();
  EXPECT_EQ(cl->options.ttl.turn_end_grace_s, 0.25);
}

TEST(ConfigTest, StepLogFromFileAndFlag) {
  DaemonOptions o;
  EXPECT_EQ(o.engine.step_log, "");  // off by default
  ASSERT_TRUE(ApplyConfigJson(R"({"engine": {"step_log": "/tmp/steps.csv"}})", &o).ok());
  DaemonOptions back;
  ASSERT_TRUE(ApplyConfigJson(DaemonOptionsToJson(o), &back).ok());
  EXPECT_EQ(back.engine.step_log, "/tmp/steps.csv");
  Status st = ApplyConfigJson(R"({"engine": {"step_log": 3}})", &o);
  EXPECT_NE(st.message().find("engine.step_log"), std::string::npos) << st.message();
  MapEnv env(std::map<std::string, std::string>{{"HOME", "/home/u"}});
  auto cl = Parse({"--step-log", "/var/tmp/s.csv"}, &env);
  ASSERT_TRUE(cl.ok()) << cl.status().ToString();
  EXPECT_EQ(cl->options.engine.step_log, "/var/tmp/s.csv");
}

TEST(ConfigTest, EpisodeLayerAlphaNeedsACalibrationText) {
  MapEnv env(std::map<std::string, std::string>{{"HOME", "/home/u"}});
  DaemonOptions o = DefaultDaemonOptions(&env);
  EXPECT_EQ(o.episodes.cache_layer_alpha, 0.0);  // uniform budgets by default
  EXPECT_TRUE(ValidateDaemonOptions(o).ok());
  ASSERT_TRUE(
      ApplyConfigJson(
          R"({"episodes": {"cache_layer_alpha": 1, "calibration_file": "/srv/cal.txt"}})", &o)
          .ok());
  EXPECT_TRUE(ValidateDaemonOptions(o).ok());
  DaemonOptions back;
  ASSERT_TRUE(ApplyConfigJson(DaemonOptionsToJson(o), &back).ok());
  EXPECT_EQ(back.episodes.cache_layer_alpha, 1.0);
  EXPECT_EQ(back.episodes.calibration_file, "/srv/cal.txt");
  Status st = ApplyConfigJson(R"({"episodes": {"cache_layer_alpha": -1}})", &o);
  EXPECT_NE(st.message().find("episodes.cache_layer_alpha"), std::string::npos) << st.message();
  auto cl = Parse({"--episode-layer-alpha", "0.5"}, &env);
  ASSERT_TRUE(cl.ok()) << cl.status().ToString();
  EXPECT_EQ(cl->options.episodes.cache_layer_alpha, 0.5);
  EXPECT_NE(ValidateDaemonOptions(cl->options).message().find("--episode-calibration"),
            std::string::npos);
  cl = Parse({"--episode-layer-alpha", "0.5", "--episode-calibration", "/srv/c.txt"}, &env);
  ASSERT_TRUE(cl.ok()) << cl.status().ToString();
  EXPECT_TRUE(ValidateDaemonOptions(cl->options).ok());
}

TEST(ConfigTest, ToJsonRoundTrips) {
  DaemonOptions o;
  o.socket_path = "/tmp/x.sock";
  o.state_dir = "/tmp/st";
  o.socket_mode = 0640;
  o.limits.max_tokens = 77;
  o.engine.block_size = 32;
  DaemonOptions back;
  ASSERT_TRUE(ApplyConfigJson(DaemonOptionsToJson(o), &back).ok());
  EXPECT_EQ(back.socket_path, o.socket_path);
  EXPECT_EQ(back.socket_mode, 0640);
  EXPECT_EQ(back.limits.max_tokens, 77);
  EXPECT_EQ(back.engine.block_size, 32);
}

TEST(ConfigTest, ShippedExampleConfigurationIsValid) {
  const std::string path = testing::SourceDir() + "/systemd/kvkeepd.example.json";
  if (!DefaultEnv()->FileExists(path)) GTEST_SKIP() << path << " is not in this tree";
  auto text = DefaultEnv()->ReadFile(path);
  ASSERT_TRUE(text.ok());
  DaemonOptions o;
  Status st = ApplyConfigJson(*text, &o);
  ASSERT_TRUE(st.ok()) << st.ToString();
  EXPECT_TRUE(ValidateDaemonOptions(o).ok());
  EXPECT_EQ(o.state_dir, "/var/lib/kvkeep");
}

// Runs the real binary; returns its exit code and output.
int RunKvkeepd(const std::string& args, std::string* output) {
  std::string cmd = testing::BinaryDir() + "/kvkeepd " + args + " 2>&1";
  FILE* p = popen(cmd.c_str(), "r");
  if (!p) return -1;
  char buf[4096];
  size_t n;
  while ((n = fread(buf, 1, sizeof(buf), p)) > 0) output->append(buf, n);
  int status = pclose(p);
  return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

TEST(ConfigTest, CheckConfigExitsZeroOrOneWithAMessage) {
  testing::TempDir dir;
  std::string out;
  EXPECT_EQ(
      RunKvkeepd("--check-config --socket " + dir.File("s.sock") + " --state-dir " + dir.path(),
                 &out),
      0)
      << out;
  EXPECT_NE(out.find("configuration OK"), std::string::npos) << out;

  ASSERT_TRUE(DefaultEnv()->WriteFileAtomic(dir.File("bad.json"), R"({"polcy": "lru"})").ok());
  out.clear();
  EXPECT_EQ(RunKvkeepd("--check-config --config " + dir.File("bad.json"), &out), 1);
  EXPECT_NE(out.find("unknown key 'polcy'"), std::string::npos) << out;

  out.clear();
  EXPECT_EQ(RunKvkeepd("--check-config --policy fifo --state-dir " + dir.path(), &out), 1);
  EXPECT_NE(out.find("fifo"), std::string::npos) << out;
}

}  // namespace
}  // namespace kvkeep

namespace kvkeep {
namespace {

TEST(ConfigTest, ClusterFlagsAndKeys) {
  MapEnv env(std::map<std::string, std::string>{{"HOME", "/home/u"}});
  auto cl = Parse({"--remote-tier", "redis://10.0.0.5:6380/1", "--remote-timeout-ms", "250",
                   "--cluster-secret-file", "/etc/kvkeep/cluster.secret", "--host-blocks", "64",
                   "--disk-gib", "1"},
                  &env);
  ASSERT_TRUE(cl.ok()) << cl.status().ToString();
  EXPECT_EQ(cl->options.cluster.remote_tier, "redis://10.0.0.5:6380/1");
  EXPECT_EQ(cl->options.cluster.remote_timeout_ms, 250);
  EXPECT_EQ(cl->options.cluster.cluster_secret_file, "/etc/kvkeep/cluster.secret");
  EXPECT_TRUE(ValidateDaemonOptions(cl->options).ok());
  // Round trip through the JSON form.
  DaemonOptions again = DefaultDaemonOptions(&env);
  ASSERT_TRUE(ApplyConfigJson(DaemonOptionsToJson(cl->options), &again).ok());
  EXPECT_EQ(again.cluster.remote_tier, cl->options.cluster.remote_tier);
  EXPECT_EQ(again.cluster.remote_timeout_ms, 250);

  DaemonOptions o = cl->options;
  o.engine.disk_gib = 0;
  EXPECT_NE(ValidateDaemonOptions(o).message().find("disk tier"), std::string::npos);
  o = cl->options;
  o.cluster.remote_tier = "http://nope";
  EXPECT_EQ(ValidateDaemonOptions(o).code(), StatusCode::kInvalidArgument);
  EXPECT_FALSE(ApplyConfigJson(R"({"cluster": {"remote_timeout_ms": 0}})", &o).ok());
  EXPECT_FALSE(ApplyConfigJson(R"({"cluster": {"redis": "x"}})", &o).ok());
}

}  // namespace
}  // namespace kvkeep
