// The real kvkeepd serving routed turns from episode caches (issue 13, serving): an
// over-budget session's turn reports served_by episode_cache, holds fewer KV blocks than
// full KV would, and its reply is the reference's (EpisodeCompressor + EpisodeDecoder over
// the same history and P_e on a bare CPU backend); a turn that arrives right after a large
// append (before the worker has indexed it) is still routed; a cache that cannot be built
// falls back to full KV with a log line; after a restart routed turns are served from
// rebuilt caches; with --episode-layer-alpha the caches keep per-layer budgets.
#include "daemon/turn_renderer.h"
#include "engine/episode_cache.h"
#include "engine/layer_budget.h"
#include "engine/model_config.h"
#include "engine/model_identity.h"
#include "engine/model_weights.h"
#include "engine/tokenizer.h"
#include "tests/daemon/daemon_harness.h"

namespace kvkeep::testing {
namespace {

constexpr int32_t kBudget = 48;  // the session's budget M
constexpr int32_t kBlock = 64;   // --episode-cache-block-tokens B
constexpr int32_t kMaxTokens = 8;

// The conversation rendered as kvkeepd renders it, each message with its token slice.
struct Rendered {
  json messages = json::array();
  std::vector<std::vector<int32_t>> tokens;  // per message
};

class DaemonEpisodeServeTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto config = LoadModelConfig(DefaultEnv(), TinyModelDir());
    ASSERT_TRUE(config.ok()) << config.status().ToString();
    config_ = *config;
    auto tok = LoadTokenizer(DefaultEnv(), TinyModelDir());
    ASSERT_TRUE(tok.ok()) << tok.status().ToString();
    tokenizer_ = std::move(tok).value();
    auto r = TurnRenderer::Create(DefaultEnv(), TinyModelDir(), tokenizer_.get());
    ASSERT_TRUE(r.ok()) << r.status().ToString();
    renderer_ = std::move(r).value();
  }
  // texts as alternating user/assistant messages, the last one the user's.
  Rendered Render(const std::vector<std::string>& texts) {
    Rendered out;
    std::vector<ChatMessageIn> history;
    for (size_t i = 0; i < texts.size(); ++i) {
      const bool user = (texts.size() - 1 - i) % 2 == 0;
      ChatMessageIn m{user ? "user" : "assistant", texts[i], "", ""};
      auto t = renderer_->RenderMessage(history, m);
      EXPECT_TRUE(t.ok()) << t.status().ToString();
      out.tokens.push_back(t.ok() ? *t : std::vector<int32_t>{});
      out.messages.push_back({{"role", m.role}, {"content", m.content}, {"tokens", *t}});
      history.push_back(m);
    }
    return out;
  }
  // The reference reply: the episode's cache built from the history and P_e on a bare CPU
  // backend, the question and the generation prompt decoded greedily on top.
  std::vector<int32_t> Reference(const Rendered& r, const json& medoid_messages,
                                 const std::vector<int32_t>& layer_budgets = {}) {
    const size_t seq = r.tokens.size() - 1;
    std::vector<int32_t> history, query, message = r.tokens[seq];
    for (size_t i = 0; i < seq; ++i)
      history.insert(history.end(), r.tokens[i].begin(), r.tokens[i].end());
    for (const json& range : medoid_messages) {
      for (size_t i = range[0].get<size_t>(); i < std::min(range[1].get<size_t>(), seq); ++i) {
        query.insert(query.end(), r.tokens[i].begin(), r.tokens[i].end());
      }
    }
    const auto& gp = renderer_->generation_prompt();
    message.insert(message.end(), gp.begin(), gp.end());
    auto weights = ModelWeights::Load(DefaultEnv(), TinyModelDir(), config_);
    EXPECT_TRUE(weights.ok()) << weights.status().ToString();
    if (!weights.ok()) return {};
    CompressOptions o;
    o.budget_tokens = kBudget;
    o.block_tokens = kBlock;
    o.layer_budget_tokens = layer_budgets;
    const int32_t needed = CompressBlocksNeeded(o, static_cast<int32_t>(query.size()), 16);
    BackendOptions bo;
    bo.num_kv_blocks = needed + 8;
    bo.block_size = 16;
    auto backend = CreateCpuBackend(**weights, bo);
    EXPECT_TRUE(backend.ok()) << backend.status().ToString();
    std::vector<int32_t> blocks(bo.num_kv_blocks);
    for (int32_t i = 0; i < bo.num_kv_blocks; ++i) blocks[i] = i;
    EpisodeCompressor compressor(backend->get());
    auto cache = compressor.Build(history, query, o, blocks);
    EXPECT_TRUE(cache.ok()) << cache.status().ToString();
    if (!cache.ok()) return {};
    EpisodeDecoder decoder(backend->get(), *cache);
    auto out = decoder.Generate(message, kMaxTokens, config_.eos_token_ids);
    EXPECT_TRUE(out.ok()) << out.status().ToString();
    return out.ok() ? *out : std::vector<int32_t>{};
  }

