// KvView: where a sequence's RoPE positions come from, apart from its KV slots.
//
// A full-KV sequence keeps token i of its list at KV index i and rotates it at position
// i. A sequence decoded from a compressed (episode) cache does not: its leading
// num_restored KV entries were kept from the middle of a longer history, packed into
// slots 0..num_restored-1, and each already carries its own position (keys are stored
// after RoPE, so the original position travels with the key). Tokens computed on top
// continue the history's numbering at next_position. The per-layer, per-head positions of
// the restored entries live in the cache object (engine/episode_cache.h), not here: the
// engine only needs the positions of the tokens it computes.
//
// A cache built with per-layer budgets keeps fewer entries in some layers: layer_kept[l]
// of the num_restored slots hold layer l's entries (num_restored is the largest), and
// every layer's new tokens follow its own kept entries (ForwardBatch::layer_kv_trim).
//
// The default view (0, 0) is the identity, so full-KV sequences are unchanged.
// Thread-safety: a plain value.
#pragma once

#include <cstdint>
#include <vector>

namespace kvkeep {

struct KvView {
  int32_t num_restored = 0;   // leading KV entries restored from a compressed cache
  int32_t next_position = 0;  // RoPE position of KV index num_restored
  // Empty: every layer keeps num_restored. Else [num_layers], each <= num_restored.
  std::vector<int32_t> layer_kept;

  // How many fewer restored entries layer l holds than num_restored.
  int32_t LayerTrim(int layer) const {
    return layer_kept.empty() ? 0 : num_restored - layer_kept[layer];
  }

  // The RoPE position of the token at KV index kv_index.
  // REQUIRES: kv_index >= num_restored (restored entries are never recomputed).
  int32_t PositionOf(int64_t kv_index) const {
    return static_cast<int32_t>(next_position + (kv_index - num_restored));
  }
};

}  // namespace kvkeep
