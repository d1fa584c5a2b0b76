#include "tools/episode_fidelity.h"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <map>
#include <numeric>
#include <set>
#include <string_view>

#include "engine/episode_cache.h"
#include "engine/layer_budget.h"
#include "index/episodes.h"
#include "tools/episode_eval.h"

namespace kvkeep::tools {
namespace {

struct Tally {
  double nll = 0.0;
  int64_t tokens = 0;
  int64_t kv_bytes = 0;
  double build_s = 0.0, score_s = 0.0;
  int32_t caches = 0;
  double kept_recent = 0.0, kept_sinks = 0.0;  // summed over caches

  void Add(const Tally& o) {
    nll += o.nll;
    tokens += o.tokens;
    kv_bytes += o.kv_bytes;
    build_s += o.build_s;
    score_s += o.score_s;
    caches += o.caches;
    kept_recent += o.kept_recent;
    kept_sinks += o.kept_sinks;
  }
};
using Tallies = std::map<std::pair<std::string, double>, Tally>;  // (method, fraction)

double Seconds(std::chrono::steady_clock::time_point since) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - since).count();
}

// The bytes of the entries a cache keeps (each layer its own count).
int64_t CacheBytes(Backend& backend, const EpisodeCache& cache) {
  const KvPoolShape& s = backend.kv_shape();
  const int64_t elem = static_cast<int64_t>(backend.block_bytes()) / s.block_stride();
  int64_t entries = 0;
  for (int32_t l = 0; l < s.num_layers; ++l) entries += cache.KeptIn(l);
  return entries * 2 * s.num_kv_heads * s.head_dim * elem;
}

// The share of the kept (layer, KV head) position lists that hold each of the history's
// last min(256, n) positions, and each of its first min(4, n), added to *t.
void AddKeptShares(const Backend& backend, const EpisodeCache& cache, Tally* t) {
  const KvPoolShape& s = backend.kv_shape();
  const int32_t n = cache.history_tokens;
  const int32_t recent = std::min(256, n), sinks = std::min(4, n);
  int64_t in_recent = 0, in_sinks = 0;
  for (int32_t l = 0; l < s.num_layers; ++l) {
    for (int32_t h = 0; h < s.num_kv_heads; ++h) {
      for (int32_t p : cache.PositionsOf(l, h, s.num_kv_heads)) {
        in_recent += p >= n - recent;
        in_sinks += p < sinks;
      }
    }
  }
  const double rows = static_cast<double>(s.num_layers) * s.num_kv_heads;
  t->kept_recent += in_recent / (rows * recent);
  t->kept_sinks += in_sinks / (rows * sinks);
}

// Teacher-forced NLL of the answers of questions[i] for each i in `which` on top of the
// cache, added to *t; (*per_question)[i] gets question i's summed NLL when given. The
// tokens forwarded are added to *forwarded.
Status Score(Backend* backend, const EpisodeCache& cache,
             const std::vector<FidelityQuestion>& questions, const std::vector<int32_t>& which,
             Tally* t, int64_t* forwarded, std::vector<double>* per_question = nullptr) {
  const auto start = std::chrono::steady_clock::now();
  const int32_t vocab = backend->config().vocab_size;
  EpisodeDecoder decoder(backend, cache);
  std::vector<float> logits;
  for (int32_t i : which) {
    const FidelityQuestion& q = questions[i];
    double nll = 0.0;
    std::vector<int32_t> forced = q.prompt;
    forced.insert(forced.end(), q.answer.begin(), q.answer.end() - 1);
    decoder.Reset();
    RETURN_IF_ERROR(decoder.Append(forced, /*last_only=*/false, &logits));
    *forwarded += static_cast<int64_t>(forced.size());
    for (size_t k = 0; k < q.answer.size(); ++k) {
      const float* row = logits.data() + (q.prompt.size() - 1 + k) * vocab;
      const float m = *std::max_element(row, row + vocab);
      double sum = 0.0;
      for (int32_t v = 0; v < vocab; ++v) sum += std::exp(double{row[v]} - m);
      nll += m + std::log(sum) - row[q.answer[k]];
      ++t->tokens;
    }
    t->nll += nll;
    if (per_question != nullptr) (*per_question)[i] = nll;
  }
  t->score_s += Seconds(start);
  return Status::OK();
}

