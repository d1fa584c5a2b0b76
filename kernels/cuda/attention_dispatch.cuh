// The one place that enumerates what the CUDA attention kernels are instantiated for:
// head_dim {32, 64, 128} and GQA group size {1, 2, 3, 4, 8} (32 and 3 are what the tiny and
// small synthetic presets use). Everything else is NotSupported.
#pragma once

#include <string>
#include <type_traits>

#include "base/status.h"

namespace kvkeep::cuda {

template <typename F>
Status DispatchHeadDim(int head_dim, F&& f) {
  switch (head_dim) {
    case 32:
      return f(std::integral_constant<int, 32>{});
    case 64:
      return f(std::integral_constant<int, 64>{});
    case 128:
      return f(std::integral_constant<int, 128>{});
    default:
      return Status::NotSupported("CUDA attention: head_dim " + std::to_string(head_dim) +
                                  " (supported: 32, 64, 128)");
  }
}

template <typename F>
Status DispatchGqaGroup(int group, F&& f) {
  switch (group) {
    case 1:
      return f(std::integral_constant<int, 1>{});
    case 2:
      return f(std::integral_constant<int, 2>{});
    case 3:
      return f(std::integral_constant<int, 3>{});
    case 4:
      return f(std::integral_constant<int, 4>{});
    case 8:
      return f(std::integral_constant<int, 8>{});
    default:
      return Status::NotSupported("CUDA attention: GQA group " + std::to_string(group) +
                                  " (supported: 1, 2, 3, 4, 8)");
  }
}

}  // namespace kvkeep::cuda
