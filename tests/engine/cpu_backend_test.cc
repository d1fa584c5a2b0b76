// CpuBackend against an independent dense reference (contiguous KV, plain loops, weights
// through ModelWeights::ToFloat only), plus block-table scrambling, bf16 KV, block copies
// and batch validation.
#include <gtest/gtest.h>

#include <cmath>
#include <numeric>
#include <random>

#include "engine/cpu_backend.h"
#include "tests/engine/engine_fixture.h"

namespace kvkeep::enginetest {
namespace {

// A straightforward Llama forward over the whole sequence: every intermediate is a plain
// std::vector, attention is a causal loop over a contiguous K/V. Returns [T][vocab].
class DenseReference {
 public:
  explicit DenseReference(const ModelWeights& w) : w_(w), c_(w.config()) {}

  std::vector<float> Logits(const std::vector<int32_t>& tokens) const {
    const int64_t t = tokens.size(), h = c_.hidden_size, d = c_.head_dim;
    const int64_t nq = c_.num_q_heads, nkv = c_.num_kv_heads;
    std::vector<float> embed = W("model.embed_tokens.weight");
    std::vector<float> x(t * h);
    for (int64_t i = 0; i < t; ++i) {
      std::copy_n(&embed[tokens[i] * h], h, &x[i * h]);
    }
    for (int l = 0; l < c_.num_layers; ++l) {
      const std::string p = "model.layers." + std::to_string(l) + ".";
      std::vector<float> xn = Norm(x, t, h, W(p + "input_layernorm.weight"));
      std::vector<float> q = Linear(xn, t, h, W(p + "self_attn.q_proj.weight"), nq * d);
      std::vector<float> k = Linear(xn, t, h, W(p + "self_attn.k_proj.weight"), nkv * d);
      std::vector<float> v = Linear(xn, t, h, W(p + "self_attn.v_proj.weight"), nkv * d);
      Rope(&q, t, nq);
      Rope(&k, t, nkv);
      std::vector<float> attn(t * nq * d, 0.0f);
      for (int64_t i = 0; i < t; ++i) {
        for (int64_t hq = 0; hq < nq; ++hq) {
          const int64_t hk = hq / (nq / nkv);
          std::vector<double> s(i + 1);
          double mx = -1e300;
          for (int64_t j = 0; j <= i; ++j) {
            double dot = 0;
            for (int64_t e = 0; e < d; ++e)
              dot += double{q[(i * nq + hq) * d + e]} * k[(j * nkv + hk) * d + e];
            s[j] = dot / std::sqrt(double(d));
            mx = std::max(mx, s[j]);
          }
          double sum = 0;
          for (double& z : s) sum += z = std::exp(z - mx);
          for (int64_t e = 0; e < d; ++e) {
            double acc = 0;
            for (int64_t j = 0; j <= i; ++j) acc += s[j] * v[(j * nkv + hk) * d + e];
            attn[(i * nq + hq) * d + e] = static_cast<float>(acc / sum);
          }
        }
      }
      std::vector<float> o = Linear(attn, t, nq * d, W(p + "self_attn.o_proj.weight"), h);
      for (int64_t i = 0; i < t * h; ++i) x[i] += o[i];
      xn = Norm(x, t, h, W(p + "post_attention_layernorm.weight"));
      const int64_t inter = c_.intermediate_size;
      std::vector<float> g = Linear(xn, t, h, W(p + "mlp.gate_proj.weight"), inter);
      std::vector<float> u = Linear(xn, t, h, W(p + "mlp.up_proj.weight"), inter);
      for (int64_t i = 0; i < t * inter; ++i) g[i] = g[i] / (1.0f + std::exp(-g[i])) * u[i];
      o = Linear(g, t, inter, W(p + "mlp.down_proj.weight"), h);
      for (int64_t i = 0; i < t * h; ++i) x[i] += o[i];
    }
    x = Norm(x, t, h, W("model.norm.weight"));
    return Linear(x, t, h, W("lm_head.weight"), c_.vocab_size);
  }