// Mean NLL, gap closed, bytes and times per method, in the report's order.
std::vector<MethodFidelity> Summarize(const Tallies& tallies,
                                      const std::vector<double>& fractions) {
  auto get = [&](const std::string& name, double f) {
    auto it = tallies.find({name, f});
    return it == tallies.end() ? Tally{} : it->second;
  };
  auto nll = [&](const std::string& name, double f) {
    const Tally t = get(name, f);
    return t.tokens > 0 ? t.nll / t.tokens : 0.0;
  };
  const double full = nll("full", 1.0);
  std::vector<MethodFidelity> out;
  auto add = [&](const std::string& name, double f) {
    const Tally t = get(name, f);
    MethodFidelity m;
    m.method = name;
    m.fraction = f;
    m.mean_nll = nll(name, f);
    const double recent = name == "full" ? 0.0 : nll("recent", f);
    m.gap_closed = name == "full"   ? 1.0
                   : recent != full ? (recent - m.mean_nll) / (recent - full)
                                    : 1.0;
    m.kv_bytes = t.caches > 0 ? t.kv_bytes / t.caches : 0;
    m.build_s = t.build_s;
    m.score_s = t.score_s;
    m.num_caches = t.caches;
    m.kept_recent = t.caches > 0 ? t.kept_recent / t.caches : 0.0;
    m.kept_sinks = t.caches > 0 ? t.kept_sinks / t.caches : 0.0;
    out.push_back(m);
  };
  if (tallies.count({"full", 1.0}) > 0) add("full", 1.0);
  for (double f : fractions) {
    for (const char* name :
         {"recent", "snapkv", "episodic", "episodic-best", "episodic-mean", "episodic-question"}) {
      if (tallies.count({name, f}) > 0) add(name, f);
    }
  }
  return out;
}

// Adds to totals each method's wins in one conversation: its NLL below recent's, below
// snapkv's, at the same budget.
void CountWins(const std::vector<MethodFidelity>& conv, std::vector<MethodFidelity>* totals) {
  auto nll = [&](const std::string& name, double f) -> const MethodFidelity* {
    for (const MethodFidelity& m : conv) {
      if (m.method == name && m.fraction == f && m.num_caches > 0) return &m;
    }
    return nullptr;
  };
  for (MethodFidelity& t : *totals) {
    const MethodFidelity* m = nll(t.method, t.fraction);
    const MethodFidelity* recent = nll("recent", t.fraction);
    const MethodFidelity* snap = nll("snapkv", t.fraction);
    if (m == nullptr) continue;
    if (recent != nullptr && m->mean_nll < recent->mean_nll) ++t.wins_recent;
    if (snap != nullptr && m->mean_nll < snap->mean_nll) ++t.wins_snapkv;
  }
}

// The conversation's turns as the model reads them, one string per turn.
std::string TurnText(const std::vector<index::Message>& turns, size_t i) {
  std::string text;
  if (!turns[i].date.empty() && (i == 0 || turns[i].date != turns[i - 1].date)) {
    text += "[" + turns[i].date + "]\n";
  }
  return text + turns[i].speaker + ": " + turns[i].text + "\n";
}