  ModelConfig config_;
  std::unique_ptr<Tokenizer> tokenizer_;
  std::unique_ptr<TurnRenderer> renderer_;
};

json Generate(LineClient& c, const std::string& session) {
  return c.Ok(
      {{"id", 5}, {"verb", "session.generate"}, {"session", session}, {"max_tokens", kMaxTokens}});
}

TEST_F(DaemonEpisodeServeTest, RoutedTurnDecodesFromItsEpisodeCache) {
  std::vector<std::string> texts = FourTopicConversation();
  texts.push_back("Do I need crampons on the glacier?");
  const Rendered r = Render(texts);
  int64_t history_tokens = 0;
  for (size_t i = 0; i + 1 < r.tokens.size(); ++i) history_tokens += r.tokens[i].size();
  ASSERT_GT(history_tokens, 4 * kBudget);

  DaemonFixture f({"--embedder", "hashed", "--episode-budget-tokens", "100000",
                   "--episode-cache-block-tokens", std::to_string(kBlock)});
  ASSERT_TRUE(f.daemon.Start()) << f.daemon.Log();
  std::vector<int32_t> served;
  {
    LineClient c(f.daemon.socket_path());
    ASSERT_TRUE(c.connected());
    c.Ok({{"id", 1},
          {"verb", "session.open"},
          {"session", "e"},
          {"episode_budget_tokens", kBudget}});
    // One append, and the turn right after it: routing waits for the worker to index it.
    c.Ok({{"id", 2}, {"verb", "session.append"}, {"session", "e"}, {"messages", r.messages}});
    json reply = Generate(c, "e");
    ASSERT_TRUE(reply.contains("episode")) << reply.dump();
    json ep = reply["episode"];
    EXPECT_FALSE(ep["episode"].is_null()) << "not routed: " << reply.dump();
    EXPECT_EQ(ep["served_by"], "episode_cache") << reply.dump() << f.daemon.Log();
    // Fewer blocks than the full KV of the context and the reply.
    const int64_t full_blocks =
        (history_tokens + r.tokens.back().size() + renderer_->generation_prompt().size() +
         reply["usage"]["generated_tokens"].get<int64_t>() + 15) /
        16;
    EXPECT_LT(ep["kv_blocks"].get<int64_t>(), full_blocks) << reply.dump();
    EXPECT_EQ(reply["usage"]["cached_tokens"], kBudget);

    json info = c.Ok({{"id", 3}, {"verb", "session.info"}, {"session", "e"}})["episodes"];
    ASSERT_EQ(info["turns"].size(), 1u) << info.dump();
    EXPECT_EQ(info["turns"][0]["served_by"], "episode_cache");
    const int32_t e = info["turns"][0]["episode"].get<int32_t>();
    served = reply["tokens"].get<std::vector<int32_t>>();
    ASSERT_FALSE(served.empty());
    std::vector<int32_t> want = Reference(r, info["episodes"][e]["medoid_messages"]);
    ASSERT_GE(want.size(), served.size());
    want.resize(served.size());  // the daemon may also stop at the template's end of turn
    EXPECT_EQ(served, want);
  }
  f.daemon.Signal(SIGTERM);
  ASSERT_EQ(f.daemon.WaitExit(60000), 0) << f.daemon.Log();

  // After a restart the next routed turn is served from a rebuilt cache, and matches the
  // reference over the history as stored (the reply as kvkeepd appended it).
  ASSERT_TRUE(f.daemon.Start()) << f.daemon.Log();
  LineClient c(f.daemon.socket_path());
  Rendered r2 = r;
  std::vector<int32_t> reply_tokens = renderer_->generation_prompt();
  reply_tokens.insert(reply_tokens.end(), served.begin(), served.end());
  const std::vector<int32_t> close = renderer_->CloseAssistantTurn(served);
  reply_tokens.insert(reply_tokens.end(), close.begin(), close.end());
  r2.tokens.push_back(reply_tokens);
  // Two messages: the 20th completes a window before the turn is routed, so the reply
  // (the 21st) changes no episode before session.info reads them.
  json more = json::array();
  for (const ChatMessageIn& m : {ChatMessageIn{"assistant", "Noted, thanks.", "", ""},
                                 ChatMessageIn{"user", "And what about the tax refund?", "", ""}}) {
    auto t = renderer_->RenderMessage({}, m);
    ASSERT_TRUE(t.ok());
    r2.tokens.push_back(*t);
    more.push_back({{"role", m.role}, {"content", m.content}, {"tokens", *t}});
  }
  c.Ok({{"id", 4}, {"verb", "session.append"}, {"session", "e"}, {"messages", more}});
  json reply = Generate(c, "e");
  EXPECT_EQ(reply["episode"]["served_by"], "episode_cache") << reply.dump() << f.daemon.Log();
  json info = c.Ok({{"id", 3}, {"verb", "session.info"}, {"session", "e"}})["episodes"];
  ASSERT_FALSE(info["turns"].empty());
  const int32_t e = info["turns"].back()["episode"].get<int32_t>();
  const auto got = reply["tokens"].get<std::vector<int32_t>>();
  ASSERT_FALSE(got.empty());
  {
    int64_t total = 0;
    for (const auto& t : r2.tokens) total += t.size();
    const auto& gp = renderer_->generation_prompt();
    const auto close2 = renderer_->CloseAssistantTurn(got);
    EXPECT_EQ(reply["num_tokens"].get<int64_t>(),
              total + static_cast<int64_t>(gp.size() + got.size() + close2.size()))
        << "the daemon's history is not the reference's";
  }
  std::vector<int32_t> want = Reference(r2, info["episodes"][e]["medoid_messages"]);
  ASSERT_GE(want.size(), got.size());
  want.resize(got.size());
  EXPECT_EQ(got, want) << info.dump();
  f.daemon.Signal(SIGTERM);
  ASSERT_EQ(f.daemon.WaitExit(60000), 0) << f.daemon.Log();
}

