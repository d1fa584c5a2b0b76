#include "engine/layer_budget.h"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <optional>
#include <sstream>

#include "base/bf16.h"

namespace kvkeep {
namespace {

// Prefills tokens as one sequence at entries entry.. of blocks, positions first_position..
Status Prefill(Backend* backend, std::span<const int32_t> tokens, int32_t entry,
               int32_t first_position, const std::vector<int32_t>& blocks) {
  const int32_t bs = backend->kv_shape().block_size;
  const int32_t n = static_cast<int32_t>(tokens.size());
  ForwardBatch b;
  b.token_ids.assign(tokens.begin(), tokens.end());
  for (int32_t i = 0; i < n; ++i) {
    const int32_t e = entry + i;
    b.positions.push_back(first_position + i);
    b.slot_mapping.push_back(blocks[e / bs] * bs + e % bs);
  }
  b.q_start = {0, n};
  b.kv_len = {entry + n};
  b.block_tables = blocks;
  b.max_blocks_per_seq = static_cast<int32_t>(blocks.size());
  std::vector<float> logits;
  return backend->Forward(b, &logits);
}

// The keys of entries [0, n) as [n][num_layers][num_kv_heads][head_dim] floats.
Result<std::vector<float>> ReadKeys(Backend* backend, const std::vector<int32_t>& blocks,
                                    int32_t n) {
  const KvPoolShape& s = backend->kv_shape();
  const size_t elem = backend->block_bytes() / s.block_stride();
  const int64_t per_token = int64_t{s.num_layers} * s.num_kv_heads * s.head_dim;
  std::vector<float> keys(n * per_token);
  std::vector<uint8_t> raw(backend->block_bytes());
  for (int32_t first = 0; first < n; first += s.block_size) {
    RETURN_IF_ERROR(backend->ReadBlock(blocks[first / s.block_size], raw.data()));
    for (int32_t j = first; j < std::min(n, first + s.block_size); ++j) {
      for (int32_t l = 0; l < s.num_layers; ++l) {
        for (int32_t h = 0; h < s.num_kv_heads; ++h) {
          const int64_t src =
              l * s.layer_stride() + (int64_t{h} * s.block_size + j % s.block_size) * s.head_dim;
          float* dst = keys.data() + j * per_token + (int64_t{l} * s.num_kv_heads + h) * s.head_dim;
          for (int32_t d = 0; d < s.head_dim; ++d) {
            dst[d] = elem == sizeof(float)
                         ? reinterpret_cast<const float*>(raw.data())[src + d]
                         : Bf16ToFloat(reinterpret_cast<const bf16*>(raw.data())[src + d]);
          }
        }
      }
    }
  }
  return keys;
}

}  // namespace

Result<std::vector<int32_t>> LayerBudgets(std::span<const double> similarity, int32_t budget_tokens,
                                          double alpha, double floor_fraction) {
  const int32_t layers = static_cast<int32_t>(similarity.size());
  if (layers == 0 || budget_tokens < 1 || !(alpha >= 0) || !(floor_fraction >= 0) ||
      floor_fraction > 1) {
    return Status::InvalidArgument(
        "layer budgets: need a profile, budget >= 1, alpha >= 0, floor in [0, 1]");
  }
  std::vector<double> w(layers);
  double d_max = 0.0;
  for (int32_t l = 0; l < layers; ++l) d_max = std::max(d_max, std::max(0.0, 1 - similarity[l]));
  for (int32_t l = 0; l < layers; ++l) {
    const double d = d_max > 0 ? std::max(0.0, 1 - similarity[l]) / d_max : 1.0;
    w[l] = std::pow(d, alpha);  // pow(0, 0) == 1: alpha = 0 is uniform
  }
  const int64_t total = int64_t{layers} * budget_tokens;
  if (std::all_of(w.begin(), w.end(), [&](double x) { return x == w[0]; })) {
    return std::vector<int32_t>(layers, budget_tokens);
  }
  const double floor_tokens = std::floor(budget_tokens * floor_fraction);
  // Water-filling: layers whose share falls under the floor get the floor; the rest share
  // what is left in proportion to w.
  std::vector<double> share(layers);
  std::vector<bool> fixed(layers, false);
  for (bool changed = true; changed;) {
    changed = false;
    double free_tokens = static_cast<double>(total), free_weight = 0.0;
    int32_t free_layers = 0;
    for (int32_t l = 0; l < layers; ++l) {
      if (fixed[l]) {
        free_tokens -= floor_tokens;
      } else {
        free_weight += w[l];
        ++free_layers;
      }
    }
    for (int32_t l = 0; l < layers; ++l) {
      if (fixed[l]) {
        share[l] = floor_tokens;
        continue;
      }
      share[l] = free_weight > 0 ? free_tokens * w[l] / free_weight : free_tokens / free_layers;
      if (share[l] < floor_tokens) {
        fixed[l] = true;
        changed = true;
      }
    }
  }
  // Integers summing to total: floors, then the largest remainders (earlier layer on ties).
  std::vector<int32_t> budgets(layers);
  int64_t assigned = 0;
  for (int32_t l = 0; l < layers; ++l) {
    budgets[l] = std::max<int32_t>(1, static_cast<int32_t>(std::floor(share[l])));
    assigned += budgets[l];
  }
  std::vector<int32_t> order(layers);
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](int32_t a, int32_t b) {
    return share[a] - std::floor(share[a]) > share[b] - std::floor(share[b]);
  });
  for (int32_t i = 0; assigned < total; i = (i + 1) % layers, ++assigned) ++budgets[order[i]];
  for (int32_t i = layers - 1; assigned > total; i = (i + layers - 1) % layers) {
    if (budgets[order[i]] > 1) {
      --budgets[order[i]];
      --assigned;
    }
  }
  return budgets;
}