// One conversation's history, routes and medoid prompts; questions empty when none of its
// questions lies inside the prefix.
Result<FidelityConversation> PrepareOne(const LocomoConversation& conv, const Tokenizer& tokenizer,
                                        const EmbedderMaker& make_embedder,
                                        const FidelityOptions& options) {
  FidelityConversation out;
  out.sample_id = conv.sample_id;
  // The history: the longest prefix of turns that leaves the reserve free.
  size_t num_turns = 0;
  for (; num_turns < conv.turns.size(); ++num_turns) {
    ASSIGN_OR_RETURN(std::vector<int32_t> ids,
                     tokenizer.Encode(TurnText(conv.turns, num_turns), false));
    if (out.history.size() + ids.size() > size_t(options.context_tokens - options.reserve_tokens)) {
      break;
    }
    out.history.insert(out.history.end(), ids.begin(), ids.end());
  }
  LocomoConversation prefix = conv;
  prefix.turns.resize(num_turns);
  prefix.questions.clear();
  for (const LocomoQuestion& q : conv.questions) {
    if (q.category < 1 || q.category > 4 || q.answer.empty() || q.evidence.empty()) continue;
    const bool inside = std::all_of(q.evidence.begin(), q.evidence.end(), [&](const auto& id) {
      auto it = conv.turn_of_dia_id.find(id);
      return it != conv.turn_of_dia_id.end() && size_t(it->second) < num_turns;
    });
    if (inside) prefix.questions.push_back(q);
  }
  if (options.max_questions > 0 && prefix.questions.size() > size_t(options.max_questions)) {
    prefix.questions.resize(options.max_questions);
  }
  if (out.history.empty() || prefix.questions.empty()) return out;
  const PreparedConversation p = Prepare(prefix, index::SegmenterOptions{});
  if (p.window_texts.empty() || p.questions.size() != prefix.questions.size()) return out;

  // Episodes and routing, as the daemon does them.
  ASSIGN_OR_RETURN(std::unique_ptr<index::Embedder> embedder, make_embedder());
  embedder->Observe(p.window_texts);
  ASSIGN_OR_RETURN(std::vector<float> wv, embedder->Embed(p.window_texts));
  ASSIGN_OR_RETURN(std::vector<float> qv, embedder->Embed(p.questions));
  const int32_t dim = embedder->dim();
  const int32_t num_windows = static_cast<int32_t>(p.window_texts.size());
  index::ClusterOptions cluster;
  cluster.num_episodes = options.num_episodes;
  ASSIGN_OR_RETURN(index::EpisodeSet set, index::ClusterEpisodes(wv, num_windows, dim, cluster));
  for (size_t i = 0; i < p.questions.size(); ++i) {
    FidelityQuestion q;
    std::vector<float> query(qv.begin() + i * dim, qv.begin() + (i + 1) * dim);
    std::vector<float> scores(num_windows);
    for (int32_t w = 0; w < num_windows; ++w) {
      scores[w] =
          std::inner_product(query.begin(), query.end(), wv.begin() + int64_t{w} * dim, 0.0f);
    }
    ASSIGN_OR_RETURN(q.episode, index::RouteQuery(set, query, scores, index::RouterOptions{}));
    ASSIGN_OR_RETURN(q.prompt,
                     tokenizer.Encode("\nQuestion: " + p.questions[i] + "\nAnswer:", false));
    ASSIGN_OR_RETURN(q.answer, tokenizer.Encode(" " + prefix.questions[i].answer, false));
    if (q.answer.empty() || int64_t(q.prompt.size() + q.answer.size()) > options.reserve_tokens) {
      continue;
    }
    out.questions.push_back(std::move(q));
  }
  out.medoid_prompts.resize(set.episodes.size());
  for (size_t e = 0; e < set.episodes.size(); ++e) {
    std::string text;
    for (int32_t w : set.episodes[e].medoid_windows) text += p.window_texts[w] + "\n";
    ASSIGN_OR_RETURN(out.medoid_prompts[e], tokenizer.Encode(text, false));
    if (out.medoid_prompts[e].size() > size_t(options.max_prompt_tokens)) {
      out.medoid_prompts[e].resize(options.max_prompt_tokens);
    }
  }
  return out;
}

