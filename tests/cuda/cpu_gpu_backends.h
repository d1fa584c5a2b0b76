// A CPU and a CUDA backend over the same synthetic bf16 weights, for the GPU tests that
// check a CUDA path against the CPU reference (cuda_episode_test, cuda_layer_budget_test).
#pragma once

#include <gtest/gtest.h>

#include <cstdint>
#include <memory>

#include "base/file.h"
#include "engine/backend.h"
#include "engine/cuda/cuda_backend.h"
#include "engine/model_weights.h"
#include "engine/synthetic_model.h"
#include "tests/testlib/test_util.h"

namespace kvkeep::testing {

struct CpuGpuBackends {
  TempDir dir;
  std::unique_ptr<ModelWeights> weights;
  std::unique_ptr<Backend> cpu, gpu;
};

// The tiny preset in bf16 (seed % 1000); the GPU pool is bf16, the CPU pool cpu_kv (bf16
// makes the two pools' bytes comparable). Null, with a test failure, when a step fails.
inline std::unique_ptr<CpuGpuBackends> MakeCpuGpuBackends(uint64_t seed, KvDType cpu_kv,
                                                          int32_t num_blocks, int32_t block_size) {
  auto b = std::make_unique<CpuGpuBackends>();
  Env* env = DefaultEnv();
  SyntheticModelOptions mo;
  mo.preset = "tiny";
  mo.seed = seed % 1000;
  mo.dtype = DType::kBF16;
  EXPECT_TRUE(MakeSyntheticModel(env, b->dir.path(), mo).ok());
  auto config = LoadModelConfig(env, b->dir.path());
  EXPECT_TRUE(config.ok());
  if (!config.ok()) return nullptr;
  auto weights = ModelWeights::Load(env, b->dir.path(), *config);
  EXPECT_TRUE(weights.ok());
  if (!weights.ok()) return nullptr;
  b->weights = std::move(weights).value();
  BackendOptions o;
  o.num_kv_blocks = num_blocks;
  o.block_size = block_size;
  o.kv_dtype = cpu_kv;
  auto cpu = CreateCpuBackend(*b->weights, o);
  o.kv_dtype = KvDType::kBF16;
  auto gpu = CreateCudaBackend(*b->weights, o);
  EXPECT_TRUE(cpu.ok() && gpu.ok());
  if (!cpu.ok() || !gpu.ok()) return nullptr;
  b->cpu = std::move(cpu).value();
  b->gpu = std::move(gpu).value();
  return b;
}

}  // namespace kvkeep::testing
