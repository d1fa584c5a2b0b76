// CPU paged attention against a dense, unpaged attention written here independently
// (contiguous [position][kv_head][dim] K/V, plain softmax in double).
#include "kernels/cpu/attention.h"

#include <gtest/gtest.h>
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <random>
#include <type_traits>
#include <vector>

#include "tests/testlib/test_util.h"

namespace kvkeep::cpu {
namespace {

constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();

template <typename T>
T FromFloat(float x) {
  if constexpr (std::is_same_v<T, bf16>) {
    return FloatToBf16(x);
  } else {
    return x;
  }
}

inline float ToFloat(float x) { return x; }
inline float ToFloat(bf16 x) { return Bf16ToFloat(x); }

// The value a KV element of type T holds after storing x.
template <typename T>
float StoredValue(float x) {
  if constexpr (std::is_same_v<T, bf16>) {
    return Bf16ToFloat(FloatToBf16(x));
  } else {
    return x;
  }
}

struct Dims {
  int32_t num_q_heads = 4;
  int32_t num_kv_heads = 4;
  int32_t head_dim = 64;
  int32_t block_size = 16;
};

// One sequence's data in dense form.
struct Seq {
  int32_t kv_len = 0;
  int32_t n_new = 0;
  std::vector<float> k;  // [kv_len][num_kv_heads][head_dim], already rounded to the KV type
  std::vector<float> v;
  std::vector<float> q;  // [n_new][num_q_heads][head_dim]
};

template <typename KvT>
Seq MakeSeq(const Dims& dims, int32_t kv_len, int32_t n_new, float q_magnitude,
            std::mt19937_64& rng) {
  std::uniform_real_distribution<float> u(-1.0f, 1.0f);
  Seq s;
  s.kv_len = kv_len;
  s.n_new = n_new;
  const int64_t kv_elems = int64_t{kv_len} * dims.num_kv_heads * dims.head_dim;
  for (int64_t i = 0; i < kv_elems; ++i) {
    s.k.push_back(StoredValue<KvT>(u(rng)));
    s.v.push_back(StoredValue<KvT>(u(rng)));
  }
  const int64_t q_elems = int64_t{n_new} * dims.num_q_heads * dims.head_dim;
  for (int64_t i = 0; i < q_elems; ++i) s.q.push_back(q_magnitude * u(rng));
  return s;
}

// Dense causal attention of one sequence's new tokens, in double:
// out[n_new][num_q_heads][head_dim].
std::vector<double> DenseAttention(const Dims& dims, const Seq& s, float scale) {
  const int32_t d = dims.head_dim;
  const int32_t group = dims.num_q_heads / dims.num_kv_heads;
  std::vector<double> out(int64_t{s.n_new} * dims.num_q_heads * d, 0.0);
  std::vector<double> scores(s.kv_len);
  for (int32_t t = 0; t < s.n_new; ++t) {
    const int32_t pos = s.kv_len - s.n_new + t;
    for (int32_t h = 0; h < dims.num_q_heads; ++h) {
      const int32_t kvh = h / group;
      const float* q = &s.q[(int64_t{t} * dims.num_q_heads + h) * d];
      double max_score = -std::numeric_limits<double>::infinity();
      for (int32_t j = 0; j <= pos; ++j) {
        const float* k = &s.k[(int64_t{j} * dims.num_kv_heads + kvh) * d];
        double dot = 0.0;
        for (int32_t x = 0; x < d; ++x) dot += double{q[x]} * k[x];
        scores[j] = dot * scale;
        max_score = std::max(max_score, scores[j]);
      }
      double sum = 0.0;
      for (int32_t j = 0; j <= pos; ++j) sum += std::exp(scores[j] - max_score);
      double* o = &out[(int64_t{t} * dims.num_q_heads + h) * d];
      for (int32_t j = 0; j <= pos; ++j) {
        const double w = std::exp(scores[j] - max_score) / sum;
        const float* v = &s.v[(int64_t{j} * dims.num_kv_heads + kvh) * d];
        for (int32_t x = 0; x < d; ++x) o[x] += w * v[x];
      }
    }
  }
  return out;
}

// A batch laid out in a paged pool: 2 layers (the test uses layer 1), blocks handed out
// in a random order from a pool with unused blocks in between. Everything not written
// (layer 0, unused blocks, slots past kv_len, table entries past the last block) is NaN,
// so any stray read shows up in the outputs.
template <typename KvT>
struct PagedBatch {
  KvPoolShape shape;
  std::vector<KvT> pool;
  std::vector<int32_t> q_start{0};
  std::vector<int32_t> kv_len;
  std::vector<int32_t> tables;
  std::vector<float> q;
  AttentionBatch batch;
  PagedKv<KvT> kv;
};

template <typename KvT>
PagedBatch<KvT> LayOut(const Dims& dims, const std::vector<Seq>& seqs, int32_t unused_blocks,
                       std::mt19937_64& rng) {
  PagedBatch<KvT> pb;
  const int32_t bs = dims.block_size;
  int32_t needed = 0;
  int32_t max_blocks = 1;
  for (const Seq& s : seqs) {
    const int32_t nb = (s.kv_len + bs - 1) / bs;
    needed += nb;
    max_blocks = std::max(max_blocks, nb + 1);  // one spare table column
  }
  pb.shape = KvPoolShape{.num_blocks = needed + unused_blocks + 1,
                         .num_layers = 2,
                         .num_kv_heads = dims.num_kv_heads,
                         .block_size = bs,
                         .head_dim = dims.head_dim};
  pb.pool.assign(pb.shape.total_elements(), FromFloat<KvT>(kNaN));
  std::vector<int32_t> ids(pb.shape.num_blocks);
  std::iota(ids.begin(), ids.end(), 0);
  std::shuffle(ids.begin(), ids.end(), rng);
  const int32_t poison_block = ids.back();  // never written: all NaN

  size_t next = 0;
  int32_t skips_left = unused_blocks;
  const int layer = 1;
  for (const Seq& s : seqs) {
    pb.q_start.push_back(pb.q_start.back() + s.n_new);
    pb.kv_len.push_back(s.kv_len);
    pb.q.insert(pb.q.end(), s.q.begin(), s.q.end());
    const size_t row = pb.tables.size();
    pb.tables.resize(row + max_blocks, poison_block);
    for (int32_t pos = 0; pos < s.kv_len; ++pos) {
      if (pos % bs == 0) {
        // Skip some ids so the sequence's blocks are not adjacent in the pool.
        if (skips_left > 0 && rng() % 3 == 0) {
          --skips_left;
          ++next;
        }
        pb.tables[row + pos / bs] = ids[next++];
      }
      const int64_t block = pb.tables[row + pos / bs];
      for (int32_t h = 0; h < dims.num_kv_heads; ++h) {
        for (int32_t x = 0; x < dims.head_dim; ++x) {
          // The documented layout: pool[block][layer][K|V][head][slot][dim].
          const int64_t at = block * pb.shape.block_stride() + layer * pb.shape.layer_stride() +
                             (int64_t{h} * bs + pos % bs) * dims.head_dim + x;
          const int64_t src = (int64_t{pos} * dims.num_kv_heads + h) * dims.head_dim + x;
          pb.pool[at] = FromFloat<KvT>(s.k[src]);
          pb.pool[at + pb.shape.kv_stride()] = FromFloat<KvT>(s.v[src]);
        }
      }
    }
  }
  EXPECT_LT(next, ids.size()) << "test bug: ran out of blocks";
  pb.batch = AttentionBatch{.num_seqs = static_cast<int32_t>(seqs.size()),
                            .q_start = pb.q_start.data(),
                            .kv_len = pb.kv_len.data(),
                            .block_tables = pb.tables.data(),
                            .max_blocks_per_seq = max_blocks};
  pb.kv = LayerView(pb.pool.data(), pb.shape, layer);
  return pb;
}

AttentionParams Params(const Dims& dims) {
  return AttentionParams{.num_q_heads = dims.num_q_heads,
                         .scale = 1.0f / std::sqrt(static_cast<float>(dims.head_dim))};
}

// Runs paged attention (decode entry point when is_decode) on NaN-poisoned outputs.
template <typename KvT>
std::vector<float> RunPaged(const Dims& dims, PagedBatch<KvT>& pb, bool is_decode) {
  std::vector<float> out(pb.q.size(), kNaN);
  const AttentionParams params = Params(dims);
  const Status st = is_decode
                        ? PagedDecodeAttention(params, pb.batch, pb.kv, pb.q.data(), out.data())
                        : PagedAttention(params, pb.batch, pb.kv, pb.q.data(), out.data());
  EXPECT_TRUE(st.ok()) << st.ToString();
  return out;
}

void ExpectMatchesDense(const Dims& dims, const std::vector<Seq>& seqs,
                        const std::vector<float>& out, double tol) {
  int64_t offset = 0;
  for (size_t i = 0; i < seqs.size(); ++i) {
    const std::vector<double> want = DenseAttention(dims, seqs[i], Params(dims).scale);
    int64_t bad = 0;
    for (size_t e = 0; e < want.size(); ++e) {
      const float got = out[offset + e];
      if (!(std::abs(got - want[e]) <= tol * (1.0 + std::abs(want[e])))) {
        if (++bad <= 3) {
          ADD_FAILURE() << "seq " << i << " (kv_len " << seqs[i].kv_len << ", n_new "
                        << seqs[i].n_new << ") element " << e << ": got " << got << ", want "
                        << want[e];
        }
      }
    }
    EXPECT_EQ(bad, 0) << "seq " << i << " mismatches";
    offset += static_cast<int64_t>(want.size());
  }
  EXPECT_EQ(offset, static_cast<int64_t>(out.size()));
}

// fp32 compute against a double reference over the same (possibly bf16-rounded) values.
constexpr double kTol = 2e-5;

// Lengths that straddle block edges, plus a random one.
std::vector<int32_t> EdgeLengths(int32_t bs, std::mt19937_64& rng) {
  std::vector<int32_t> lens = {1, std::max(1, bs - 1), bs, bs + 1,
                               1 + static_cast<int32_t>(rng() % 150)};
  std::shuffle(lens.begin(), lens.end(), rng);
  return lens;
}

const Dims kHeadConfigs[] = {{3, 3, 0, 0}, {8, 2, 0, 0}, {16, 2, 0, 0}};  // GQA 1, 4, 8
const int32_t kHeadDims[] = {64, 80, 128, 256};
const int32_t kBlockSizes[] = {1, 8, 16};

template <typename KvT>
void DecodeSweep() {
  std::mt19937_64 rng(testing::TestSeed());
  for (const Dims& heads : kHeadConfigs) {
    for (int32_t d : kHeadDims) {
      for (int32_t bs : kBlockSizes) {
        const Dims dims{heads.num_q_heads, heads.num_kv_heads, d, bs};
        SCOPED_TRACE(::testing::Message()
                     << "q_heads " << dims.num_q_heads << " kv_heads " << dims.num_kv_heads
                     << " head_dim " << d << " block_size " << bs);
        std::vector<Seq> seqs;
        for (int32_t len : EdgeLengths(bs, rng)) {
          seqs.push_back(MakeSeq<KvT>(dims, len, 1, 1.0f, rng));
        }
        auto pb = LayOut<KvT>(dims, seqs, /*unused_blocks=*/7, rng);
        ExpectMatchesDense(dims, seqs, RunPaged(dims, pb, /*is_decode=*/true), kTol);
      }
    }
  }
}

TEST(PagedAttention, DecodeBatchMatchesDenseFp32) { DecodeSweep<float>(); }
TEST(PagedAttention, DecodeBatchMatchesDenseBf16) { DecodeSweep<bf16>(); }

// Prefill chunks over a cached prefix and from scratch (cached == 0).
template <typename KvT>
void PrefillSweep() {
  std::mt19937_64 rng(testing::TestSeed() + 1);
  for (const Dims& heads : kHeadConfigs) {
    for (int32_t d : kHeadDims) {
      for (int32_t bs : kBlockSizes) {
        const Dims dims{heads.num_q_heads, heads.num_kv_heads, d, bs};
        SCOPED_TRACE(::testing::Message()
                     << "q_heads " << dims.num_q_heads << " kv_heads " << dims.num_kv_heads
                     << " head_dim " << d << " block_size " << bs);
        std::vector<Seq> seqs;
        const std::vector<int32_t> lens = EdgeLengths(bs, rng);
        seqs.push_back(MakeSeq<KvT>(dims, lens[0], lens[0], 1.0f, rng));  // from scratch
        seqs.push_back(MakeSeq<KvT>(dims, 1, 1, 1.0f, rng));              // one token
        const int32_t cached = lens[1];
        const int32_t chunk = 1 + static_cast<int32_t>(rng() % 40);
        seqs.push_back(MakeSeq<KvT>(dims, cached + chunk, chunk, 1.0f, rng));
        seqs.push_back(MakeSeq<KvT>(dims, lens[2] + bs + 1, bs + 1, 1.0f, rng));
        auto pb = LayOut<KvT>(dims, seqs, /*unused_blocks=*/5, rng);
        ExpectMatchesDense(dims, seqs, RunPaged(dims, pb, /*is_decode=*/false), kTol);
      }
    }
  }
}

TEST(PagedAttention, PrefillMatchesDenseFp32) { PrefillSweep<float>(); }
TEST(PagedAttention, PrefillMatchesDenseBf16) { PrefillSweep<bf16>(); }

// Runs with more OpenMP threads than tiles, so long contexts are split across threads
// and merged through the softmax state (what a many-core decode with batch 1 does).
class ManyThreads : public ::testing::Test {
 protected:
  void SetUp() override {
    saved_ = omp_get_max_threads();
    omp_set_num_threads(16);
  }
  void TearDown() override { omp_set_num_threads(saved_); }