// Every build and score of one conversation, into *tallies.
Status EvaluateOne(const FidelityConversation& conv, Backend* backend,
                   const FidelityOptions& options, EpisodeCompressor* compressor, Tallies* tallies,
                   int64_t* forwarded) {
  auto wanted = [&](const std::string& name) {
    if (options.methods.empty()) return name != "episodic-question";
    return std::find(options.methods.begin(), options.methods.end(), name) != options.methods.end();
  };
  const int32_t n = static_cast<int32_t>(conv.history.size());
  const int32_t num_questions = static_cast<int32_t>(conv.questions.size());
  const int32_t num_episodes = static_cast<int32_t>(conv.medoid_prompts.size());
  std::vector<int32_t> blocks(FidelityPoolBlocks(options, backend->kv_shape().block_size));
  std::iota(blocks.begin(), blocks.end(), 0);
  std::vector<int32_t> all(num_questions);
  std::iota(all.begin(), all.end(), 0);
  // Builds one cache (query: the scoring prompt, kEpisode only) and scores `which` on it.
  auto run = [&](const std::string& name, double fraction, KeepMethod method,
                 std::span<const int32_t> query, const std::vector<int32_t>& which,
                 std::vector<double>* per_question) -> Status {
    CompressOptions o;
    o.budget_tokens = std::max(1, static_cast<int32_t>(std::lround(n * fraction)));
    o.block_tokens = options.block_tokens;
    o.method = method;
    if (method == KeepMethod::kEpisode) {
      o.recent_tokens = options.recent_tokens;
      o.reserve_sinks = options.reserve_sinks;
      o.pool_kernel = options.pool_kernel;
      if (options.layer_alpha > 0) {
        ASSIGN_OR_RETURN(o.layer_budget_tokens, LayerBudgets(options.layer_similarity,
                                                             o.budget_tokens, options.layer_alpha));
        for (int32_t& m : o.layer_budget_tokens) m = std::min(m, n);
      }
    } else if (method == KeepMethod::kSnapKv) {
      o.pool_kernel = options.snap_pool_kernel;
    }
    const auto start = std::chrono::steady_clock::now();
    const int64_t before = compressor->forwarded_tokens();
    ASSIGN_OR_RETURN(EpisodeCache cache, compressor->Build(conv.history, query, o, blocks));
    *forwarded += compressor->forwarded_tokens() - before;
    Tally& t = (*tallies)[{name, fraction}];
    t.build_s += Seconds(start);
    t.kv_bytes += CacheBytes(*backend, cache);
    ++t.caches;
    AddKeptShares(*backend, cache, &t);
    RETURN_IF_ERROR(Score(backend, cache, conv.questions, which, &t, forwarded, per_question));
    spdlog::debug("fidelity: {}: {} at {:.3f}: {} entries, {:.1f} s", conv.sample_id, name,
                  fraction, cache.num_kept, t.build_s);
    return Status::OK();
  };
  auto prompt = [&](int32_t e) {
    std::span<const int32_t> p = conv.medoid_prompts[e];
    const int32_t cut = options.prompt_cut_tokens;
    return cut > 0 && static_cast<int32_t>(p.size()) > cut ? p.first(cut) : p;
  };
  if (wanted("full")) RETURN_IF_ERROR(run("full", 1.0, KeepMethod::kStreaming, {}, all, nullptr));
  for (double f : options.fractions) {
    if (wanted("recent"))
      RETURN_IF_ERROR(run("recent", f, KeepMethod::kStreaming, {}, all, nullptr));
    if (wanted("snapkv")) RETURN_IF_ERROR(run("snapkv", f, KeepMethod::kSnapKv, {}, all, nullptr));
    if (wanted("episodic") && !options.all_episodes) {
      for (int32_t e = 0; e < num_episodes; ++e) {
        std::vector<int32_t> routed;
        for (int32_t i : all) {
          if (conv.questions[i].episode == e) routed.push_back(i);
        }
        if (!routed.empty())
          RETURN_IF_ERROR(run("episodic", f, KeepMethod::kEpisode, prompt(e), routed, nullptr));
      }
    } else if (wanted("episodic")) {  // every question on every episode's cache
      std::vector<std::vector<double>> nll(num_episodes, std::vector<double>(num_questions));
      for (int32_t e = 0; e < num_episodes; ++e) {
        RETURN_IF_ERROR(run("episodic-all", f, KeepMethod::kEpisode, prompt(e), all, &nll[e]));
      }
      const Tally every = (*tallies)[{"episodic-all", f}];
      tallies->erase({"episodic-all", f});
      for (const char* name : {"episodic", "episodic-best", "episodic-mean"}) {
        Tally& t = (*tallies)[{name, f}];
        t = every;
        t.nll = 0.0;
        t.tokens = every.tokens / num_episodes;
        for (int32_t i : all) {
          double best = nll[0][i], sum = 0.0;
          for (int32_t e = 0; e < num_episodes; ++e) {
            best = std::min(best, nll[e][i]);
            sum += nll[e][i];
          }
          const std::string_view which = name;
          t.nll += which == "episodic"        ? nll[conv.questions[i].episode][i]
                   : which == "episodic-best" ? best
                                              : sum / num_episodes;
        }
      }
    }
    if (wanted("episodic-question")) {  // the query-aware ceiling: a cache per question
      for (int32_t i : all) {
        RETURN_IF_ERROR(run("episodic-question", f, KeepMethod::kEpisode, conv.questions[i].prompt,
                            {i}, nullptr));
      }
    }
  }
  return Status::OK();
}

