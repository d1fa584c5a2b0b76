// KVKEEP_CACHE_CHECK: an always-on precondition check for the cache bookkeeping. A broken
// reference count would silently corrupt other sequences' KV, so violations log and
// abort instead of continuing. Cheap enough for the hot path (a compare and a branch).
#pragma once

#include <spdlog/spdlog.h>

#include <cstdlib>

#define KVKEEP_CACHE_CHECK(cond, ...)                                            \
  do {                                                                           \
    if (!(cond)) [[unlikely]] {                                                  \
      spdlog::critical("{}:{}: check failed: {}: {}", __FILE__, __LINE__, #cond, \
                       fmt::format(__VA_ARGS__));                                \
      spdlog::default_logger()->flush();                                         \
      std::abort();                                                              \
    }                                                                            \
  } while (0)
