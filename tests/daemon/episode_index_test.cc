// EpisodeIndex with a real SQLite store and real FAISS: indexing on append, session.query's
// search against a brute-force reference, persistence across a restart (a new Store and
// EpisodeIndex on the same file), a corrupt blob rebuilt, and routing of over-budget turns.
#include "daemon/episode_index.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <numeric>

#include "base/clock.h"
#include "index/embedder.h"
#include "index/hashed_embedder.h"
#include "index/segmenter.h"
#include "tests/testlib/test_util.h"

namespace kvkeep {
namespace {

using testing::TempDir;

// Four topics, eight messages each (two windows of four), user and assistant in turn.
std::vector<IndexedMessage> Conversation() {
  const std::vector<std::vector<std::string>> topics = {
      {"My sourdough starter smells of acetone.", "Feed it twice a day with rye flour.",
       "The dough did not rise overnight.", "Proof it longer somewhere warm, near the oven.",
       "Should I add more yeast to the bread?", "No, a sourdough loaf needs only the starter.",
       "The crust burned at 250 degrees.", "Bake the loaf covered in a dutch oven first."},
      {"The tomcat compiler crashed with a segfault.", "Run it under gdb and print the backtrace.",
       "The backtrace points into the linker.", "Try linking with lld instead of gold.",
       "Now the linker reports undefined symbols.", "Add the missing library to the link line.",
       "The binary finally runs but is slow.", "Build it with optimisation flags enabled."},
      {"We hiked the glacier trail in Iceland.", "Did you need crampons on the ice?",
       "Yes, and a guide for the crevasses.", "The glacier lagoon had floating icebergs.",
       "We saw puffins on the cliffs near Vik.", "The black sand beach was windy.",
       "Next year we plan the volcano hike.", "Bring a tent for the highland huts."},
      {"My tax return shows a refund this year.", "Did you claim the home office deduction?",
       "Yes, and the pension contributions too.", "The refund arrives in six weeks.",
       "I owe tax on my freelance invoices.", "Pay the quarterly estimates to avoid penalties.",
       "The accountant charges a flat fee.", "Keep receipts for every deductible expense."},
  };
  // Each message also names its topic, so that four clusters of its eight windows are
  // unambiguous for any embedder (routing quality is measured on LoCoMo, not here).
  const std::vector<std::string> tags = {"baking bread", "compiler build", "iceland travel",
                                         "income tax"};
  std::vector<IndexedMessage> out;
  for (size_t t = 0; t < topics.size(); ++t) {
    for (const auto& text : topics[t]) {
      out.push_back({static_cast<int64_t>(out.size()), out.size() % 2 ? "assistant" : "user",
                     text + " Topic: " + tags[t] + "."});
    }
  }
  return out;
}

int64_t TokensOf(const std::vector<IndexedMessage>& msgs) {
  int64_t n = 0;
  for (const auto& m : msgs) n += static_cast<int64_t>(m.content.size() / 4 + 1);
  return n;
}

EpisodeOptions HashedOptions(int64_t budget_tokens = 0) {
  EpisodeOptions o;
  o.embedder.name = "hashed";
  o.budget_tokens = budget_tokens;
  o.save_every_messages = 1000;  // saves come from routes and shutdown here
  return o;
}

struct Fixture {
  TempDir dir;
  std::string db = dir.File("kvkeep.db");
  std::unique_ptr<Store> store;
  std::unique_ptr<EpisodeIndex> index;