// The plan's conversations fit the backend and each other: token ids in the vocabulary,
// histories and questions inside the context, routes to an existing medoid prompt.
Status CheckPlan(const FidelityPlan& plan, const Backend& backend) {
  const int32_t vocab = backend.config().vocab_size;
  if (plan.vocab_size != vocab) {
    return Status::InvalidArgument("fidelity plan: made for a vocabulary of " +
                                   std::to_string(plan.vocab_size) + ", the model has " +
                                   std::to_string(vocab) + " (another model's tokenizer?)");
  }
  auto in_vocab = [vocab](const std::vector<int32_t>& ids) {
    return std::all_of(ids.begin(), ids.end(), [vocab](int32_t t) { return t >= 0 && t < vocab; });
  };
  for (const FidelityConversation& c : plan.conversations) {
    const std::string where = "fidelity plan: " + c.sample_id + ": ";
    if (c.history.empty() || !in_vocab(c.history) ||
        c.history.size() > size_t(plan.context_tokens - plan.reserve_tokens)) {
      return Status::InvalidArgument(where + "history empty, too long or outside the vocabulary");
    }
    for (const auto& p : c.medoid_prompts) {
      if (p.empty() || !in_vocab(p) || p.size() > size_t(plan.max_prompt_tokens)) {
        return Status::InvalidArgument(where + "a medoid prompt is empty or too long");
      }
    }
    for (const FidelityQuestion& q : c.questions) {
      if (q.prompt.empty() || q.answer.empty() || !in_vocab(q.prompt) || !in_vocab(q.answer) ||
          q.prompt.size() + q.answer.size() > size_t(plan.reserve_tokens) || q.episode < 0 ||
          q.episode >= static_cast<int32_t>(c.medoid_prompts.size())) {
        return Status::InvalidArgument(where + "a question does not fit or has no episode");
      }
    }
  }
  return Status::OK();
}

}  // namespace

int32_t FidelityPoolBlocks(const FidelityOptions& o, int32_t block_size) {
  const int64_t entries = int64_t{o.context_tokens} + o.block_tokens + o.max_prompt_tokens;
  return static_cast<int32_t>((entries + block_size - 1) / block_size);
}

Result<FidelityPlan> PrepareFidelity(const std::vector<LocomoConversation>& conversations,
                                     const Tokenizer& tokenizer, int32_t vocab_size,
                                     const EmbedderMaker& make_embedder,
                                     const FidelityOptions& options) {
  if (options.context_tokens <= options.reserve_tokens || options.max_prompt_tokens < 1) {
    return Status::InvalidArgument("fidelity: context must exceed the reserve; prompt cap >= 1");
  }
  FidelityPlan plan;
  plan.vocab_size = vocab_size;
  plan.context_tokens = options.context_tokens;
  plan.reserve_tokens = options.reserve_tokens;
  plan.max_prompt_tokens = options.max_prompt_tokens;
  plan.num_episodes = options.num_episodes;
  for (const LocomoConversation& conv : conversations) {
    const auto start = std::chrono::steady_clock::now();
    ASSIGN_OR_RETURN(FidelityConversation c, PrepareOne(conv, tokenizer, make_embedder, options));
    spdlog::info("fidelity: {}: {} history tokens, {} questions inside the prefix ({:.1f} s)",
                 c.sample_id, c.history.size(), c.questions.size(), Seconds(start));
    if (!c.questions.empty()) plan.conversations.push_back(std::move(c));
  }
  if (plan.conversations.empty()) {
    return Status::NotFound("fidelity: no conversation with a question inside its prefix");
  }
  return plan;
}