 private:
  std::vector<float> W(const std::string& name) const {
    const TensorView* tv = w_.Get(name);
    EXPECT_NE(tv, nullptr) << name;
    return tv ? ModelWeights::ToFloat(*tv) : std::vector<float>();
  }
  std::vector<float> Norm(const std::vector<float>& x, int64_t rows, int64_t dim,
                          const std::vector<float>& weight) const {
    std::vector<float> out(x.size());
    for (int64_t r = 0; r < rows; ++r) {
      double ss = 0;
      for (int64_t i = 0; i < dim; ++i) ss += double{x[r * dim + i]} * x[r * dim + i];
      const double inv = 1.0 / std::sqrt(ss / dim + c_.rms_norm_eps);
      for (int64_t i = 0; i < dim; ++i) out[r * dim + i] = float(x[r * dim + i] * inv) * weight[i];
    }
    return out;
  }
  static std::vector<float> Linear(const std::vector<float>& x, int64_t rows, int64_t in,
                                   const std::vector<float>& w, int64_t out) {
    std::vector<float> y(rows * out);
    for (int64_t r = 0; r < rows; ++r) {
      for (int64_t o = 0; o < out; ++o) {
        double acc = 0;
        for (int64_t i = 0; i < in; ++i) acc += double{x[r * in + i]} * w[o * in + i];
        y[r * out + o] = static_cast<float>(acc);
      }
    }
    return y;
  }
  // HF rotate_half with inv_freq = theta^(-2i/d), position = token index.
  void Rope(std::vector<float>* x, int64_t t, int64_t heads) const {
    const int64_t d = c_.head_dim, half = d / 2;
    for (int64_t i = 0; i < t; ++i) {
      for (int64_t hh = 0; hh < heads; ++hh) {
        float* v = &(*x)[(i * heads + hh) * d];
        for (int64_t e = 0; e < half; ++e) {
          const double freq = std::pow(double{c_.rope.theta}, -2.0 * e / d);
          const double a = i * freq, cs = std::cos(a), sn = std::sin(a);
          const double x0 = v[e], x1 = v[e + half];
          v[e] = static_cast<float>(x0 * cs - x1 * sn);
          v[e + half] = static_cast<float>(x1 * cs + x0 * sn);
        }
      }
    }
  }

