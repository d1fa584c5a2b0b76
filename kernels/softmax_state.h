// The online-softmax state of one query row, shared by the CPU reference and the CUDA
// kernels (after FlashInfer's attention/state.cuh).
//
// Over a set of keys with scores s_j = scale * q.k_j and values v_j, a row keeps
//   m = max_j s_j                      (-inf while the set is empty)
//   d = sum_j exp(s_j - m)             (0 while the set is empty)
//   o = sum_j exp(s_j - m) * v_j       (unnormalised; owned by the caller, head_dim floats)
// and the attention output is o / d. Two states over disjoint key sets merge exactly
// (up to rounding), which is what lets a long context be split across threads or CTAs.
//
// The state holds only (m, d): o lives wherever the kernel keeps it (registers, shared
// memory, a scratch row), and every operation returns the factors the caller applies to o.
// Values; no allocation; safe to copy between threads.
#pragma once

#include <cmath>

#if defined(__CUDACC__)
#define KVKEEP_HOST_DEVICE __host__ __device__
#else
#define KVKEEP_HOST_DEVICE
#endif

namespace kvkeep {

struct SoftmaxState {
  float m = -INFINITY;
  float d = 0.0f;

  // Raises the running max to at least `block_max` before scores <= block_max are added.
  // Returns alpha: the caller must multiply its o by alpha (d is rescaled here).
  // alpha is 1 when the max did not move and 0 when the state was empty.
  KVKEEP_HOST_DEVICE float Rescale(float block_max) {
    if (!(block_max > m)) return 1.0f;
    const float alpha = expf(m - block_max);  // exp(-inf) == 0 for an empty state
    d *= alpha;
    m = block_max;
    return alpha;
  }

  // Adds one score s <= m (after Rescale). Returns p = exp(s - m): the caller adds p * v to o.
  KVKEEP_HOST_DEVICE float Add(float s) {
    const float p = expf(s - m);
    d += p;
    return p;
  }

  // Factors for merging a state over a disjoint key set: o_merged = self * o + other * o_other.
  struct MergeScales {
    float self;
    float other;
  };

  // Merges `other` into this state and returns the factors to apply to the two o vectors.
  KVKEEP_HOST_DEVICE MergeScales Merge(const SoftmaxState& other) {
    if (other.m == -INFINITY) return {1.0f, 0.0f};
    if (m == -INFINITY) {
      *this = other;
      return {0.0f, 1.0f};
    }
    const float m_new = m > other.m ? m : other.m;
    const float a = expf(m - m_new);
    const float b = expf(other.m - m_new);
    d = d * a + other.d * b;
    m = m_new;
    return {a, b};
  }

  // The factor that turns o into the attention output (1/d; 0 for an empty state, whose
  // o is 0 as well).
  KVKEEP_HOST_DEVICE float OutputScale() const { return d > 0.0f ? 1.0f / d : 0.0f; }
};

}  // namespace kvkeep
