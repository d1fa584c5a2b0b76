// CHECK_OK(expr): the GPU benchmarks' one way out on an error Status: print what failed and
// exit(1). A benchmark has nothing to recover to, and a figure after a failure would lie.
#pragma once

#include <cstdio>
#include <cstdlib>

#include "base/status.h"

#define CHECK_OK(expr)                                                       \
  do {                                                                       \
    ::kvkeep::Status _s = (expr);                                            \
    if (!_s.ok()) {                                                          \
      std::fprintf(stderr, "%s failed: %s\n", #expr, _s.ToString().c_str()); \
      std::exit(1);                                                          \
    }                                                                        \
  } while (0)
