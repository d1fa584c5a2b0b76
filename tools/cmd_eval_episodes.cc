// kvkeep eval-episodes: the retrieval evaluation of episodes on LoCoMo-format data
// (tools/episode_eval.h says what is measured). Without --embedder/--router/--dates it
// evaluates exactly the daemon's defaults; --sweep measures every option side by side.
#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <memory>
#include <numeric>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include <spdlog/spdlog.h>
#include "base/file.h"

#include "base/logging.h"
#include "engine/embedder_factory.h"
#include "tools/commands.h"
#include "tools/episode_eval.h"
#include "tools/eval_episodes_fidelity.h"

namespace kvkeep::tools {
namespace {

struct EvalArgs {
  std::string data = "../shared/data/conversations/locomo";
  std::string embedder = "default";
  std::string model_dir;
  std::string router;  // empty: the default router
  std::string dates;   // empty: the default; "on" or "off"
  float dense_weight = EmbedderSpec{}.dense_weight;
  std::vector<int32_t> episodes = {2, 4, 8};
  int32_t seeds = 3;
  bool json = false;
  bool sweep = false;
  std::vector<std::string> sweep_routers = {"centroid", "top:1", "top:2", "top:3"};
  std::vector<float> sweep_weights = {0.3f, 0.5f, 0.7f};
  std::vector<std::string> sweep_dates = {"off", "on"};
  bool sweep_split = false;
  // --fidelity (tools/eval_episodes_fidelity.h)
  bool fidelity = false;
  FidelityCommandArgs fidelity_args;
};

Result<std::vector<LocomoConversation>> LoadData(Env* env, const std::string& path) {
  std::vector<std::string> files;
  std::error_code ec;
  if (std::filesystem::is_directory(path, ec)) {
    for (const auto& entry : std::filesystem::directory_iterator(path, ec)) {
      if (entry.path().extension() == ".json") files.push_back(entry.path().string());
    }
    std::sort(files.begin(), files.end());
  } else {
    files.push_back(path);
  }
  std::vector<LocomoConversation> all;
  for (const std::string& f : files) {
    ASSIGN_OR_RETURN(std::string text, env->ReadFile(f));
    auto parsed = ParseLocomo(text);
    if (!parsed.ok()) return parsed.status().WithContext(f);
    for (auto& c : *parsed) all.push_back(std::move(c));
  }
  if (all.empty()) return Status::NotFound("no LoCoMo conversation in " + path);
  return all;
}

// Embeds one conversation's windows and questions with a fresh embedder (its IDF learns
// from this conversation's windows only, as a session's would).
Result<EmbeddedConversation> EmbedOne(index::Embedder* embedder, const PreparedConversation& p) {
  embedder->Observe(p.window_texts);
  EmbeddedConversation e;
  e.dim = embedder->dim();
  e.num_windows = static_cast<int32_t>(p.window_texts.size());
  ASSIGN_OR_RETURN(e.window_vectors, embedder->Embed(p.window_texts));
  ASSIGN_OR_RETURN(e.question_vectors, embedder->Embed(p.questions));
  e.evidence = p.evidence;
  e.num_skipped_questions = p.num_skipped_questions;
  return e;
}

EmbeddedConversation Combine(const EmbeddedConversation& dense, const EmbeddedConversation& lex,
                             float dense_weight) {
  EmbeddedConversation e = dense;
  e.dim = dense.dim + lex.dim;
  const std::vector<int32_t> dims = {dense.dim, lex.dim};
  const std::vector<float> weights = {dense_weight, 1.0f - dense_weight};
  e.window_vectors = index::ConcatWeighted({&dense.window_vectors, &lex.window_vectors}, dims,
                                           weights, dense.num_windows);
  e.question_vectors = index::ConcatWeighted({&dense.question_vectors, &lex.question_vectors}, dims,
                                             weights, static_cast<int64_t>(dense.evidence.size()));
  return e;
}

std::vector<uint64_t> Seeds(int32_t n) {
  std::vector<uint64_t> seeds;
  for (int32_t i = 0; i < n; ++i) seeds.push_back(index::ClusterOptions{}.seed + 1000 * i);
  return seeds;
}

nlohmann::ordered_json MetricsJson(const EpisodeMetrics& m) {
  return {{"episodes", m.num_episodes},
          {"hit_at_1", m.hit_at_1},
          {"chance", m.chance},
          {"medoid_coverage", m.medoid_coverage},
          {"questions", m.num_questions}};
}

Status RunSweep(Env* env, const EvalArgs& args, const std::vector<LocomoConversation>& convs) {
  const std::string model_dir =
      args.model_dir.empty() ? DefaultSentenceModelDir(env) : args.model_dir;
  EmbedderSpec bert_spec;
  bert_spec.name = "bert";
  bert_spec.model_dir = model_dir;
  auto bert = MakeEmbedder(env, bert_spec);
  if (!bert.ok())
    std::fprintf(stderr, "eval-episodes: no bert (%s)\n", bert.status().ToString().c_str());
  std::printf("%-20s %-5s %-9s %2s %8s %8s %8s\n", "embedder", "dates", "router", "E", "hit@1",
              "chance", "medoid");
  for (const std::string& dates_text : args.sweep_dates) {
    const bool dates = dates_text == "on";
    index::SegmenterOptions seg;
    seg.window_dates = dates;
    std::vector<EmbeddedConversation> lexical, dense;
    for (const LocomoConversation& c : convs) {
      PreparedConversation p = Prepare(c, seg);
      index::HashedEmbedder hashed;
      ASSIGN_OR_RETURN(EmbeddedConversation e, EmbedOne(&hashed, p));
      lexical.push_back(std::move(e));
      if (bert.ok()) {
        ASSIGN_OR_RETURN(EmbeddedConversation d, EmbedOne(bert->get(), p));
        dense.push_back(std::move(d));
      }
    }
    std::vector<std::pair<std::string, std::vector<EmbeddedConversation>>> spaces;
    spaces.emplace_back("hashed", lexical);
    if (bert.ok()) {
      spaces.emplace_back("bert", dense);
      for (float w : args.sweep_weights) {
        std::vector<EmbeddedConversation> mixed;
        for (size_t i = 0; i < dense.size(); ++i) mixed.push_back(Combine(dense[i], lexical[i], w));
        char name[32];
        std::snprintf(name, sizeof(name), "hybrid:%.2g", w);
        if (args.sweep_split) {
          for (const auto& [cluster_name, cluster_space] :
               {std::pair{"bert", &dense}, std::pair{"hashed", &lexical}}) {
            std::vector<EmbeddedConversation> split = mixed;
            for (size_t i = 0; i < split.size(); ++i) {
              split[i].cluster_dim = (*cluster_space)[i].dim;
              split[i].cluster_vectors = (*cluster_space)[i].window_vectors;
            }
            spaces.emplace_back(std::string(name) + "/k=" + cluster_name, std::move(split));
          }
        }
        spaces.emplace_back(name, std::move(mixed));
      }
    }
    for (const auto& [name, space] : spaces) {
      for (const std::string& r : args.sweep_routers) {
        ASSIGN_OR_RETURN(index::RouterOptions router, ParseRouter(r));
        for (int32_t e : args.episodes) {
          ASSIGN_OR_RETURN(EpisodeMetrics m,
                           Evaluate(space, e, Seeds(args.seeds), index::ClusterOptions{}, router));
          std::printf("%-20s %-5s %-9s %2d %8.3f %8.3f %8.3f\n", name.c_str(), dates ? "on" : "off",
                      r.c_str(), e, m.hit_at_1, m.chance, m.medoid_coverage);
          std::fflush(stdout);
        }
      }
    }
  }
  return Status::OK();
}

Status Run(const EvalArgs& args) {
  Env* env = DefaultEnv();
  FidelityCommandArgs fidelity = args.fidelity_args;
  fidelity.json = args.json;
  fidelity.embedder = args.embedder;
  fidelity.model_dir = args.model_dir;
  if (args.fidelity && !fidelity.plan.empty()) {  // the plan holds the data
    return RunFidelityCommand(env, fidelity, {});
  }
  ASSIGN_OR_RETURN(std::vector<LocomoConversation> convs, LoadData(env, args.data));
  if (args.sweep) return RunSweep(env, args, convs);
  if (args.fidelity) return RunFidelityCommand(env, fidelity, convs);
  index::SegmenterOptions seg;
  if (!args.dates.empty()) {
    if (args.dates != "on" && args.dates != "off") {
      return Status::InvalidArgument("--dates: use on or off");
    }
    seg.window_dates = args.dates == "on";
  }
  index::RouterOptions router;
  if (!args.router.empty()) {
    ASSIGN_OR_RETURN(router, ParseRouter(args.router));
  }
  EmbedderSpec spec;
  spec.name = args.embedder;
  spec.model_dir = args.model_dir;
  spec.dense_weight = args.dense_weight;
  spec.llm_path = args.fidelity_args.llm;
  std::string resolved;
  std::vector<EmbeddedConversation> embedded;
  int32_t skipped = 0;
  for (const LocomoConversation& c : convs) {
    ASSIGN_OR_RETURN(std::unique_ptr<index::Embedder> embedder, MakeEmbedder(env, spec, &resolved));
    PreparedConversation p = Prepare(c, seg);
    spdlog::info("eval-episodes: {}: {} windows, {} questions", c.sample_id, p.window_texts.size(),
                 p.questions.size());
    ASSIGN_OR_RETURN(EmbeddedConversation e, EmbedOne(embedder.get(), p));
    skipped += e.num_skipped_questions;
    embedded.push_back(std::move(e));
  }
  nlohmann::ordered_json out = {{"embedder", resolved},
                                {"router", RouterName(router)},
                                {"window_dates", seg.window_dates},
                                {"seeds", args.seeds},
                                {"conversations", convs.size()},
                                {"questions_without_evidence", skipped}};
  nlohmann::ordered_json by_e = nlohmann::ordered_json::array();
  for (int32_t e : args.episodes) {
    ASSIGN_OR_RETURN(EpisodeMetrics m,
                     Evaluate(embedded, e, Seeds(args.seeds), index::ClusterOptions{}, router));
    const nlohmann::ordered_json mj = MetricsJson(m);
    by_e.push_back(mj);
    if (e == 4 || !out.contains("hit_at_1")) {
      for (const char* key : {"episodes", "hit_at_1", "chance", "medoid_coverage", "questions"}) {
        out[key] = mj[key];
      }
    }
  }
  out["by_episodes"] = by_e;
  if (args.json) {
    std::printf("%s\n", out.dump().c_str());
    return Status::OK();
  }
  std::printf("embedder %s, router %s, window dates %s, %d seed(s), %zu conversation(s)\n",
              resolved.c_str(), RouterName(router).c_str(), seg.window_dates ? "on" : "off",
              args.seeds, convs.size());
  std::printf("%3s %10s %8s %8s %10s\n", "E", "questions", "hit@1", "chance", "medoid");
  for (const auto& m : by_e) {
    std::printf("%3d %10lld %8.3f %8.3f %10.3f\n", m["episodes"].get<int>(),
                static_cast<long long>(m["questions"].get<int64_t>()), m["hit_at_1"].get<double>(),
                m["chance"].get<double>(), m["medoid_coverage"].get<double>());
  }
  return Status::OK();
}

}  // namespace

void AddEvalEpisodesCommand(CLI::App& app) {
  auto args = std::make_shared<EvalArgs>();
  CLI::App* cmd = app.add_subcommand(
      "eval-episodes",
      "Episode routing on LoCoMo-format conversations: hit@1, chance, medoid coverage");
  cmd->add_option("--data", args->data, "LoCoMo JSON file, or a directory of them")
      ->capture_default_str();
  cmd->add_option("--embedder", args->embedder,
                  "hashed, bert, hybrid, model (the LLM's keys), or default (the daemon's)")
      ->capture_default_str();
  cmd->add_option("--model-dir", args->model_dir, "sentence model directory (default: installed)");
  cmd->add_option("--router", args->router, "centroid or top:K (default: the daemon's)");
  cmd->add_option("--dates", args->dates,
                  "on or off: session dates in windows (default: the daemon's)");
  cmd->add_option("--dense-weight", args->dense_weight, "hybrid: weight of the dense part")
      ->capture_default_str();
  cmd->add_option("--episodes", args->episodes, "numbers of episodes E")
      ->delimiter(',')
      ->capture_default_str();
  cmd->add_option("--seeds", args->seeds, "k-means seeds to average over")
      ->check(CLI::Range(1, 100))
      ->capture_default_str();
  cmd->add_flag("--json", args->json, "print one JSON object");
  cmd->add_flag("--sweep", args->sweep, "measure every embedder x router x dates option");
  cmd->add_option("--sweep-routers", args->sweep_routers, "--sweep: routers")->delimiter(',');
  cmd->add_option("--sweep-weights", args->sweep_weights, "--sweep: hybrid dense weights")
      ->delimiter(',');
  cmd->add_option("--sweep-dates", args->sweep_dates, "--sweep: on, off or both")->delimiter(',');
  cmd->add_flag("--sweep-split", args->sweep_split,
                "--sweep: also cluster on bert or hashed alone while routing on hybrid");
  cmd->add_flag("--fidelity", args->fidelity,
                "answer NLL under full, recent-window, SnapKV and episodic KV (an LLM)");
  FidelityCommandArgs& fa = args->fidelity_args;
  cmd->add_option("--llm", fa.llm,
                  "--fidelity, --embedder model: LLM (default: the installed default)");
  cmd->add_option("--device", fa.device, "--fidelity: cpu or cuda")->capture_default_str();
  cmd->add_option("--conversations", fa.conversations, "--fidelity: sample ids (default: all)")
      ->delimiter(',');
  cmd->add_option("--plan", fa.plan,
                  "--fidelity: score this plan (made by --plan-out) instead of the data");
  cmd->add_option("--plan-out", fa.plan_out,
                  "--fidelity: embed, route and write the plan to FILE, then stop");
  cmd->add_option("--out", fa.out, "--fidelity: JSON report, rewritten after each conversation");
  cmd->add_option("--deadline-s", fa.deadline_s,
                  "--fidelity: start no conversation that would end past S seconds (0: none)")
      ->check(CLI::Range(0.0, 1e9))
      ->capture_default_str();
  FidelityOptions& f = fa.options;
  cmd->add_option("--context", f.context_tokens, "--fidelity: context tokens")
      ->check(CLI::Range(64, 1 << 20))
      ->capture_default_str();
  cmd->add_option("--block", f.block_tokens, "--fidelity: compressor block B")
      ->check(CLI::Range(1, 1 << 20))
      ->capture_default_str();
  cmd->add_option("--fractions", f.fractions, "--fidelity: budgets M / history")
      ->delimiter(',')
      ->check(CLI::Range(1e-6, 1.0))
      ->capture_default_str();
  cmd->add_option("--max-questions", f.max_questions, "--fidelity: per conversation, 0: all")
      ->check(CLI::Range(0, 1 << 20))
      ->capture_default_str();
  cmd->add_option("--layer-alpha", f.layer_alpha,
                  "--fidelity: per-layer budgets for episodic KV (0: uniform)")
      ->check(CLI::Range(0.0, 100.0))
      ->capture_default_str();
  cmd->add_option("--methods", f.methods,
                  "--fidelity: full,recent,snapkv,episodic,episodic-question (default: the "
                  "first four)")
      ->delimiter(',')
      ->check(CLI::IsMember({"full", "recent", "snapkv", "episodic", "episodic-question"}));
  cmd->add_option("--recent-tokens", f.recent_tokens,
                  "--fidelity: episodic caches keep the history's last N tokens")
      ->check(CLI::Range(0, 1 << 20))
      ->capture_default_str();
  cmd->add_flag("--reserve-sinks", f.reserve_sinks,
                "--fidelity: episodic caches keep the first 4 tokens (the attention sinks)");
  cmd->add_option("--pool-kernel", f.pool_kernel,
                  "--fidelity: episodic scores max-pooled over K neighbours (odd; 1: none)")
      ->check(CLI::Range(1, 63))
      ->capture_default_str();
  cmd->add_option("--snap-pool-kernel", f.snap_pool_kernel,
                  "--fidelity: SnapKV scores max-pooled over K neighbours (odd; 1: none)")
      ->check(CLI::Range(1, 63))
      ->capture_default_str();
  cmd->add_option("--prompt-cut", f.prompt_cut_tokens,
                  "--fidelity: P_e cut to its first N tokens (0: the plan's)")
      ->check(CLI::Range(0, 1 << 20))
      ->capture_default_str();
  cmd->add_flag("--all-episodes", f.all_episodes,
                "--fidelity: score every question on every episode's cache (episodic-best, "
                "episodic-mean)");
  fa.calibration = "tests/fixtures/corpus/mini_swe_agent_messages.txt";
  cmd->add_option("--calibration", fa.calibration, "--layer-alpha: calibration text file")
      ->capture_default_str();
  cmd->add_option("--calibration-tokens", fa.calibration_tokens,
                  "--layer-alpha: calibration tokens (0: four blocks, as the pool allows)")
      ->check(CLI::Range(0, 1 << 20))
      ->capture_default_str();
  cmd->add_option("--state-dir", fa.state_dir,
                  "--layer-alpha: where the layer profile is cached (default: kvkeepd's)");
  cmd->callback([args] {
    for (int32_t e : args->episodes) {
      if (e < 1) throw CLI::ValidationError("--episodes", "each E must be >= 1");
    }
    Status st = Run(*args);
    if (!st.ok()) {
      std::fprintf(stderr, "kvkeep eval-episodes: %s\n", st.ToString().c_str());
      SetExitCode(1);
    }
  });
}

}  // namespace kvkeep::tools
