// EpisodeCache: a compressed KV of one conversation history under a fixed token budget,
// built by EpiCache's block-wise prefill (arXiv 2509.17396), and the decoder that runs new
// tokens on top of it.
//
// Build (EpisodeCompressor::Build) walks the history in blocks of B tokens. After each
// block it appends the episode's medoid prompt P_e, scores every cached entry by the
// largest attention probability any of P_e's queries of the KV head's GQA group pays it
// (Backend::ForwardScored), keeps the top M entries of each layer and KV head, drops P_e,
// and packs the survivors to the front (Backend::CompactKv). So at most M + B + |P_e|
// entries are ever live. Keys are stored after RoPE, so a survivor keeps its original
// position; tokens decoded on top continue at the history's length (KvView).
//
// Kept sets differ per layer and per KV head (the pool keeps heads apart, so one block
// table serves them all). By default every layer keeps M entries; with per-layer budgets
// (CompressOptions::layer_budget_tokens, engine/layer_budget.h) layer l keeps its own M_l.
// The layers share one block table, so the cache occupies max M_l slots in every layer;
// layer l's new tokens follow its own M_l kept entries (ForwardBatch::layer_kv_trim), so
// the attention kernels see per-layer context lengths without a change.
//
// The same loop gives the baselines of the fidelity evaluation at the same budget:
// StreamingLLM's sinks plus recent window, and SnapKV's scores from the history's own
// last window of queries (query-agnostic).
//
// The KV lives in backend blocks the caller allocates and owns (a BlockPool's, or a range
// of a bare backend's pool); the cache records which. It is its own object (session,
// episode, version) and is never matched through the prefix hash chain.
//
// Thread-safety: none; call from the thread that owns the backend.
#pragma once

#include <climits>
#include <cstdint>
#include <span>
#include <vector>

#include "base/status.h"
#include "engine/backend.h"
#include "engine/kv_view.h"

namespace kvkeep {

struct EpisodeCacheId {
  uint64_t session = 0;
  int32_t episode = 0;
  uint64_t version = 0;  // bumps when the session's episodes are re-clustered
};

enum class KeepMethod {
  kEpisode,    // scores from the episode prompt's queries (EpiCache)
  kSnapKv,     // scores from each block's last snap_window tokens (SnapKV, query-agnostic)
  kStreaming,  // the first sink_tokens plus the most recent entries (StreamingLLM)
};

struct CompressOptions {
  int32_t budget_tokens = 0;    // M: entries kept per layer and KV head
  int32_t block_tokens = 2048;  // B
  KeepMethod method = KeepMethod::kEpisode;
  int32_t snap_window = 32;  // kSnapKv: queries per block (always kept)
  int32_t sink_tokens = 4;   // kStreaming; kEpisode too with reserve_sinks
  // kEpisode: the newest recent_tokens entries of each compaction (at the end of the
  // history: its last recent_tokens tokens) are kept whatever their score, inside the
  // budget, as H2O and SnapKV keep their recent window; with reserve_sinks also the first
  // sink_tokens. A question prefilled on top then reads the history's last words.
  int32_t recent_tokens = 0;
  bool reserve_sinks = false;
  // kEpisode and kSnapKv: each entry's score is the largest within pool_kernel
  // neighbouring entries (odd; 1: none) before the top M are taken, as SnapKV max-pools
  // its scores (kernel 5-7), so spans are kept rather than scattered tokens.
  int32_t pool_kernel = 1;
  // M_l per layer (engine/layer_budget.h computes them); empty: budget_tokens in every
  // layer. Each >= 1; the build's peak is max M_l + B + |P_e| entries.
  std::vector<int32_t> layer_budget_tokens;
  // The longest prefill run of one Advance() (0: a whole block). The engine sets its
  // prefill chunk, so a build interleaved with other sequences' steps stalls them no
  // longer than a chunked prefill. Splitting a block's prefill changes no kept entry's
  // selection rule (the block is causal), only the floating-point order of its matmuls.
  int32_t step_tokens = 0;
};

struct EpisodeCache {
  EpisodeCacheId id;
  std::vector<int32_t> blocks;  // backend block ids holding entries [0, num_kept)
  int32_t num_kept = 0;         // entries per KV head (the largest layer's, per-layer budgets)
  int32_t history_tokens = 0;   // the history's length: the next token's position
  // Original positions, layer after layer: [num_kv_heads][KeptIn(l)] per layer l (so
  // [num_layers][num_kv_heads][num_kept] without per-layer budgets).
  std::vector<int32_t> positions;
  int64_t peak_entries = 0;  // the most entries live at once while building
  // [num_layers] entries kept per KV head when the layers differ; empty: num_kept in all.
  std::vector<int32_t> layer_kept;

  int32_t KeptIn(int layer) const { return layer_kept.empty() ? num_kept : layer_kept[layer]; }
  // Layer l, KV head h's original positions (KeptIn(l) of them).
  std::span<const int32_t> PositionsOf(int layer, int head, int num_kv_heads) const;
  // The view a sequence decoding on top of this cache uses.
  KvView view() const { return KvView{num_kept, history_tokens, layer_kept}; }
};

// Blocks a build needs: room for M + B + |P_e| entries (M + B for the baselines).
int32_t CompressBlocksNeeded(const CompressOptions& options, int32_t query_tokens,
                             int32_t block_size);

// One build, run at once (Build) or step by step (Start, then Advance until done, then
// TakeCache), so that the engine can interleave it with other sequences' steps. A step is
// one prefill run of at most step_tokens of the current block, or, once a block past the
// budget is in, its scoring (P_e's forward) and compaction.
class EpisodeCompressor {
 public:
  explicit EpisodeCompressor(Backend* backend) : backend_(backend) {}

