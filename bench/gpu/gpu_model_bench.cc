// End-to-end CUDA backend benchmark on the llama3-8b-shape synthetic model (random bf16
// weights, the Llama-3-8B architecture): prefill of an 8192-token prompt (tokens/s) and
// greedy decode at B=1 after a 2048-token prompt (tokens/s, 64 steps), wall clock around
// Backend::Forward (which includes reading the logits back). Writes $OUT/kvkeep_model.json.
//
//   gpu_model_bench [model_dir]   (default /tmp/kvkeep-llama3-8b-shape; created if absent)
//
// KVKEEP_BENCH_PROFILE=prefill|decode brackets one 8k prefill (or two decode steps) with
// cudaProfilerStart/Stop, for `ncu --profile-from-start off`, and skips the timed loops.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include <cuda_profiler_api.h>

#include "base/file.h"
#include "bench/gpu/check_ok.h"
#include "engine/cuda/cuda_backend.h"
#include "engine/model_weights.h"
#include "engine/sampler.h"
#include "engine/synthetic_model.h"

namespace kvkeep {
namespace {

constexpr int kBlock = 16;

// One sequence with blocks 0..max_blocks-1; processes tokens [start, start + n).
ForwardBatch Batch(const std::vector<int32_t>& tokens, int start, int n, int max_blocks) {
  ForwardBatch b;
  b.max_blocks_per_seq = max_blocks;
  for (int i = start; i < start + n; ++i) {
    b.token_ids.push_back(tokens[i]);
    b.positions.push_back(i);
    b.slot_mapping.push_back(i);  // block i / 16 is block id i / 16
  }
  b.q_start = {0, n};
  b.kv_len = {start + n};
  for (int i = 0; i < max_blocks; ++i) b.block_tables.push_back(i);
  b.logit_rows = {n - 1};
  return b;
}

double Seconds(std::chrono::steady_clock::time_point a) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - a).count();
}

int Main(int argc, char** argv) {
  const std::string dir = argc > 1 ? argv[1] : "/tmp/kvkeep-llama3-8b-shape";
  Env* env = DefaultEnv();
  auto t0 = std::chrono::steady_clock::now();
  if (!env->FileExists(dir + "/config.json")) {
    SyntheticModelOptions o;
    o.preset = "llama3-8b-shape";
    CHECK_OK(MakeSyntheticModel(env, dir, o));
    std::printf("made %s in %.1f s\n", dir.c_str(), Seconds(t0));
  }
  auto config = LoadModelConfig(env, dir);
  CHECK_OK(config.status());
  auto weights = ModelWeights::Load(env, dir, *config);
  CHECK_OK(weights.status());
  t0 = std::chrono::steady_clock::now();
  const int max_tokens = 8192 + 128;
  const int max_blocks = (max_tokens + kBlock - 1) / kBlock;
  BackendOptions opt;
  opt.num_kv_blocks = max_blocks;
  opt.kv_dtype = KvDType::kBF16;
  auto backend = CreateCudaBackend(**weights, opt);
  CHECK_OK(backend.status());
  std::printf("backend ready (upload) in %.1f s\n", Seconds(t0));
  Backend& b = **backend;
  const int vocab = config->vocab_size;
  std::vector<int32_t> tokens(max_tokens);
  for (int i = 0; i < max_tokens; ++i) tokens[i] = (i * 7919 + 13) % 128000;
  std::vector<float> logits;
  const char* profile_env = std::getenv("KVKEEP_BENCH_PROFILE");
  const std::string profile = profile_env ? profile_env : "";
  if (profile == "prefill") {
    CHECK_OK(b.Forward(Batch(tokens, 0, 8192, max_blocks), &logits));
    cudaProfilerStart();
    CHECK_OK(b.Forward(Batch(tokens, 0, 8192, max_blocks), &logits));
    cudaProfilerStop();
    return 0;
  }
  if (profile == "decode") {
    CHECK_OK(b.Forward(Batch(tokens, 0, 2048, max_blocks), &logits));
    for (int w = 0; w < 3; ++w)
      CHECK_OK(b.Forward(Batch(tokens, 2048 + w, 1, max_blocks), &logits));
    cudaProfilerStart();
    CHECK_OK(b.Forward(Batch(tokens, 2051, 1, max_blocks), &logits));
    cudaProfilerStop();
    return 0;
  }

  // Prefill 8192 tokens (B=1), median of 3 after a warm-up.
  std::vector<double> ts;
  for (int it = 0; it < 4; ++it) {
    auto s = std::chrono::steady_clock::now();
    CHECK_OK(b.Forward(Batch(tokens, 0, 8192, max_blocks), &logits));
    if (it > 0) ts.push_back(Seconds(s));
  }
  std::sort(ts.begin(), ts.end());
  const double prefill_tok_s = 8192 / ts[1];
  std::printf("prefill B=1 8192 tokens: %.3f s, %.0f tok/s\n", ts[1], prefill_tok_s);

  // Decode B=1 after a 2048-token prompt: 64 greedy steps.
  CHECK_OK(b.Forward(Batch(tokens, 0, 2048, max_blocks), &logits));
  int pos = 2048;
  tokens[pos] = Sampler::Argmax(logits.data(), vocab);
  for (int w = 0; w < 4; ++w) {  // warm-up steps, then rewind
    CHECK_OK(b.Forward(Batch(tokens, pos + w, 1, max_blocks), &logits));
  }
  auto s = std::chrono::steady_clock::now();
  const int steps = 64;
  for (int i = 0; i < steps; ++i) {
    CHECK_OK(b.Forward(Batch(tokens, pos, 1, max_blocks), &logits));
    tokens[++pos] = Sampler::Argmax(logits.data(), vocab);
  }
  const double decode_s = Seconds(s);
  const double decode_tok_s = steps / decode_s;
  std::printf("decode B=1 after 2048: %d steps in %.3f s, %.1f tok/s\n", steps, decode_s,
              decode_tok_s);
  const char* out = std::getenv("OUT");
  const std::string path = std::string(out && *out ? out : ".") + "/kvkeep_model.json";
  if (FILE* f = std::fopen(path.c_str(), "w")) {
    std::fprintf(f, "{\"prefill_B1_P8192_tok_per_s\": %.1f, \"decode_B1_P2048_tok_per_s\": %.2f}\n",
                 prefill_tok_s, decode_tok_s);
    std::fclose(f);
  }
  return 0;
}

}  // namespace
}  // namespace kvkeep

int main(int argc, char** argv) { return kvkeep::Main(argc, argv); }