 private:
  int saved_ = 1;
};

TEST_F(ManyThreads, SplitContextDecodeMatchesDense) {
  std::mt19937_64 rng(testing::TestSeed() + 2);
  for (int32_t bs : {1, 16}) {
    const Dims dims{32, 8, 128, bs};  // batch 1, 32 heads: 8 tiles for 16 threads
    std::vector<Seq> seqs = {
        MakeSeq<bf16>(dims, 1500 + static_cast<int32_t>(rng() % 700), 1, 1.0f, rng)};
    auto pb = LayOut<bf16>(dims, seqs, 3, rng);
    ExpectMatchesDense(dims, seqs, RunPaged(dims, pb, true), kTol);
  }
}

TEST_F(ManyThreads, SplitContextPrefillMatchesDense) {
  std::mt19937_64 rng(testing::TestSeed() + 3);
  const Dims dims{4, 1, 80, 16};
  std::vector<Seq> seqs = {MakeSeq<float>(dims, 1300, 9, 1.0f, rng),
                           MakeSeq<float>(dims, 700, 1, 1.0f, rng)};
  auto pb = LayOut<float>(dims, seqs, 3, rng);
  ExpectMatchesDense(dims, seqs, RunPaged(dims, pb, false), kTol);
}

// Scores in the hundreds overflow a naive exp; the online max keeps them finite.
TEST(PagedAttention, LargeScoresAreStable) {
  std::mt19937_64 rng(testing::TestSeed() + 4);
  const Dims dims{4, 2, 64, 8};
  std::vector<Seq> seqs = {MakeSeq<float>(dims, 90, 30, 300.0f, rng),
                           MakeSeq<float>(dims, 41, 1, 300.0f, rng)};
  auto pb = LayOut<float>(dims, seqs, 2, rng);
  const std::vector<float> out = RunPaged(dims, pb, false);
  for (float x : out) ASSERT_TRUE(std::isfinite(x));
  ExpectMatchesDense(dims, seqs, out, 1e-4);
}

// A prefill chunk and decode tokens in one call equal each sequence run on its own.
TEST(PagedAttention, MixedBatchEqualsSeparateCalls) {
  std::mt19937_64 rng(testing::TestSeed() + 5);
  const Dims dims{8, 2, 128, 16};
  std::vector<Seq> seqs = {MakeSeq<bf16>(dims, 100, 1, 1.0f, rng),
                           MakeSeq<bf16>(dims, 77, 37, 1.0f, rng),  // chunk over 40 cached
                           MakeSeq<bf16>(dims, 17, 1, 1.0f, rng),
                           MakeSeq<bf16>(dims, 20, 20, 1.0f, rng),  // from scratch
                           MakeSeq<bf16>(dims, 1, 1, 1.0f, rng)};
  auto mixed = LayOut<bf16>(dims, seqs, 4, rng);
  const std::vector<float> together = RunPaged(dims, mixed, false);
  ExpectMatchesDense(dims, seqs, together, kTol);

  int64_t offset = 0;
  for (const Seq& s : seqs) {
    auto alone = LayOut<bf16>(dims, {s}, 4, rng);
    const std::vector<float> out = RunPaged(dims, alone, s.n_new == 1);
    for (size_t e = 0; e < out.size(); ++e) {
      ASSERT_NEAR(out[e], together[offset + e], 1e-6) << "kv_len " << s.kv_len << " e " << e;
    }
    offset += static_cast<int64_t>(out.size());
  }
}

TEST(PagedAttention, EmptyBatchAndNoNewTokensAreOk) {
  std::mt19937_64 rng(testing::TestSeed() + 6);
  const Dims dims{4, 4, 64, 16};
  std::vector<Seq> seqs = {MakeSeq<float>(dims, 30, 0, 1.0f, rng),
                           MakeSeq<float>(dims, 5, 2, 1.0f, rng)};
  auto pb = LayOut<float>(dims, seqs, 0, rng);
  ExpectMatchesDense(dims, seqs, RunPaged(dims, pb, false), kTol);
  AttentionBatch empty;
  EXPECT_TRUE(PagedAttention(Params(dims), empty, pb.kv, nullptr, nullptr).ok());
}

template <typename KvT>
void WriteKvCheck() {
  std::mt19937_64 rng(testing::TestSeed() + 7);
  std::uniform_real_distribution<float> u(-1.0f, 1.0f);
  const KvPoolShape shape{
      .num_blocks = 5, .num_layers = 3, .num_kv_heads = 2, .block_size = 8, .head_dim = 80};
  std::vector<KvT> pool(shape.total_elements(), FromFloat<KvT>(kNaN));
  const int layer = 2;
  const PagedKv<KvT> kv = LayerView(pool.data(), shape, layer);
  const int32_t slots[] = {3 * 8 + 7, -1, 0, 4 * 8 + 1, 1 * 8 + 2};
  const int32_t num_tokens = 5;
  const int64_t row = int64_t{shape.num_kv_heads} * shape.head_dim;
  std::vector<float> k(num_tokens * row);
  std::vector<float> v(num_tokens * row);
  for (float& x : k) x = u(rng);
  for (float& x : v) x = u(rng);
  ASSERT_TRUE(WriteKv(kv, k.data(), v.data(), slots, num_tokens).ok());

  int64_t written = 0;
  for (int32_t t = 0; t < num_tokens; ++t) {
    if (slots[t] < 0) continue;
    const int64_t block = slots[t] / shape.block_size;
    const int64_t offset = slots[t] % shape.block_size;
    for (int32_t h = 0; h < shape.num_kv_heads; ++h) {
      for (int32_t x = 0; x < shape.head_dim; ++x) {
        const int64_t at = block * shape.block_stride() + layer * shape.layer_stride() +
                           (h * shape.block_size + offset) * shape.head_dim + x;
        const int64_t src = t * row + h * shape.head_dim + x;
        ASSERT_EQ(ToFloat(pool[at]), StoredValue<KvT>(k[src])) << "t " << t << " h " << h;
        ASSERT_EQ(ToFloat(pool[at + shape.kv_stride()]), StoredValue<KvT>(v[src]));
        written += 2;
      }
    }
  }
  // Nothing else was touched.
  int64_t nan_count = 0;
  for (const KvT& e : pool) nan_count += std::isnan(ToFloat(e)) ? 1 : 0;
  EXPECT_EQ(nan_count + written, shape.total_elements());
}

TEST(WriteKv, PlacesRowsBySlotFp32) { WriteKvCheck<float>(); }
TEST(WriteKv, PlacesRowsBySlotBf16) { WriteKvCheck<bf16>(); }

// The write kernel and the attention kernel agree on the layout: rows written with
// WriteKv attend like the dense reference.
TEST(WriteKv, FeedsAttention) {
  std::mt19937_64 rng(testing::TestSeed() + 8);
  const Dims dims{8, 2, 64, 16};
  const Seq s = MakeSeq<bf16>(dims, 45, 45, 1.0f, rng);
  const KvPoolShape shape{
      .num_blocks = 6, .num_layers = 1, .num_kv_heads = 2, .block_size = 16, .head_dim = 64};
  std::vector<bf16> pool(shape.total_elements(), FloatToBf16(kNaN));
  const PagedKv<bf16> kv = LayerView(pool.data(), shape, 0);
  const std::vector<int32_t> table = {4, 0, 2};
  std::vector<int32_t> slots;
  for (int32_t pos = 0; pos < s.kv_len; ++pos) slots.push_back(table[pos / 16] * 16 + pos % 16);
  ASSERT_TRUE(WriteKv(kv, s.k.data(), s.v.data(), slots.data(), s.kv_len).ok());
  const std::vector<int32_t> q_start = {0, 45};
  const std::vector<int32_t> kv_len = {45};
  const AttentionBatch batch{.num_seqs = 1,
                             .q_start = q_start.data(),
                             .kv_len = kv_len.data(),
                             .block_tables = table.data(),
                             .max_blocks_per_seq = 3};
  std::vector<float> out(s.q.size(), kNaN);
  ASSERT_TRUE(PagedAttention(Params(dims), batch, kv, s.q.data(), out.data()).ok());
  ExpectMatchesDense(dims, {s}, out, kTol);
}

TEST(PagedAttention, RejectsInvalidArguments) {
  std::mt19937_64 rng(testing::TestSeed() + 9);
  const Dims dims{8, 2, 64, 16};
  std::vector<Seq> seqs = {MakeSeq<float>(dims, 40, 1, 1.0f, rng),
                           MakeSeq<float>(dims, 20, 1, 1.0f, rng)};
  auto pb = LayOut<float>(dims, seqs, 0, rng);
  std::vector<float> out(pb.q.size());
  auto run = [&](AttentionParams params, AttentionBatch batch, PagedKv<float> kv) {
    return PagedAttention(params, batch, kv, pb.q.data(), out.data());
  };
  auto decode = [&](AttentionParams params, AttentionBatch batch, PagedKv<float> kv) {
    return PagedDecodeAttention(params, batch, kv, pb.q.data(), out.data());
  };
  const AttentionParams params = Params(dims);
  ASSERT_TRUE(run(params, pb.batch, pb.kv).ok());

  for (int32_t bad_dim : {0, -4, 257, 300}) {
    PagedKv<float> kv = pb.kv;
    kv.head_dim = bad_dim;
    EXPECT_TRUE(run(params, pb.batch, kv).IsInvalidArgument()) << "head_dim " << bad_dim;
  }
  for (int32_t bad_heads : {0, 7, -8}) {
    AttentionParams p = params;
    p.num_q_heads = bad_heads;
    EXPECT_TRUE(run(p, pb.batch, pb.kv).IsInvalidArgument()) << "num_q_heads " << bad_heads;
  }
  {
    PagedKv<float> kv = pb.kv;
    kv.block_size = 0;
    EXPECT_TRUE(run(params, pb.batch, kv).IsInvalidArgument());
    kv = pb.kv;
    kv.k = nullptr;
    EXPECT_TRUE(run(params, pb.batch, kv).IsInvalidArgument());
  }
  {  // kv_len < n_new
    std::vector<int32_t> q_start = {0, 1, 25};
    AttentionBatch b = pb.batch;
    b.q_start = q_start.data();
    EXPECT_TRUE(run(params, b, pb.kv).IsInvalidArgument());
  }
  {  // q_start not monotonic, and not starting at 0
    std::vector<int32_t> q_start = {0, 2, 1};
    AttentionBatch b = pb.batch;
    b.q_start = q_start.data();
    EXPECT_TRUE(run(params, b, pb.kv).IsInvalidArgument());
    q_start = {1, 2, 3};
    EXPECT_TRUE(run(params, b, pb.kv).IsInvalidArgument());
  }
  {  // kv_len beyond the block table
    std::vector<int32_t> kv_len = {40, pb.batch.max_blocks_per_seq * 16 + 1};
    AttentionBatch b = pb.batch;
    b.kv_len = kv_len.data();
    EXPECT_TRUE(run(params, b, pb.kv).IsInvalidArgument());
  }
  {  // a negative block id inside the context
    std::vector<int32_t> tables = pb.tables;
    tables[pb.batch.max_blocks_per_seq + 1] = -1;
    AttentionBatch b = pb.batch;
    b.block_tables = tables.data();
    EXPECT_TRUE(run(params, b, pb.kv).IsInvalidArgument());
  }
  {  // a block id past the end of the pool
    ASSERT_GT(pb.kv.num_blocks, 0);
    std::vector<int32_t> tables = pb.tables;
    tables[0] = pb.kv.num_blocks;
    AttentionBatch b = pb.batch;
    b.block_tables = tables.data();
    EXPECT_TRUE(run(params, b, pb.kv).IsInvalidArgument());
  }
  {  // decode requires exactly one token per sequence
    std::vector<int32_t> q_start = {0, 2, 3};
    AttentionBatch b = pb.batch;
    b.q_start = q_start.data();
    EXPECT_TRUE(decode(params, b, pb.kv).IsInvalidArgument());
    EXPECT_TRUE(decode(params, pb.batch, pb.kv).ok());
  }
  std::vector<float> k(dims.num_kv_heads * dims.head_dim);
  const int32_t slot = 0;
  EXPECT_TRUE(WriteKv(pb.kv, k.data(), k.data(), &slot, -1).IsInvalidArgument());
  const int32_t past_end = pb.kv.num_blocks * pb.kv.block_size;
  EXPECT_TRUE(WriteKv(pb.kv, k.data(), k.data(), &past_end, 1).IsInvalidArgument());
  PagedKv<float> kv = pb.kv;
  kv.head_dim = 300;
  EXPECT_TRUE(WriteKv(kv, k.data(), k.data(), &slot, 1).IsInvalidArgument());
}

}  // namespace
}  // namespace kvkeep::cpu
