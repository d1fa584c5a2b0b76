// The answer-fidelity half of the episode evaluation (`kvkeep eval-episodes --fidelity`):
// how much a compressed KV of a conversation costs in answer quality.
//
// For each LoCoMo conversation, the longest prefix of turns that fits the context (less
// room for a question and its answer) is the history. Its windows are embedded with the
// daemon's default embedder, clustered into E episodes, and every question of categories
// 1-4 whose evidence lies in the prefix is routed to one (the daemon's default router). Each
// question's gold answer is then scored by teacher-forced NLL per answer token, the
// question and answer prefilled on top of:
//   full       the whole history's KV;
//   recent     StreamingLLM: sink tokens plus the most recent entries;
//   snapkv     SnapKV-style, query-agnostic: scores from each block's last window;
//   episodic   EpiCache: the routed episode's cache, scored by its medoid prompt;
// the last three at budgets M = fraction x history, built block-wise (engine/episode_cache.h).
// Reported per method: mean NLL per answer token, the gap closed between recent and full
// (1 - (nll - full) / (recent - full)), the KV bytes of one cache, and the build and
// scoring time.
//
// Thread-safety: none; one backend, used from the calling thread.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "base/status.h"
#include "engine/backend.h"
#include "engine/tokenizer.h"
#include "index/embedder.h"
#include "tools/locomo.h"

namespace kvkeep::tools {

struct FidelityOptions {
  int32_t context_tokens = 8192;     // the model's context: history + question + answer
  int32_t reserve_tokens = 256;      // room kept for the question and answer
  int32_t block_tokens = 2048;       // B
  int32_t num_episodes = 4;          // E
  int32_t max_prompt_tokens = 1024;  // P_e is cut to this
  std::vector<double> fractions = {0.25, 0.125};
  int32_t max_questions = 0;  // per conversation; 0 = all
  // Per-layer budgets for the episodic caches (engine/layer_budget.h): alpha 0 = uniform;
  // layer_similarity is the model's profile, needed when layer_alpha > 0.
  double layer_alpha = 0.0;
  std::vector<double> layer_similarity;
};

struct MethodFidelity {
  std::string method;     // full, recent, snapkv, episodic
  double fraction = 1.0;  // budget / history
  double mean_nll = 0.0;  // per answer token
  double gap_closed = 0.0;
  int64_t kv_bytes = 0;  // mean bytes of one cache
  double build_s = 0.0;  // all builds
  double score_s = 0.0;  // all question scoring
  int32_t num_caches = 0;
};

struct FidelityReport {
  int32_t conversations = 0;
  int32_t questions = 0;
  int64_t answer_tokens = 0;
  int64_t history_tokens = 0;  // summed over conversations
  std::vector<MethodFidelity> methods;
};

using EmbedderMaker = std::function<Result<std::unique_ptr<index::Embedder>>()>;

// Runs the evaluation. REQUIRES: backend's pool holds FidelityPoolBlocks(options) blocks.
Result<FidelityReport> EvaluateFidelity(const std::vector<LocomoConversation>& conversations,
                                        Backend* backend, const Tokenizer& tokenizer,
                                        const EmbedderMaker& make_embedder,
                                        const FidelityOptions& options);

int32_t FidelityPoolBlocks(const FidelityOptions& options, int32_t block_size);

}  // namespace kvkeep::tools
