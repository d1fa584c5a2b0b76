#include "kernels/cpu/kv_compact.h"

#include <fmt/format.h>

#include <algorithm>

namespace kvkeep::cpu {

template <typename KvT>
Status CompactKv(const PagedKv<KvT>& kv, const int32_t* block_table, int32_t num_entries,
                 const int32_t* keep, int32_t num_keep) {
  if (num_keep < 0 || num_keep > num_entries) {
    return Status::InvalidArgument(
        fmt::format("compact kv: keeping {} of {} entries", num_keep, num_entries));
  }
  const int32_t bs = kv.block_size, d = kv.head_dim;
  for (int32_t h = 0; h < kv.num_kv_heads; ++h) {
    const int32_t* list = keep + int64_t{h} * num_keep;
    for (int32_t i = 0; i < num_keep; ++i) {
      if (list[i] < 0 || list[i] >= num_entries || (i > 0 && list[i] <= list[i - 1])) {
        return Status::InvalidArgument(fmt::format(
            "compact kv: head {} keep list must increase inside [0, {})", h, num_entries));
      }
    }
  }
  auto offset = [&](int32_t h, int32_t j) {
    return int64_t{block_table[j / bs]} * kv.block_stride + (int64_t{h} * bs + j % bs) * d;
  };
  for (int32_t h = 0; h < kv.num_kv_heads; ++h) {
    const int32_t* list = keep + int64_t{h} * num_keep;
    for (int32_t i = 0; i < num_keep; ++i) {
      if (list[i] == i) continue;
      const int64_t src = offset(h, list[i]), dst = offset(h, i);
      std::copy(kv.k + src, kv.k + src + d, kv.k + dst);
      std::copy(kv.v + src, kv.v + src + d, kv.v + dst);
    }
  }
  return Status::OK();
}

template Status CompactKv<float>(const PagedKv<float>&, const int32_t*, int32_t, const int32_t*,
                                 int32_t);
template Status CompactKv<bf16>(const PagedKv<bf16>&, const int32_t*, int32_t, const int32_t*,
                                int32_t);

}  // namespace kvkeep::cpu
