// The CUDA backend serving a real GGUF model (issue 14: SmolLM2-135M-Instruct Q4_1,
// dequantised to bf16 at load): prefill tok/s of one 512-token prompt, and greedy decode
// tok/s at batch 1 and 64, each sequence after its own 512-token prompt, 64 steps, wall
// clock around Backend::Forward (which includes reading the logits back for the host-side
// argmax, as the engine does). The anchor, HF transformers on the same file in the same
// run, is bench/gpu/hf_gguf_anchor.py. Writes $OUT/kvkeep_gguf_decode.json.
//
//   gguf_decode_bench MODEL.gguf
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <string>
#include <vector>

#include "base/file.h"
#include "bench/gpu/check_ok.h"
#include "engine/cuda/cuda_backend.h"
#include "engine/model_config.h"
#include "engine/model_weights.h"
#include "engine/sampler.h"

namespace kvkeep {
namespace {

constexpr int kBlock = 16, kPrompt = 512, kSteps = 64;
constexpr int kBlocksPerSeq = (kPrompt + kSteps + 16 + kBlock - 1) / kBlock;

struct Seq {
  std::vector<int32_t> tokens;
  int32_t first_block = 0;  // blocks first_block .. first_block + kBlocksPerSeq - 1
};

// Each sequence in `seqs` processes tokens [start, start + n) with logits for its last.
ForwardBatch Batch(const std::vector<Seq>& seqs, int start, int n) {
  ForwardBatch b;
  b.max_blocks_per_seq = kBlocksPerSeq;
  b.q_start.push_back(0);
  for (const Seq& s : seqs) {
    for (int i = start; i < start + n; ++i) {
      b.token_ids.push_back(s.tokens[i]);
      b.positions.push_back(i);
      b.slot_mapping.push_back((s.first_block + i / kBlock) * kBlock + i % kBlock);
    }
    b.q_start.push_back(b.q_start.back() + n);
    b.kv_len.push_back(start + n);
    for (int j = 0; j < kBlocksPerSeq; ++j) b.block_tables.push_back(s.first_block + j);
    b.logit_rows.push_back(b.q_start.back() - 1);
  }
  return b;
}

double Seconds(std::chrono::steady_clock::time_point a) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - a).count();
}

// Prefills every sequence (one forward each), then decodes kSteps greedy tokens for all of
// them together; returns decode tokens/s over all sequences.
double DecodeTokPerS(Backend& b, std::vector<Seq>& seqs, int vocab) {
  std::vector<float> logits;
  for (Seq& s : seqs) {
    CHECK_OK(b.Forward(Batch({s}, 0, kPrompt), &logits));
    s.tokens[kPrompt] = Sampler::Argmax(logits.data(), vocab);
  }
  auto step = [&](int pos) {
    CHECK_OK(b.Forward(Batch(seqs, pos, 1), &logits));
    for (size_t i = 0; i < seqs.size(); ++i) {
      seqs[i].tokens[pos + 1] = Sampler::Argmax(logits.data() + i * vocab, vocab);
    }
  };
  for (int w = 0; w < 3; ++w) step(kPrompt + w);  // warm-up; the timed loop rewrites them
  const auto t = std::chrono::steady_clock::now();
  for (int i = 0; i < kSteps; ++i) step(kPrompt + i);
  return double(kSteps) * seqs.size() / Seconds(t);
}

int Main(int argc, char** argv) {
  if (argc < 2) {
    std::fprintf(stderr, "usage: gguf_decode_bench MODEL.gguf\n");
    return 2;
  }
  const std::string path = argv[1];
  Env* env = DefaultEnv();
  auto config = LoadModelConfig(env, path);
  CHECK_OK(config.status());
  auto weights = ModelWeights::Load(env, path, *config);
  CHECK_OK(weights.status());
  const int vocab = config->vocab_size;
  const int max_batch = 64;
  BackendOptions opt;
  opt.num_kv_blocks = max_batch * kBlocksPerSeq;
  opt.kv_dtype = KvDType::kBF16;
  auto backend = CreateCudaBackend(**weights, opt);
  CHECK_OK(backend.status());
  Backend& b = **backend;

  std::mt19937 rng(7);
  auto make_seqs = [&](int n) {
    std::vector<Seq> seqs(n);
    for (int i = 0; i < n; ++i) {
      seqs[i].tokens.resize(kPrompt + kSteps + 8);
      for (int32_t& t : seqs[i].tokens) t = static_cast<int32_t>(rng() % vocab);
      seqs[i].first_block = i * kBlocksPerSeq;
    }
    return seqs;
  };

  std::vector<Seq> one = make_seqs(1);
  std::vector<float> logits;
  std::vector<double> ts;
  for (int it = 0; it < 6; ++it) {
    const auto s = std::chrono::steady_clock::now();
    CHECK_OK(b.Forward(Batch(one, 0, kPrompt), &logits));
    if (it > 0) ts.push_back(Seconds(s));
  }
  std::sort(ts.begin(), ts.end());
  const double prefill_tok_s = kPrompt / ts[ts.size() / 2];
  const double decode_b1 = DecodeTokPerS(b, one, vocab);
  std::vector<Seq> many = make_seqs(max_batch);
  const double decode_b64 = DecodeTokPerS(b, many, vocab);
  std::printf("gguf %s: prefill B=1 P=%d %.0f tok/s; decode B=1 %.1f tok/s; B=64 %.0f tok/s\n",
              path.c_str(), kPrompt, prefill_tok_s, decode_b1, decode_b64);
  const char* out = std::getenv("OUT");
  const std::string json = std::string(out && *out ? out : ".") + "/kvkeep_gguf_decode.json";
  if (FILE* f = std::fopen(json.c_str(), "w")) {
    std::fprintf(f,
                 "{\"prefill_B1_P512_tok_per_s\": %.1f, \"decode_B1_P512_tok_per_s\": %.2f, "
                 "\"decode_B64_P512_tok_per_s\": %.1f}\n",
                 prefill_tok_s, decode_b1, decode_b64);
    std::fclose(f);
  }
  return 0;
}

}  // namespace
}  // namespace kvkeep

int main(int argc, char** argv) { return kvkeep::Main(argc, argv); }