Result<FidelityReport> EvaluateFidelity(const FidelityPlan& plan, Backend* backend,
                                        const FidelityOptions& given, const FidelityHooks& hooks) {
  FidelityOptions options = given;
  options.context_tokens = plan.context_tokens;
  options.reserve_tokens = plan.reserve_tokens;
  options.max_prompt_tokens = plan.max_prompt_tokens;
  if (options.context_tokens <= options.reserve_tokens || options.block_tokens < 1 ||
      options.fractions.empty()) {
    return Status::InvalidArgument(
        "fidelity: context must exceed the reserve; block >= 1; one fraction at least");
  }
  if (options.layer_alpha > 0 &&
      static_cast<int32_t>(options.layer_similarity.size()) != backend->kv_shape().num_layers) {
    return Status::InvalidArgument("fidelity: layer alpha > 0 needs the model's layer profile");
  }
  if (backend->kv_shape().num_blocks <
      FidelityPoolBlocks(options, backend->kv_shape().block_size)) {
    return Status::InvalidArgument("fidelity: the backend's pool is too small");
  }
  RETURN_IF_ERROR(CheckPlan(plan, *backend));
  const auto start = std::chrono::steady_clock::now();
  Tallies totals;
  FidelityReport report;
  EpisodeCompressor compressor(backend);
  for (size_t i = 0; i < plan.conversations.size(); ++i) {
    if (hooks.should_stop && hooks.should_stop()) {
      report.conversations_left = static_cast<int32_t>(plan.conversations.size() - i);
      spdlog::warn("fidelity: stopped before {}: {} conversation(s) not run",
                   plan.conversations[i].sample_id, report.conversations_left);
      break;
    }
    const FidelityConversation& conv = plan.conversations[i];
    const auto conv_start = std::chrono::steady_clock::now();
    Tallies tallies;
    ConversationFidelity c;
    c.sample_id = conv.sample_id;
    RETURN_IF_ERROR(
        EvaluateOne(conv, backend, options, &compressor, &tallies, &c.forwarded_tokens));
    c.questions = static_cast<int32_t>(conv.questions.size());
    // Answer tokens: each question's, once (every method scores them all).
    for (const FidelityQuestion& q : conv.questions) c.answer_tokens += std::ssize(q.answer);
    c.history_tokens = static_cast<int64_t>(conv.history.size());
    c.elapsed_s = Seconds(conv_start);
    c.methods = Summarize(tallies, options.fractions);
    for (const auto& [key, t] : tallies) totals[key].Add(t);
    ++report.conversations;
    report.questions += c.questions;
    report.answer_tokens += c.answer_tokens;
    report.history_tokens += c.history_tokens;
    report.forwarded_tokens += c.forwarded_tokens;
    report.elapsed_s = Seconds(start);
    report.methods = Summarize(totals, options.fractions);
    report.per_conversation.push_back(c);
    for (const ConversationFidelity& done : report.per_conversation) {
      CountWins(done.methods, &report.methods);
    }
    double gap = 0.0;  // episodic at the first fraction, for the progress line
    for (const MethodFidelity& m : c.methods) {
      if (m.method == "episodic" && m.fraction == options.fractions.front()) gap = m.gap_closed;
    }
    spdlog::info(
        "fidelity: {} ({}/{}): {} history tokens, {} questions, {} tokens forwarded in {:.1f} s "
        "({:.0f} tokens/s); episodic at {:.3f} closes {:.0f}% of the gap; {:.1f} s in all",
        conv.sample_id, i + 1, plan.conversations.size(), c.history_tokens, c.questions,
        c.forwarded_tokens, c.elapsed_s, c.forwarded_tokens / std::max(c.elapsed_s, 1e-9),
        options.fractions.front(), 100.0 * gap, report.elapsed_s);
    if (hooks.on_conversation) hooks.on_conversation(report);
  }
  if (report.conversations == 0) {
    return Status::DeadlineExceeded("fidelity: stopped before the first conversation finished");
  }
  return report;
}

}  // namespace kvkeep::tools
