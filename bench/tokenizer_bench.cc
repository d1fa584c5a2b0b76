// Tokenizer encode throughput (MB/s of UTF-8 input, one core) on real agent text: the
// mini-swe-agent trajectories from ../shared/data when present, else the fixture corpus.
// Anchors in the same run: memcpy and a plain byte scan of the same text.
// Tokenizers: the trained byte-level BPE and WordPiece fixtures (tests/fixtures/parity/),
// and the synthetic model's 256-byte vocabulary. The BPE word cache is warm after the first
// iteration, as it is in a long-running daemon.
#include <benchmark/benchmark.h>

#include <cstring>
#include <filesystem>

#include <nlohmann/json.hpp>

#include "engine/synthetic_model.h"
#include "engine/tokenizer.h"

namespace kvkeep {
namespace {

namespace fs = std::filesystem;

const fs::path kRoot = fs::path(__FILE__).parent_path().parent_path();

std::string LoadText() {
  std::string text;
  const fs::path traces = kRoot.parent_path() / "shared/data/traces/mini-swe-agent-v2-deepseek";
  if (fs::is_directory(traces)) {
    for (const auto& entry : fs::directory_iterator(traces)) {
      auto raw = DefaultEnv()->ReadFile(entry.path().string());
      if (!raw.ok()) continue;
      auto j = nlohmann::json::parse(*raw, nullptr, false);
      if (j.is_discarded()) continue;
      for (const auto& m : j.value("messages", nlohmann::json::array())) {
        if (m.contains("content") && m["content"].is_string()) {
          text += m["content"].get<std::string>() + "\n";
        }
      }
      if (text.size() > (8u << 20)) break;
    }
  }
  if (text.empty()) {
    auto corpus = DefaultEnv()->ReadFile(
        (kRoot / "tests/fixtures/corpus/mini_swe_agent_messages.txt").string());
    if (corpus.ok()) text = *corpus;
  }
  return text;
}

const std::string& Text() {
  static const std::string text = LoadText();
  return text;
}

void SetBytes(benchmark::State& state) {
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations()) * Text().size());
  state.counters["text_MB"] = Text().size() / 1e6;
}

void BM_AnchorMemcpy(benchmark::State& state) {
  std::string dst(Text().size(), '\0');
  for (auto _ : state) {
    std::memcpy(dst.data(), Text().data(), Text().size());
    benchmark::DoNotOptimize(dst.data());
  }
  SetBytes(state);
}

void BM_AnchorByteScan(benchmark::State& state) {
  for (auto _ : state) {
    int64_t spaces = 0;
    for (char c : Text()) spaces += (c == ' ' || c == '\n');
    benchmark::DoNotOptimize(spaces);
  }
  SetBytes(state);
}

void Encode(benchmark::State& state, const Tokenizer* tok) {
  if (tok == nullptr || Text().empty()) {
    state.SkipWithError("tokenizer or text missing (run tests/fixtures/gen_parity.py)");
    return;
  }
  size_t num_tokens = 0;
  for (auto _ : state) {
    auto ids = tok->Encode(Text());
    if (!ids.ok()) {
      state.SkipWithError(ids.status().ToString().c_str());
      return;
    }
    num_tokens = ids->size();
  }
  SetBytes(state);
  state.counters["bytes_per_token"] = static_cast<double>(Text().size()) / num_tokens;
}

std::unique_ptr<Tokenizer> Fixture(const std::string& name) {
  auto t =
      LoadTokenizer(DefaultEnv(), (kRoot / "tests/fixtures/parity/tokenizers" / name).string());
  return t.ok() ? std::move(t).value() : nullptr;
}

void BM_EncodeBpeLlama3(benchmark::State& state) {
  static auto tok = Fixture("bpe_llama3");
  Encode(state, tok.get());
}

void BM_EncodeBpeGpt2(benchmark::State& state) {
  static auto tok = Fixture("bpe_gpt2");
  Encode(state, tok.get());
}

void BM_EncodeWordPiece(benchmark::State& state) {
  static auto tok = Fixture("wordpiece_uncased");
  Encode(state, tok.get());
}

void BM_EncodeSynthetic(benchmark::State& state) {
  static auto tok = [] {
    const std::string path = (fs::temp_directory_path() / "kvkeep_bench_tokenizer.json").string();
    std::unique_ptr<Tokenizer> t;
    if (DefaultEnv()->WriteFileAtomic(path, SyntheticTokenizerJson()).ok()) {
      auto r = LoadTokenizer(DefaultEnv(), path);
      if (r.ok()) t = std::move(r).value();
    }
    return t;
  }();
  Encode(state, tok.get());
}

BENCHMARK(BM_AnchorMemcpy)->Unit(benchmark::kMillisecond);
BENCHMARK(BM_AnchorByteScan)->Unit(benchmark::kMillisecond);
BENCHMARK(BM_EncodeBpeLlama3)->Unit(benchmark::kMillisecond);
BENCHMARK(BM_EncodeBpeGpt2)->Unit(benchmark::kMillisecond);
BENCHMARK(BM_EncodeWordPiece)->Unit(benchmark::kMillisecond);
BENCHMARK(BM_EncodeSynthetic)->Unit(benchmark::kMillisecond);

}  // namespace
}  // namespace kvkeep

BENCHMARK_MAIN();
