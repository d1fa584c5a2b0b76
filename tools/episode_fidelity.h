// The answer-fidelity half of the episode evaluation (`kvkeep eval-episodes --fidelity`):
// how much a compressed KV of a conversation costs in answer quality.
//
// Two passes, so the second can run where the first cannot (a GPU machine without the
// sentence model):
//   PrepareFidelity: for each LoCoMo conversation, the longest prefix of turns that fits
//     the context (less room for a question and its answer) is the history. Its windows
//     are embedded with the daemon's default embedder, clustered into E episodes, and every
//     question of categories 1-4 whose evidence lies in the prefix is routed to one (the
//     daemon's default router). The result is tokens only (FidelityPlan; a file through
//     tools/episode_fidelity_plan.h).
//   EvaluateFidelity: each question's gold answer is scored by teacher-forced NLL per
//     answer token, the question and answer prefilled on top of:
//       full       the whole history's KV;
//       recent     StreamingLLM: sink tokens plus the most recent entries;
//       snapkv     SnapKV-style, query-agnostic: scores from each block's last window;
//       episodic   EpiCache: the routed episode's cache, scored by its medoid prompt;
//     the last three at budgets M = fraction x history, built block-wise
//     (engine/episode_cache.h).
// Reported per method, over all conversations and per conversation: mean NLL per answer
// token, the gap closed between recent and full ((recent - nll) / (recent - full)), the KV
// bytes of one cache, and the build and scoring time; and the tokens forwarded.
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
#include "engine/episode_cache.h"
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
  // The methods run (full, recent, snapkv, episodic, episodic-question); empty: the first
  // four. The gap closed needs full and recent in the same run.
  std::vector<std::string> methods;
  // The compressor's knobs (engine/episode_cache.h): for the episodic caches (recent_tokens,
  // reserve_sinks, pool_kernel) and SnapKV's own pooling (snap_pool_kernel).
  int32_t recent_tokens = CompressOptions{}.recent_tokens;
  bool reserve_sinks = CompressOptions{}.reserve_sinks;
  int32_t pool_kernel = CompressOptions{}.pool_kernel;
  int32_t snap_pool_kernel = 7;   // SnapKV's own max-pooling (its paper's kernel)
  int32_t prompt_cut_tokens = 0;  // > 0: P_e cut to its first N tokens
  // Score every question on every episode's cache: adds episodic-best (per question the
  // episode with the lowest NLL: a routing ceiling) and episodic-mean (any episode).
  bool all_episodes = false;
};

// What PrepareFidelity makes of one conversation: tokens of the model's tokenizer.
struct FidelityQuestion {
  std::vector<int32_t> prompt;  // "\nQuestion: q\nAnswer:"
  std::vector<int32_t> answer;  // " gold answer"
  int32_t episode = 0;          // the routed episode
};
struct FidelityConversation {
  std::string sample_id;
  std::vector<int32_t> history;
  std::vector<std::vector<int32_t>> medoid_prompts;  // P_e of each episode
  std::vector<FidelityQuestion> questions;
};
struct FidelityPlan {
  std::string model;       // the LLM whose tokenizer made the tokens (as given)
  int32_t vocab_size = 0;  // the model's
  std::string embedder;    // the embedder that routed the questions
  int32_t context_tokens = 0, reserve_tokens = 0, max_prompt_tokens = 0, num_episodes = 0;
  std::vector<FidelityConversation> conversations;
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
  // The kept set, per layer and KV head, averaged over the caches: the share of the
  // history's last 256 positions kept, and of its first 4 (the attention sinks).
  double kept_recent = 0.0, kept_sinks = 0.0;
  // Over conversations (the report's totals only): those where this method's NLL is
  // below recent's, and below snapkv's, at its budget.
  int32_t wins_recent = 0, wins_snapkv = 0;
};

struct ConversationFidelity {
  std::string sample_id;
  int32_t questions = 0;
  int64_t answer_tokens = 0;
  int64_t history_tokens = 0;
  int64_t forwarded_tokens = 0;  // every token the backend ran for this conversation
  double elapsed_s = 0.0;
  std::vector<MethodFidelity> methods;
};

struct FidelityReport {
  int32_t conversations = 0;  // evaluated
  int32_t questions = 0;
  int64_t answer_tokens = 0;
  int64_t history_tokens = 0;    // summed over conversations
  int64_t forwarded_tokens = 0;  // builds, scoring forwards and question prefills
  double elapsed_s = 0.0;
  int32_t conversations_left = 0;  // not started: stopped by FidelityHooks::should_stop
  std::vector<MethodFidelity> methods;
  std::vector<ConversationFidelity> per_conversation;
};

using EmbedderMaker = std::function<Result<std::unique_ptr<index::Embedder>>()>;

// Histories, routes and medoid prompts of every conversation with at least one question
// inside its prefix (NotFound when none has). Needs no LLM forward; vocab_size is the
// model's (its config's, which may exceed the tokenizer's).
Result<FidelityPlan> PrepareFidelity(const std::vector<LocomoConversation>& conversations,
                                     const Tokenizer& tokenizer, int32_t vocab_size,
                                     const EmbedderMaker& make_embedder,
                                     const FidelityOptions& options);

struct FidelityHooks {
  // Asked before each conversation; true stops the run there (the report covers the
  // conversations finished so far).
  std::function<bool()> should_stop;
  // Called after each conversation with the report so far.
  std::function<void(const FidelityReport&)> on_conversation;
};

// Scores the plan's conversations. The plan's context, reserve and prompt cap override
// the options'. InvalidArgument when the plan does not fit the backend (vocabulary, pool).
// REQUIRES: backend's pool holds FidelityPoolBlocks(options) blocks.
Result<FidelityReport> EvaluateFidelity(const FidelityPlan& plan, Backend* backend,
                                        const FidelityOptions& options,
                                        const FidelityHooks& hooks = {});

// Blocks the evaluation's builds need: context + B + the largest P_e.
int32_t FidelityPoolBlocks(const FidelityOptions& options, int32_t block_size);

}  // namespace kvkeep::tools
