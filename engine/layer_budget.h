// Layer-wise KV budgets for compressed (episode) caches, EpiCache's item 6
// (arXiv 2509.17396): layers whose keys change most when attention is cut at block
// boundaries get a larger share of the budget.
//
// The sensitivity profile of a model: prefill a calibration text twice, once with full
// causal attention and once block-masked (each block of B tokens attends only to itself,
// at its original positions, as a block-wise prefill without the history would), and take
// per layer the mean cosine similarity s_l between the two keys of every (token, KV head)
// past the first block (the first block is the same in both). Layer 0's keys never see
// attention, so s_0 = 1.
//
// Budgets from a profile: d_l = max(0, 1 - s_l), normalised by the largest d; the weight
// w_l = (d_l / max d)^alpha; M_l is proportional to w_l with a floor of M / 4, and the M_l
// sum to exactly L * M (largest remainders). alpha = 0 gives M in every layer.
//
// Thread-safety: pure functions, except MeasureLayerSensitivity (it writes the backend's
// pool: call it from the thread that owns the backend).
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "base/file.h"
#include "base/status.h"
#include "engine/backend.h"
#include "engine/tokenizer.h"

namespace kvkeep {

struct LayerProfile {
  std::string model_id;            // ModelIdentity of the model measured
  int32_t block_tokens = 0;        // B of the block-masked prefill
  int32_t calibration_tokens = 0;  // length of the calibration text
  std::vector<double> similarity;  // s_l per layer
};

// M_l per layer. InvalidArgument for an empty profile, budget < 1, alpha < 0 or a floor
// fraction outside [0, 1].
Result<std::vector<int32_t>> LayerBudgets(std::span<const double> similarity, int32_t budget_tokens,
                                          double alpha, double floor_fraction = 0.25);

// Measures the profile over `tokens` in blocks of block_tokens, using the backend's pool
// blocks `blocks` (overwritten; enough for tokens.size() entries). InvalidArgument unless
// tokens has more than one block, or when blocks are too few.
Result<LayerProfile> MeasureLayerSensitivity(Backend* backend, std::span<const int32_t> tokens,
                                             int32_t block_tokens,
                                             const std::vector<int32_t>& blocks);

// A profile as a small text file (kvkeep-layer-profile 1) and back. Load: Corruption for a
// file that does not parse.
std::string EncodeLayerProfile(const LayerProfile& profile);
Result<LayerProfile> DecodeLayerProfile(std::string_view text);

// The profile's file under a state directory: <state_dir>/layer_profiles/<model_id>.txt.
std::string LayerProfilePath(const std::string& state_dir, const std::string& model_id);

// Loads the cached profile of (model_id, block_tokens) from state_dir, or measures it and
// saves it there (a cached profile of another model, block size or layer count is
// measured again).
Result<LayerProfile> LoadOrMeasureLayerProfile(Env* env, const std::string& state_dir,
                                               const std::string& model_id, Backend* backend,
                                               std::span<const int32_t> tokens,
                                               int32_t block_tokens,
                                               const std::vector<int32_t>& blocks);

// LoadOrMeasureLayerProfile over calibration_file's text: its first max_tokens tokens
// (0: four blocks), cut to what the backend's pool holds, in the pool's blocks from 0.
// REQUIRES: nothing else uses the backend's pool (a measurement overwrites it).
Result<LayerProfile> LoadOrMeasureLayerProfileOfFile(Env* env, const std::string& state_dir,
                                                     const std::string& model_id, Backend* backend,
                                                     const Tokenizer& tokenizer,
                                                     const std::string& calibration_file,
                                                     int32_t max_tokens, int32_t block_tokens);

}  // namespace kvkeep