Result<LayerProfile> MeasureLayerSensitivity(Backend* backend, std::span<const int32_t> tokens,
                                             int32_t block_tokens,
                                             const std::vector<int32_t>& blocks) {
  const KvPoolShape& s = backend->kv_shape();
  const int32_t n = static_cast<int32_t>(tokens.size());
  if (block_tokens < 1 || n <= block_tokens) {
    return Status::InvalidArgument("layer profile: the calibration text must exceed one block");
  }
  if (int64_t{static_cast<int32_t>(blocks.size())} * s.block_size < n) {
    return Status::InvalidArgument("layer profile: too few blocks for the calibration text");
  }
  // Full causal attention (chunked prefill is exact), then each block alone.
  for (int32_t start = 0; start < n; start += block_tokens) {
    const int32_t b = std::min(block_tokens, n - start);
    RETURN_IF_ERROR(Prefill(backend, tokens.subspan(start, b), start, start, blocks));
  }
  ASSIGN_OR_RETURN(std::vector<float> full, ReadKeys(backend, blocks, n));
  const int64_t per_token = int64_t{s.num_layers} * s.num_kv_heads * s.head_dim;
  std::vector<double> sum(s.num_layers, 0.0);
  int64_t count = 0;
  for (int32_t start = block_tokens; start < n; start += block_tokens) {
    const int32_t b = std::min(block_tokens, n - start);
    RETURN_IF_ERROR(Prefill(backend, tokens.subspan(start, b), 0, start, blocks));
    ASSIGN_OR_RETURN(std::vector<float> masked, ReadKeys(backend, blocks, b));
    for (int32_t j = 0; j < b; ++j) {
      for (int32_t l = 0; l < s.num_layers; ++l) {
        for (int32_t h = 0; h < s.num_kv_heads; ++h) {
          const int64_t off = (int64_t{l} * s.num_kv_heads + h) * s.head_dim;
          const float* x = full.data() + (start + j) * per_token + off;
          const float* y = masked.data() + j * per_token + off;
          double xy = 0, xx = 0, yy = 0;
          for (int32_t d = 0; d < s.head_dim; ++d) {
            xy += double{x[d]} * y[d];
            xx += double{x[d]} * x[d];
            yy += double{y[d]} * y[d];
          }
          sum[l] += xx > 0 && yy > 0 ? xy / std::sqrt(xx * yy) : 1.0;
        }
      }
      count += s.num_kv_heads;
    }
  }
  LayerProfile profile;
  profile.block_tokens = block_tokens;
  profile.calibration_tokens = n;
  for (int32_t l = 0; l < s.num_layers; ++l) profile.similarity.push_back(sum[l] / count);
  return profile;
}

std::string EncodeLayerProfile(const LayerProfile& p) {
  std::ostringstream out;
  out.precision(17);
  out << "kvkeep-layer-profile 1\nmodel " << p.model_id << "\nblock_tokens " << p.block_tokens
      << "\ncalibration_tokens " << p.calibration_tokens << "\nlayers " << p.similarity.size()
      << "\n";
  for (double s : p.similarity) out << s << "\n";
  return out.str();
}

Result<LayerProfile> DecodeLayerProfile(std::string_view text) {
  std::istringstream in{std::string(text)};
  std::string magic, key[4];
  int version = 0;
  size_t layers = 0;
  LayerProfile p;
  in >> magic >> version >> key[0] >> p.model_id >> key[1] >> p.block_tokens >> key[2] >>
      p.calibration_tokens >> key[3] >> layers;
  if (!in || magic != "kvkeep-layer-profile" || version != 1 || key[0] != "model" ||
      key[1] != "block_tokens" || key[2] != "calibration_tokens" || key[3] != "layers" ||
      layers == 0 || layers > 4096) {
    return Status::Corruption("layer profile: bad header");
  }
  p.similarity.resize(layers);
  for (double& s : p.similarity) {
    if (!(in >> s) || !std::isfinite(s)) return Status::Corruption("layer profile: bad value");
  }
  std::string rest;
  if (in >> rest) return Status::Corruption("layer profile: trailing data");
  return p;
}