  // Builds the cache of `history` into `blocks` (overwritten). query is P_e (kEpisode
  // only; ignored otherwise). InvalidArgument for an empty history or query (kEpisode),
  // a budget < 1, too few blocks (CompressBlocksNeeded), or a bad option.
  Result<EpisodeCache> Build(std::span<const int32_t> history, std::span<const int32_t> query,
                             const CompressOptions& options, std::vector<int32_t> blocks,
                             EpisodeCacheId id = {});

  // Build, step by step. Start validates as Build does and copies history and query.
  Status Start(std::span<const int32_t> history, std::span<const int32_t> query,
               const CompressOptions& options, std::vector<int32_t> blocks, EpisodeCacheId id);
  // One step, forwarding at most max_tokens (>= 1) tokens: a prefill run takes the least
  // of step_tokens, max_tokens and what is left of the block; kEpisode scores P_e in runs
  // of at most max_tokens (each entry's score is the largest over the runs, which is the
  // score of one run of all of P_e: every query sees the same context either way), and
  // compacts after the last. kSnapKv scores its window in one run. REQUIRES: started, not
  // done, and no earlier step failed.
  Status Advance(int32_t max_tokens = INT32_MAX);
  // The tokens the next Advance() would forward without a cap (0: a kStreaming selection,
  // which forwards nothing). REQUIRES: started, not done.
  int32_t NextStepTokens() const;
  bool done() const { return next_block_ >= static_cast<int32_t>(history_.size()) && !in_block_; }
  int32_t steps() const { return steps_; }
  // Tokens forwarded by every build of this compressor (history blocks and scoring runs).
  int64_t forwarded_tokens() const { return forwarded_tokens_; }
  // The built cache. REQUIRES: done().
  EpisodeCache TakeCache();

 private:
  // Forwards tokens at `entry`.. (positions first_position..) over the first entry + n;
  // layer l's tokens sit trims[l] entries earlier (empty: none).
  Status ForwardAt(std::span<const int32_t> tokens, int32_t entry, int32_t first_position,
                   std::span<const int32_t> trims, int32_t num_scored, std::vector<float>* scores);
  void BeginBlock();  // lays out the next block's entries and positions
  // The block's scoring forward (a run of at most max_tokens of P_e for kEpisode), then,
  // once everything is scored, the selection and compaction; *done says whether it was.
  Status ScoreAndCompact(int32_t max_tokens, bool* done);
  // Max-pools the scores (pool_kernel) and raises the entries kept whatever their score
  // (SnapKV's window; kEpisode's recent entries and sinks) above every attention score.
  void ReserveAndPool();
  void EndBlock(const std::vector<int32_t>& counts);

  Backend* backend_;
  ForwardBatch batch_;
  std::vector<float> logits_;
  // The build in progress.
  CompressOptions options_;
  std::vector<int32_t> history_, query_, blocks_, budget_;
  EpisodeCache cache_;
  int32_t cap_ = 0;              // entries the blocks hold
  std::vector<int32_t> pos_;     // [layers * heads][cap_]: each entry's position
  std::vector<int32_t> count_;   // live entries per layer
  std::vector<int32_t> totals_;  // per layer, with the current block
  std::vector<int32_t> trims_, keep_, kept_;
  std::vector<float> scores_, run_scores_, pooled_;
  int32_t scored_ = 0;      // kEpisode: P_e tokens scored in this block
  int32_t next_block_ = 0;  // the history index of the next block to begin
  bool in_block_ = false;
  int32_t block_start_ = 0, block_len_ = 0, prefilled_ = 0, plain_ = 0;
  int32_t top_ = 0, total_ = 0;  // the fullest layer's entries before / with the block
  bool evict_ = false;
  int32_t steps_ = 0;
  int64_t forwarded_tokens_ = 0;
};

// Runs tokens on top of a built cache: the cache's entries stay as they are (new tokens
// go after them), so Reset() makes it ready for the next message.
class EpisodeDecoder {
 public:
  // REQUIRES: cache outlives the decoder, and its blocks stay allocated.
  EpisodeDecoder(Backend* backend, const EpisodeCache& cache);

  // Prefills tokens on top; *logits gets [tokens.size()][vocab] (every row: teacher-forced
  // scoring) or, with last_only, the last row. ResourceExhausted when the cache's blocks
  // have no room.
  Status Append(std::span<const int32_t> tokens, bool last_only, std::vector<float>* logits);
  // Prefills message and decodes greedily up to max_new_tokens, stopping after an id in
  // stop_ids. Returns the generated tokens.
  Result<std::vector<int32_t>> Generate(std::span<const int32_t> message, int32_t max_new_tokens,
                                        std::span<const int32_t> stop_ids);
  void Reset() { num_entries_ = cache_.num_kept; }
  int32_t num_entries() const { return num_entries_; }

 private:
  Backend* backend_;
  const EpisodeCache& cache_;
  int32_t num_entries_;
  std::vector<int32_t> trims_;  // per layer: num_kept - KeptIn(l); empty when uniform
  ForwardBatch batch_;
};

}  // namespace kvkeep