// --episode-layer-alpha: the daemon measures the model's layer profile on the calibration
// text at start (and caches it in its state directory), and a routed turn's cache keeps
// M_l entries in layer l: its reply is the reference's built with the budgets that a
// profile measured here on a bare backend gives. A missing calibration text stops the
// start with a clear error.
TEST_F(DaemonEpisodeServeTest, PerLayerBudgetsFromTheLayerProfile) {
  std::vector<std::string> texts = FourTopicConversation();
  texts.push_back("Do I need crampons on the glacier?");
  const Rendered r = Render(texts);
  const std::string calibration = FixturesDir() + "/corpus/mini_swe_agent_messages.txt";

  // The profile and the budgets, measured independently of the daemon.
  auto weights = ModelWeights::Load(DefaultEnv(), TinyModelDir(), config_);
  ASSERT_TRUE(weights.ok()) << weights.status().ToString();
  BackendOptions bo;
  bo.num_kv_blocks = 4 * kBlock / 16 + 1;
  bo.block_size = 16;
  auto backend = CreateCpuBackend(**weights, bo);
  ASSERT_TRUE(backend.ok()) << backend.status().ToString();
  TempDir profiles;
  auto profile = LoadOrMeasureLayerProfileOfFile(DefaultEnv(), profiles.path(),
                                                 ModelIdentity(config_, **weights), backend->get(),
                                                 *tokenizer_, calibration, 0, kBlock);
  ASSERT_TRUE(profile.ok()) << profile.status().ToString();
  EXPECT_EQ(profile->calibration_tokens, 4 * kBlock);
  auto budgets = LayerBudgets(profile->similarity, kBudget, 1.0);
  ASSERT_TRUE(budgets.ok()) << budgets.status().ToString();
  ASSERT_NE(*budgets, std::vector<int32_t>(config_.num_layers, kBudget)) << "uniform budgets";

  {
    DaemonFixture bad({"--embedder", "hashed", "--episode-budget-tokens", "100000",
                       "--episode-layer-alpha", "1", "--episode-calibration",
                       calibration + ".missing"});
    EXPECT_FALSE(bad.daemon.Start());
    EXPECT_NE(bad.daemon.Log().find("calibration text"), std::string::npos) << bad.daemon.Log();
  }
  DaemonFixture f({"--embedder", "hashed", "--episode-budget-tokens", "100000",
                   "--episode-cache-block-tokens", std::to_string(kBlock), "--episode-layer-alpha",
                   "1", "--episode-calibration", calibration});
  ASSERT_TRUE(f.daemon.Start()) << f.daemon.Log();
  EXPECT_TRUE(DefaultEnv()->FileExists(
      LayerProfilePath(f.dir.File("state"), ModelIdentity(config_, **weights))));
  LineClient c(f.daemon.socket_path());
  ASSERT_TRUE(c.connected());
  c.Ok({{"id", 1}, {"verb", "session.open"}, {"session", "e"}, {"episode_budget_tokens", kBudget}});
  c.Ok({{"id", 2}, {"verb", "session.append"}, {"session", "e"}, {"messages", r.messages}});
  json reply = Generate(c, "e");
  ASSERT_EQ(reply["episode"]["served_by"], "episode_cache") << reply.dump() << f.daemon.Log();
  json info = c.Ok({{"id", 3}, {"verb", "session.info"}, {"session", "e"}})["episodes"];
  ASSERT_EQ(info["turns"].size(), 1u) << info.dump();
  const json& medoids =
      info["episodes"][info["turns"][0]["episode"].get<int32_t>()]["medoid_messages"];
  const auto served = reply["tokens"].get<std::vector<int32_t>>();
  ASSERT_FALSE(served.empty());
  std::vector<int32_t> want = Reference(r, medoids, *budgets);
  std::vector<int32_t> uniform = Reference(r, medoids);
  ASSERT_GE(want.size(), served.size());
  want.resize(served.size());
  uniform.resize(std::min(uniform.size(), served.size()));
  EXPECT_EQ(served, want);
  // The comparison can fail: the uniform cache decodes differently.
  EXPECT_NE(uniform, want);
  f.daemon.Signal(SIGTERM);
  ASSERT_EQ(f.daemon.WaitExit(60000), 0) << f.daemon.Log();
}

