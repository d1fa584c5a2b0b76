#include "tools/episode_fidelity.h"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <map>
#include <numeric>
#include <set>

#include "engine/episode_cache.h"
#include "engine/layer_budget.h"
#include "index/episodes.h"
#include "tools/episode_eval.h"

namespace kvkeep::tools {
namespace {

struct Question {
  std::vector<int32_t> prompt;  // question text, then the answer cue
  std::vector<int32_t> answer;
  int32_t episode = 0;
};

struct Tally {
  double nll = 0.0;
  int64_t tokens = 0;
  int64_t kv_bytes = 0;
  double build_s = 0.0, score_s = 0.0;
  int32_t caches = 0;
};

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

// Teacher-forced NLL of each question's answer (those routed to `episode`, or all with -1)
// on top of the cache, added to *t.
Status Score(Backend* backend, const EpisodeCache& cache, const std::vector<Question>& questions,
             int32_t episode, Tally* t) {
  const auto start = std::chrono::steady_clock::now();
  const int32_t vocab = backend->config().vocab_size;
  EpisodeDecoder decoder(backend, cache);
  std::vector<float> logits;
  for (const Question& q : questions) {
    if (episode >= 0 && q.episode != episode) continue;
    std::vector<int32_t> forced = q.prompt;
    forced.insert(forced.end(), q.answer.begin(), q.answer.end() - 1);
    decoder.Reset();
    RETURN_IF_ERROR(decoder.Append(forced, /*last_only=*/false, &logits));
    for (size_t k = 0; k < q.answer.size(); ++k) {
      const float* row = logits.data() + (q.prompt.size() - 1 + k) * vocab;
      const float m = *std::max_element(row, row + vocab);
      double sum = 0.0;
      for (int32_t v = 0; v < vocab; ++v) sum += std::exp(double{row[v]} - m);
      t->nll += m + std::log(sum) - row[q.answer[k]];
      ++t->tokens;
    }
  }
  t->score_s += Seconds(start);
  return Status::OK();
}

// The conversation's turns as the model reads them, one string per turn.
std::string TurnText(const std::vector<index::Message>& turns, size_t i) {
  std::string text;
  if (!turns[i].date.empty() && (i == 0 || turns[i].date != turns[i - 1].date)) {
    text += "[" + turns[i].date + "]\n";
  }
  return text + turns[i].speaker + ": " + turns[i].text + "\n";
}

}  // namespace

int32_t FidelityPoolBlocks(const FidelityOptions& o, int32_t block_size) {
  const int64_t entries = int64_t{o.context_tokens} + o.block_tokens + o.max_prompt_tokens;
  return static_cast<int32_t>((entries + block_size - 1) / block_size);
}

Result<FidelityReport> EvaluateFidelity(const std::vector<LocomoConversation>& conversations,
                                        Backend* backend, const Tokenizer& tokenizer,
                                        const EmbedderMaker& make_embedder,
                                        const FidelityOptions& options) {
  if (options.context_tokens <= options.reserve_tokens || options.block_tokens < 1) {
    return Status::InvalidArgument("fidelity: context must exceed the reserve; block >= 1");
  }
  if (options.layer_alpha > 0 &&
      static_cast<int32_t>(options.layer_similarity.size()) != backend->kv_shape().num_layers) {
    return Status::InvalidArgument("fidelity: layer alpha > 0 needs the model's layer profile");
  }
  const int32_t bs = backend->kv_shape().block_size;
  if (backend->kv_shape().num_blocks < FidelityPoolBlocks(options, bs)) {
    return Status::InvalidArgument("fidelity: the backend's pool is too small");
  }
  std::map<std::pair<std::string, double>, Tally> tallies;  // (method, fraction)
  FidelityReport report;
  EpisodeCompressor compressor(backend);
  for (const LocomoConversation& conv : conversations) {
    // The history: the longest prefix of turns that leaves the reserve free.
    std::vector<int32_t> history;
    size_t num_turns = 0;
    for (; num_turns < conv.turns.size(); ++num_turns) {
      ASSIGN_OR_RETURN(std::vector<int32_t> ids,
                       tokenizer.Encode(TurnText(conv.turns, num_turns), false));
      if (history.size() + ids.size() > size_t(options.context_tokens - options.reserve_tokens)) {
        break;
      }
      history.insert(history.end(), ids.begin(), ids.end());
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
    if (history.empty() || prefix.questions.empty()) continue;
    const PreparedConversation p = Prepare(prefix, index::SegmenterOptions{});
    if (p.window_texts.empty() || p.questions.size() != prefix.questions.size()) continue;

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
    std::vector<Question> questions;
    for (size_t i = 0; i < p.questions.size(); ++i) {
      Question q;
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
      questions.push_back(std::move(q));
    }
    if (questions.empty()) continue;
    std::vector<std::vector<int32_t>> medoid_prompts(set.episodes.size());
    for (size_t e = 0; e < set.episodes.size(); ++e) {
      std::string text;
      for (int32_t w : set.episodes[e].medoid_windows) text += p.window_texts[w] + "\n";
      ASSIGN_OR_RETURN(medoid_prompts[e], tokenizer.Encode(text, false));
      if (medoid_prompts[e].size() > size_t(options.max_prompt_tokens)) {
        medoid_prompts[e].resize(options.max_prompt_tokens);
      }
    }
    std::set<int32_t> routed;
    for (const Question& q : questions) routed.insert(q.episode);
    spdlog::info("fidelity: {}: {} history tokens, {} questions, {} episodes routed to",
                 conv.sample_id, history.size(), questions.size(), routed.size());
    ++report.conversations;
    report.questions += static_cast<int32_t>(questions.size());
    report.history_tokens += static_cast<int64_t>(history.size());

    const int32_t n = static_cast<int32_t>(history.size());
    std::vector<int32_t> blocks(FidelityPoolBlocks(options, bs));
    std::iota(blocks.begin(), blocks.end(), 0);
    auto run = [&](const std::string& name, double fraction, KeepMethod method,
                   int32_t episode) -> Status {
      CompressOptions o;
      o.budget_tokens = std::max(1, static_cast<int32_t>(std::lround(n * fraction)));
      o.block_tokens = options.block_tokens;
      o.method = method;
      if (method == KeepMethod::kEpisode && options.layer_alpha > 0) {
        ASSIGN_OR_RETURN(o.layer_budget_tokens, LayerBudgets(options.layer_similarity,
                                                             o.budget_tokens, options.layer_alpha));
        for (int32_t& m : o.layer_budget_tokens) m = std::min(m, n);
      }
      std::span<const int32_t> query;
      if (episode >= 0) query = medoid_prompts[episode];
      const auto start = std::chrono::steady_clock::now();
      ASSIGN_OR_RETURN(EpisodeCache cache, compressor.Build(history, query, o, blocks));
      Tally& t = tallies[{name, fraction}];
      t.build_s += Seconds(start);
      t.kv_bytes += CacheBytes(*backend, cache);
      ++t.caches;
      RETURN_IF_ERROR(Score(backend, cache, questions, episode, &t));
      spdlog::info("fidelity: {}: {} at {:.3f}: {} entries, {:.1f} s", conv.sample_id, name,
                   fraction, cache.num_kept, t.build_s);
      return Status::OK();
    };
    RETURN_IF_ERROR(run("full", 1.0, KeepMethod::kStreaming, -1));
    for (double f : options.fractions) {
      RETURN_IF_ERROR(run("recent", f, KeepMethod::kStreaming, -1));
      RETURN_IF_ERROR(run("snapkv", f, KeepMethod::kSnapKv, -1));
      for (int32_t e : routed) RETURN_IF_ERROR(run("episodic", f, KeepMethod::kEpisode, e));
    }
  }
  if (report.conversations == 0) {
    return Status::NotFound("fidelity: no conversation with a question inside its prefix");
  }
  auto nll = [&](const std::string& name, double f) {
    const Tally& t = tallies[{name, f}];
    return t.tokens > 0 ? t.nll / t.tokens : 0.0;
  };
  const double full = nll("full", 1.0);
  report.answer_tokens = tallies[{"full", 1.0}].tokens;
  auto add = [&](const std::string& name, double f) {
    const Tally& t = tallies[{name, f}];
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
    report.methods.push_back(m);
  };
  add("full", 1.0);
  for (double f : options.fractions) {
    for (const char* name : {"recent", "snapkv", "episodic"}) add(name, f);
  }
  return report;
}

}  // namespace kvkeep::tools