  const ModelWeights& w_;
  const ModelConfig& c_;
};

class CpuBackendTest : public ::testing::Test {
 protected:
  void SetUp() override {
    model_ = MakeTestModel("tiny");
    ASSERT_NE(model_, nullptr);
    // The reference implements plain Llama: the tiny preset must be one.
    ASSERT_FALSE(model_->config.qk_norm);
    ASSERT_FALSE(model_->config.attention_bias);
    ASSERT_LE(model_->config.rope.factor, 0.0f);
    rng_.seed(model_->seed);
  }
  std::unique_ptr<TestModel> model_;
  std::mt19937_64 rng_;
};

TEST_F(CpuBackendTest, OneShotPrefillMatchesDenseReference) {
  const int kBs = 16;
  std::vector<int32_t> tokens = RandomTokens(rng_, 133);
  std::vector<int32_t> blocks = Iota(9);
  auto backend = MakeBackend(*model_->weights, 12, kBs);
  ASSERT_NE(backend, nullptr);
  std::vector<float> got =
      RunBatch(backend.get(), MakeBatch({{&tokens, &blocks, 0, 133}}, kBs, true));
  std::vector<float> want = DenseReference(*model_->weights).Logits(tokens);
  EXPECT_LT(RelDiff(got, want), 1e-4);
}

TEST_F(CpuBackendTest, Bf16KvStaysCloseToReference) {
  const int kBs = 8;
  std::vector<int32_t> tokens = RandomTokens(rng_, 70);
  std::vector<int32_t> blocks = Iota(9, 3);
  auto backend = MakeBackend(*model_->weights, 12, kBs, KvDType::kBF16);
  ASSERT_NE(backend, nullptr);
  std::vector<float> got =
      RunBatch(backend.get(), MakeBatch({{&tokens, &blocks, 0, 70}}, kBs, true));
  std::vector<float> want = DenseReference(*model_->weights).Logits(tokens);
  EXPECT_LT(RelDiff(got, want), 3e-2);
  EXPECT_GT(RelDiff(got, want), 0.0) << "bf16 KV should round somewhere";
}

TEST_F(CpuBackendTest, ScrambledBlockTablesGiveIdenticalLogits) {
  const int kBs = 16, kPool = 40;
  std::vector<int32_t> tokens = RandomTokens(rng_, 150);
  auto a = MakeBackend(*model_->weights, kPool, kBs);
  auto b = MakeBackend(*model_->weights, kPool, kBs);
  ASSERT_TRUE(a && b);
  std::vector<int32_t> straight = Iota(10);
  std::vector<int32_t> scrambled = Iota(kPool);
  std::shuffle(scrambled.begin(), scrambled.end(), rng_);
  scrambled.resize(10);
  std::vector<float> la = RunBatch(a.get(), MakeBatch({{&tokens, &straight, 0, 150}}, kBs, true));
  std::vector<float> lb = RunBatch(b.get(), MakeBatch({{&tokens, &scrambled, 0, 150}}, kBs, true));
  EXPECT_EQ(la, lb);
}

TEST_F(CpuBackendTest, CopiedAndRestoredBlocksServeTheSameKv) {
  const int kBs = 16;
  std::vector<int32_t> tokens = RandomTokens(rng_, 41);
  auto backend = MakeBackend(*model_->weights, 10, kBs);
  ASSERT_NE(backend, nullptr);
  std::vector<int32_t> first = {0, 1, 2};
  RunBatch(backend.get(), MakeBatch({{&tokens, &first, 0, 40}}, kBs, false));
  // Copy blocks 0,1 -> 5,6 with CopyBlocks and block 2 -> 7 through Read/WriteBlock.
  ASSERT_TRUE(backend->CopyBlocks({{0, 5}, {1, 6}}).ok());
  std::vector<uint8_t> bytes(backend->block_bytes());
  ASSERT_TRUE(backend->ReadBlock(2, bytes.data()).ok());
  ASSERT_TRUE(backend->WriteBlock(7, bytes.data()).ok());
  std::vector<int32_t> copy = {5, 6, 7};
  std::vector<float> via_copy =
      RunBatch(backend.get(), MakeBatch({{&tokens, &copy, 40, 41}}, kBs, false));
  std::vector<float> via_orig =
      RunBatch(backend.get(), MakeBatch({{&tokens, &first, 40, 41}}, kBs, false));
  EXPECT_EQ(via_copy, via_orig);
  EXPECT_EQ(backend->block_bytes(), backend->kv_shape().block_stride() * sizeof(float));
  EXPECT_TRUE(backend->ReadBlock(10, bytes.data()).IsInvalidArgument());
  EXPECT_TRUE(backend->CopyBlocks({{0, -1}}).IsInvalidArgument());
}

TEST_F(CpuBackendTest, RejectsMalformedBatches) {
  const int kBs = 16;
  std::vector<int32_t> tokens = RandomTokens(rng_, 20);
  std::vector<int32_t> blocks = {0, 1};
  auto backend = MakeBackend(*model_->weights, 4, kBs);
  ASSERT_NE(backend, nullptr);
  const ForwardBatch good = MakeBatch({{&tokens, &blocks, 0, 20}}, kBs, false);
  std::vector<float> logits;
  ASSERT_TRUE(backend->Forward(good, &logits).ok());
  auto expect_rejected = [&](const char* what, auto mutate) {
    ForwardBatch bad = good;
    mutate(bad);
    EXPECT_TRUE(backend->Forward(bad, &logits).IsInvalidArgument()) << what;
  };
  expect_rejected("id out of vocab",
                  [&](ForwardBatch& b) { b.token_ids[3] = model_->config.vocab_size; });
  expect_rejected("negative id", [](ForwardBatch& b) { b.token_ids[0] = -1; });
  expect_rejected("block outside pool", [](ForwardBatch& b) { b.block_tables[1] = 4; });
  expect_rejected("slot mismatch", [](ForwardBatch& b) { b.slot_mapping[5] += 1; });
  expect_rejected("q_start end", [](ForwardBatch& b) { b.q_start.back() = 19; });
  expect_rejected("kv_len too long", [](ForwardBatch& b) { b.kv_len[0] = 33; });
  expect_rejected("kv_len shorter than new tokens", [](ForwardBatch& b) { b.kv_len[0] = 10; });
  expect_rejected("logit row", [](ForwardBatch& b) { b.logit_rows[0] = 20; });
  expect_rejected("positions length", [](ForwardBatch& b) { b.positions.pop_back(); });
  expect_rejected("empty", [](ForwardBatch& b) { b = ForwardBatch(); });
}

}  // namespace
}  // namespace kvkeep::enginetest