namespace {

std::string LayerProfileDir(const std::string& state_dir) {
  return JoinPath(state_dir, "layer_profiles");
}

// The profile cached under state_dir when it is of this model, block size and layer count;
// nullopt (after a warning for a file that does not fit) otherwise.
std::optional<LayerProfile> CachedLayerProfile(Env* env, const std::string& state_dir,
                                               const std::string& model_id, int32_t block_tokens,
                                               int32_t num_layers) {
  const std::string path = LayerProfilePath(state_dir, model_id);
  if (!env->FileExists(path)) return std::nullopt;
  Result<std::string> text = env->ReadFile(path);
  Result<LayerProfile> cached =
      text.ok() ? DecodeLayerProfile(*text) : Result<LayerProfile>(text.status());
  if (cached.ok() && cached->model_id == model_id && cached->block_tokens == block_tokens &&
      static_cast<int32_t>(cached->similarity.size()) == num_layers) {
    return *cached;
  }
  spdlog::warn("layer profile {}: {}; measuring again", path,
               cached.ok() ? "another model or block size" : cached.status().ToString());
  return std::nullopt;
}

Result<LayerProfile> MeasureAndSaveLayerProfile(Env* env, const std::string& state_dir,
                                                const std::string& model_id, Backend* backend,
                                                std::span<const int32_t> tokens,
                                                int32_t block_tokens,
                                                const std::vector<int32_t>& blocks) {
  spdlog::info("layer profile: measuring {} over {} calibration tokens (B = {})", model_id,
               tokens.size(), block_tokens);
  ASSIGN_OR_RETURN(LayerProfile profile,
                   MeasureLayerSensitivity(backend, tokens, block_tokens, blocks));
  profile.model_id = model_id;
  RETURN_IF_ERROR(env->CreateDirs(LayerProfileDir(state_dir)));
  RETURN_IF_ERROR(
      env->WriteFileAtomic(LayerProfilePath(state_dir, model_id), EncodeLayerProfile(profile)));
  return profile;
}

}  // namespace

std::string LayerProfilePath(const std::string& state_dir, const std::string& model_id) {
  return JoinPath(LayerProfileDir(state_dir), model_id + ".txt");
}

Result<LayerProfile> LoadOrMeasureLayerProfile(Env* env, const std::string& state_dir,
                                               const std::string& model_id, Backend* backend,
                                               std::span<const int32_t> tokens,
                                               int32_t block_tokens,
                                               const std::vector<int32_t>& blocks) {
  if (auto cached = CachedLayerProfile(env, state_dir, model_id, block_tokens,
                                       backend->kv_shape().num_layers)) {
    return *cached;
  }
  return MeasureAndSaveLayerProfile(env, state_dir, model_id, backend, tokens, block_tokens,
                                    blocks);
}

Result<LayerProfile> LoadOrMeasureLayerProfileOfFile(Env* env, const std::string& state_dir,
                                                     const std::string& model_id, Backend* backend,
                                                     const Tokenizer& tokenizer,
                                                     const std::string& calibration_file,
                                                     int32_t max_tokens, int32_t block_tokens) {
  Result<std::string> text = env->ReadFile(calibration_file);
  if (!text.ok()) return text.status().WithContext("layer profile: the calibration text");
  const KvPoolShape& shape = backend->kv_shape();
  // A cached profile needs no tokens: the text is encoded only to measure.
  if (auto cached = CachedLayerProfile(env, state_dir, model_id, block_tokens, shape.num_layers)) {
    return *cached;
  }
  ASSIGN_OR_RETURN(std::vector<int32_t> tokens, tokenizer.Encode(*text, false));
  // The profile compares keys after the first block, so the text must span several.
  const int64_t pool_tokens = int64_t{shape.num_blocks} * shape.block_size;
  const int64_t want = max_tokens > 0 ? max_tokens : 4 * int64_t{block_tokens};
  tokens.resize(static_cast<size_t>(
      std::min<int64_t>({static_cast<int64_t>(tokens.size()), want, pool_tokens})));
  std::vector<int32_t> blocks(shape.num_blocks);
  std::iota(blocks.begin(), blocks.end(), 0);
  return MeasureAndSaveLayerProfile(env, state_dir, model_id, backend, tokens, block_tokens,
                                    blocks);
}

}  // namespace kvkeep