TEST_F(DaemonEpisodeServeTest, CacheThatCannotBeBuiltFallsBackToFullKv) {
  std::vector<std::string> texts = FourTopicConversation();
  texts.push_back("Do I need crampons on the glacier?");
  const Rendered r = Render(texts);
  // B past the whole pool: the build can never get its blocks.
  DaemonFixture f({"--embedder", "hashed", "--episode-budget-tokens", std::to_string(kBudget),
                   "--episode-cache-block-tokens", "1000000"});
  ASSERT_TRUE(f.daemon.Start()) << f.daemon.Log();
  LineClient c(f.daemon.socket_path());
  c.Ok({{"id", 1}, {"verb", "session.open"}, {"session", "e"}});
  c.Ok({{"id", 2}, {"verb", "session.append"}, {"session", "e"}, {"messages", r.messages}});
  json reply = Generate(c, "e");
  EXPECT_FALSE(reply["episode"]["episode"].is_null()) << reply.dump();
  EXPECT_EQ(reply["episode"]["served_by"], "full_kv") << reply.dump();
  EXPECT_FALSE(reply["tokens"].empty());
  f.daemon.Signal(SIGTERM);
  ASSERT_EQ(f.daemon.WaitExit(60000), 0) << f.daemon.Log();
  EXPECT_NE(f.daemon.Log().find("full KV serves it"), std::string::npos) << f.daemon.Log();
}

}  // namespace
}  // namespace kvkeep::testing