  void Open(EpisodeOptions options) {
    index.reset();
    store.reset();
    auto s = Store::Open(db);
    ASSERT_TRUE(s.ok()) << s.status().ToString();
    store = std::move(s).value();
    auto idx = EpisodeIndex::Create(options, DefaultEnv(), store.get(), SystemClock());
    ASSERT_TRUE(idx.ok()) << idx.status().ToString();
    index = std::move(idx).value();
  }
};

// The top k of a brute-force scan over an independently made index: a HashedEmbedder that
// observes each appended piece's segment texts, then embeds them (the daemon's online IDF:
// a vector keeps the IDF of its time), exact inner products, no FAISS.
std::vector<std::pair<int64_t, float>> Reference(const std::vector<IndexedMessage>& msgs,
                                                 const std::vector<size_t>& pieces,
                                                 const std::string& query, size_t k) {
  index::HashedEmbedder e;
  std::vector<float> vectors;
  size_t begin = 0;
  for (size_t end : pieces) {
    std::vector<index::Message> im;
    for (size_t i = begin; i < end; ++i) im.push_back({msgs[i].role, msgs[i].content});
    std::vector<std::string> texts;
    for (const auto& s : index::SegmentMessages(im, index::SegmenterOptions{})) {
      texts.push_back(s.text);
    }
    e.Observe(texts);
    auto v = e.Embed(texts);
    EXPECT_TRUE(v.ok());
    vectors.insert(vectors.end(), v->begin(), v->end());
    begin = end;
  }
  auto q = e.Embed({query});
  EXPECT_TRUE(q.ok());
  std::vector<std::pair<int64_t, float>> scored;
  for (size_t i = 0; i < vectors.size() / e.dim(); ++i) {
    scored.push_back(
        {static_cast<int64_t>(i), index::Dot(q->data(), vectors.data() + i * e.dim(), e.dim())});
  }
  std::stable_sort(scored.begin(), scored.end(),
                   [](const auto& a, const auto& b) { return a.second > b.second; });
  scored.resize(std::min(k, scored.size()));
  return scored;
}

TEST(EpisodeIndexTest, QueryMatchesBruteForceReference) {
  Fixture f;
  f.Open(HashedOptions());
  auto msgs = Conversation();
  // Appended in three pieces, as turns arrive.
  f.index->Append(7, "s1", {msgs.begin(), msgs.begin() + 5}, 0);
  f.index->Append(7, "s1", {msgs.begin() + 5, msgs.begin() + 19}, 0);
  f.index->Append(7, "s1", {msgs.begin() + 19, msgs.end()}, TokensOf(msgs));
  f.index->WaitIdle();
  for (const std::string& q :
       std::vector<std::string>{"the linker and the backtrace", "glacier crampons", "tax refund"}) {
    auto hits = f.index->Query(7, "s1", q, 5);
    ASSERT_TRUE(hits.ok()) << hits.status().ToString();
    auto ref = Reference(msgs, {5, 19, msgs.size()}, q, 5);
    ASSERT_EQ(hits->size(), ref.size());
    for (size_t i = 0; i < ref.size(); ++i) {
      EXPECT_NEAR((*hits)[i].score, ref[i].second, 1e-5) << q << " rank " << i;
      const bool tied = (i > 0 && ref[i - 1].second - ref[i].second < 1e-5) ||
                        (i + 1 < ref.size() && ref[i].second - ref[i + 1].second < 1e-5);
      if (!tied) {
        EXPECT_EQ((*hits)[i].segment, ref[i].first) << q << " rank " << i;
      }
    }
    EXPECT_GT(ref[0].second, ref.back().second) << q;  // the query does pick something
  }
  // A segment maps back to its message: the best hit for a message's own text is it.
  // (Not exactly 1: the stored vector has the IDF of its append, the query today's.)
  auto hits = f.index->Query(7, "s1", "Run it under gdb and print the backtrace.", 1);
  ASSERT_TRUE(hits.ok());
  EXPECT_EQ((*hits)[0].ref.first_message, 9);
  EXPECT_EQ((*hits)[0].ref.end_message, 10);
  EXPECT_EQ((*hits)[0].ref.begin_byte, 0);
  EXPECT_EQ((*hits)[0].ref.end_byte, 41);
  EXPECT_GT((*hits)[0].score, 0.9);
  auto info = f.index->InfoJson(7, "s1");
  EXPECT_EQ(info["indexed_messages"], 32);
  EXPECT_EQ(info["windows"], 8);
  EXPECT_EQ(info["num_episodes"], 0);  // no budget: no episodes
}

TEST(EpisodeIndexTest, BadQueriesGetClearErrors) {
  Fixture f;
  f.Open(HashedOptions());
  f.index->Append(7, "s1", Conversation(), 100);
  f.index->WaitIdle();
  EXPECT_EQ(f.index->Query(7, "s1", "bread", 0).status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(f.index->Query(7, "s1", "bread", 1001).status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(f.index->Query(7, "s1", "", 3).status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(f.index->Query(7, "nope", "bread", 3).status().code(), StatusCode::kNotFound);
  EXPECT_EQ(f.index->Query(8, "s1", "bread", 3).status().code(), StatusCode::kNotFound);
  // More than the index holds: all of them.
  auto all = f.index->Query(7, "s1", "bread", 1000);
  ASSERT_TRUE(all.ok());
  EXPECT_EQ(all->size(), f.index->InfoJson(7, "s1")["segments"].get<size_t>());
}

std::vector<QueryHit> QueryOrDie(EpisodeIndex& idx, const std::string& text) {
  auto hits = idx.Query(7, "s1", text, 6);
  EXPECT_TRUE(hits.ok()) << hits.status().ToString();
  return hits.ok() ? *hits : std::vector<QueryHit>{};
}

void ExpectSameHits(const std::vector<QueryHit>& a, const std::vector<QueryHit>& b) {
  ASSERT_EQ(a.size(), b.size());
  for (size_t i = 0; i < a.size(); ++i) {
    EXPECT_EQ(a[i].segment, b[i].segment) << i;
    EXPECT_EQ(a[i].ref.first_message, b[i].ref.first_message) << i;
    EXPECT_FLOAT_EQ(a[i].score, b[i].score) << i;
  }
}

TEST(EpisodeIndexTest, SurvivesARestartAndIndexesWhatCameAfterTheLastSave) {
  Fixture f;
  f.Open(HashedOptions());
  auto msgs = Conversation();
  f.index->Append(7, "s1", msgs, TokensOf(msgs));
  f.index->WaitIdle();
  const auto before = QueryOrDie(*f.index, "sourdough bread in the oven");
  const auto info_before = f.index->InfoJson(7, "s1");

  f.Open(HashedOptions());  // a real restart: a new Store and index on the same file
  f.index->Load(7, "s1", msgs, TokensOf(msgs));
  f.index->WaitIdle();
  ExpectSameHits(QueryOrDie(*f.index, "sourdough bread in the oven"), before);
  EXPECT_EQ(f.index->InfoJson(7, "s1")["segments"], info_before["segments"]);
  EXPECT_EQ(f.index->InfoJson(7, "s1")["windows"], info_before["windows"]);

  // Messages the last save did not cover are indexed from the stored history at load.
  auto more = msgs;
  more.push_back({32, "user", "What about the volcano hike?"});
  more.push_back({33, "assistant", "The volcano trail needs a guide in winter."});
  f.Open(HashedOptions());
  f.index->Load(7, "s1", more, TokensOf(more));
  f.index->WaitIdle();
  auto hits = f.index->Query(7, "s1", "volcano trail guide winter", 1);
  ASSERT_TRUE(hits.ok());
  EXPECT_EQ((*hits)[0].ref.first_message, 33);
  EXPECT_EQ(f.index->InfoJson(7, "s1")["indexed_messages"], 34);
}

TEST(EpisodeIndexTest, UnloadedSessionsLeaveMemoryAndComeBack) {
  Fixture f;
  f.Open(HashedOptions());
  auto msgs = Conversation();
  f.index->Append(7, "s1", msgs, TokensOf(msgs));
  f.index->WaitIdle();
  const auto before = QueryOrDie(*f.index, "glacier lagoon icebergs");
  f.index->Unload(7, "s1");  // closed, kept
  f.index->WaitIdle();
  EXPECT_EQ(f.index->Query(7, "s1", "glacier", 3).status().code(), StatusCode::kNotFound);
  EXPECT_EQ(f.index->InfoJson(7, "s1")["indexed_messages"], 0);
  f.index->Load(7, "s1", msgs, TokensOf(msgs));  // reopened
  f.index->WaitIdle();
  ExpectSameHits(QueryOrDie(*f.index, "glacier lagoon icebergs"), before);
}

TEST(EpisodeIndexTest, CorruptBlobIsRebuiltFromTheMessages) {
  Fixture f;
  f.Open(HashedOptions());
  auto msgs = Conversation();
  f.index->Append(7, "s1", msgs, TokensOf(msgs));
  f.index->WaitIdle();
  const auto before = QueryOrDie(*f.index, "linker symbols");
  f.index.reset();  // saves
  auto blob = f.store->GetEpisodeBlob(7, "s1");
  ASSERT_TRUE(blob.ok() && *blob);
  for (const std::string& bad :
       {std::string("garbage"), std::string(), blob->value().substr(0, 100),
        blob->value().substr(0, blob->value().size() / 2) + "x" +
            blob->value().substr(blob->value().size() / 2 + 1)}) {
    ASSERT_TRUE(f.store->PutEpisodeBlob(7, "s1", bad, 1).ok());
    f.Open(HashedOptions());
    f.index->Load(7, "s1", msgs, TokensOf(msgs));
    f.index->WaitIdle();
    // The IDF is the tenant's, restored intact; the rebuild must not observe twice.
    ExpectSameHits(QueryOrDie(*f.index, "linker symbols"), before);
  }
}

TEST(EpisodeIndexTest, OverBudgetSessionsAreClusteredAndRouted) {
  Fixture f;
  auto msgs = Conversation();
  const int64_t tokens = TokensOf(msgs);
  f.Open(HashedOptions(/*budget_tokens=*/tokens - 1));
  // Under budget: nothing routed, nothing recorded.
  f.index->Append(7, "s1", {msgs.begin(), msgs.begin() + 8}, 10);
  f.index->WaitIdle();
  auto under = f.index->Route(7, "s1", 8, "sourdough", 10);
  ASSERT_TRUE(under.ok());
  EXPECT_FALSE(under->has_value());

  f.index->Append(7, "s1", {msgs.begin() + 8, msgs.end()}, tokens);
  f.index->WaitIdle();
  auto info = f.index->InfoJson(7, "s1");
  EXPECT_EQ(info["num_episodes"], 4);
  EXPECT_TRUE(info["over_budget"].get<bool>());
  // Each topic's two windows: a query about a topic goes to the episode holding them.
  const std::vector<std::pair<std::string, int64_t>> queries = {
      {"How long should the sourdough proof?", 0},
      {"Which linker flags fix undefined symbols?", 8},
      {"Do I need crampons on the glacier?", 16},
      {"When does the tax refund arrive?", 24}};
  for (const auto& [q, first_message] : queries) {
    auto route = f.index->Route(7, "s1", 40, q, tokens);
    ASSERT_TRUE(route.ok()) << route.status().ToString();
    ASSERT_TRUE(route->has_value());
    const EpisodeRoute& r = **route;
    ASSERT_GE(r.episode, 0);
    ASSERT_FALSE(r.medoid_messages.empty());
    for (const auto& [a, b] : r.medoid_messages) {
      EXPECT_GE(a, first_message) << q;
      EXPECT_LE(b, first_message + 8) << q;
    }
  }
  EXPECT_EQ(f.index->InfoJson(7, "s1")["turns"].size(), 4u);

  // Same data, same seed: the same routes, in a second index.
  Fixture g;
  g.Open(HashedOptions(tokens - 1));
  g.index->Append(7, "s1", msgs, tokens);
  g.index->WaitIdle();
  for (const auto& [q, first_message] : queries) {
    auto a = f.index->Route(7, "s1", 41, q, tokens);
    auto b = g.index->Route(7, "s1", 41, q, tokens);
    ASSERT_TRUE(a.ok() && b.ok() && a->has_value() && b->has_value());
    EXPECT_EQ((*a)->episode, (*b)->episode);
    EXPECT_EQ((*a)->medoid_messages, (*b)->medoid_messages);
  }

  // Routed turns are stored, and the episodes are made again after a restart.
  f.Open(HashedOptions(tokens - 1));
  f.index->Load(7, "s1", msgs, tokens);
  f.index->WaitIdle();
  info = f.index->InfoJson(7, "s1");
  EXPECT_EQ(info["turns"].size(), 8u);
  EXPECT_EQ(info["num_episodes"], 4);
}

TEST(EpisodeIndexTest, PerSessionBudgetOverridesTheGlobalOne) {
  Fixture f;
  auto msgs = Conversation();
  const int64_t tokens = TokensOf(msgs);
  f.Open(HashedOptions(/*budget_tokens=*/0));  // globally off
  f.index->SetBudget(7, "s1", tokens / 2);
  f.index->Append(7, "s1", msgs, tokens);
  f.index->Append(7, "s2", msgs, tokens);
  f.index->WaitIdle();
  EXPECT_EQ(f.index->InfoJson(7, "s1")["num_episodes"], 4);
  EXPECT_EQ(f.index->InfoJson(7, "s2")["num_episodes"], 0);
  auto r2 = f.index->Route(7, "s2", 32, "tax", tokens);
  ASSERT_TRUE(r2.ok());
  EXPECT_FALSE(r2->has_value());
}

TEST(EpisodeIndexTest, SwitchesToIvfFlatPastTheThresholdAndStillFindsTheNearest) {
  Fixture f;
  EpisodeOptions o = HashedOptions();
  o.vectors.ann_threshold = 20;
  f.Open(o);
  auto msgs = Conversation();
  f.index->Append(7, "s1", {msgs.begin(), msgs.begin() + 8}, 0);  // 16 segments
  f.index->WaitIdle();
  EXPECT_EQ(f.index->InfoJson(7, "s1")["vector_index"], "flat");
  f.index->Append(7, "s1", {msgs.begin() + 8, msgs.end()}, TokensOf(msgs));
  f.index->WaitIdle();
  auto info = f.index->InfoJson(7, "s1");
  EXPECT_EQ(info["vector_index"], "ivf_flat");
  EXPECT_EQ(info["segments"], 64);
  for (const std::string& q :
       std::vector<std::string>{"the linker and the backtrace", "glacier crampons", "tax refund"}) {
    auto hits = f.index->Query(7, "s1", q, 1);
    ASSERT_TRUE(hits.ok()) << hits.status().ToString();
    auto ref = Reference(msgs, {8, msgs.size()}, q, 1);
    EXPECT_EQ((*hits)[0].segment, ref[0].first) << q;
    EXPECT_NEAR((*hits)[0].score, ref[0].second, 1e-5) << q;
  }
  // And it is stored and restored as IVF-Flat.
  f.Open(o);
  f.index->Load(7, "s1", msgs, TokensOf(msgs));
  f.index->WaitIdle();
  EXPECT_EQ(f.index->InfoJson(7, "s1")["vector_index"], "ivf_flat");
}

TEST(EpisodeIndexTest, CapsVectorsPerSession) {
  Fixture f;
  EpisodeOptions o = HashedOptions();
  o.max_vectors_per_session = 10;
  f.Open(o);
  f.index->Append(7, "s1", Conversation(), 100);
  f.index->WaitIdle();
  auto info = f.index->InfoJson(7, "s1");
  EXPECT_EQ(info["segments"], 10);
  EXPECT_TRUE(info["capped"].get<bool>());
  EXPECT_EQ(info["indexed_messages"], 32);
}

}  // namespace
}  // namespace kvkeep
