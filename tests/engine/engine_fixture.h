// Shared helpers for the engine tests: requests that record their events, a batch builder
// for driving a Backend by hand, and tolerances. The synthetic model and its fixture are
// tests/testlib/tiny_model.h.
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "base/file.h"
#include "engine/backend.h"
#include "engine/engine.h"
#include "engine/model_config.h"
#include "engine/model_weights.h"
#include "engine/synthetic_model.h"
#include "engine/tokenizer.h"
#include "tests/testlib/test_util.h"
#include "tests/testlib/tiny_model.h"

namespace kvkeep::enginetest {

// The tiny model, its backend and the fixture over them live in tests/testlib.
using testing::MakeBackend;
using testing::MakeTestModel;
using testing::TestModel;
using testing::TinyModelTest;

// What one request produced, as its events reported it.
struct Outcome {
  std::vector<int32_t> tokens;
  Usage usage;
  FinishReason reason = FinishReason::kNone;
};

// A request for `prompt` that stops after max_tokens (never at EOS) and records its events
// into *out, which must outlive it.
inline GenerateRequest RequestInto(Outcome* out, RequestId id, std::vector<int32_t> prompt,
                                   int32_t max_tokens, SessionId session = 0, uint64_t salt = 0) {
  GenerateRequest r;
  r.id = id;
  r.session = session;
  r.cache_salt = salt;
  r.prompt = std::move(prompt);
  r.stop.max_tokens = max_tokens;
  r.stop.use_model_eos = false;
  r.on_event = [out](const GenerateEvent& ev) {
    if (ev.kind == GenerateEvent::Kind::kToken) out->tokens.push_back(ev.token);
    if (ev.kind == GenerateEvent::Kind::kFinished) {
      out->usage = ev.usage;
      out->reason = ev.finish_reason;
    }
  };
  return r;
}

// Random ids among the tokenizer's byte tokens.
inline std::vector<int32_t> RandomTokens(std::mt19937_64& rng, int n, int32_t vocab = 256) {
  std::vector<int32_t> t(n);
  for (int32_t& x : t) x = static_cast<int32_t>(rng() % vocab);
  return t;
}

// A session's next prompt: the last prompt, the reply to it, then the user's new message.
inline std::vector<int32_t> NextTurn(const std::vector<int32_t>& prompt,
                                     const std::vector<int32_t>& reply,
                                     const std::vector<int32_t>& user) {
  std::vector<int32_t> next = prompt;
  next.insert(next.end(), reply.begin(), reply.end());
  next.insert(next.end(), user.begin(), user.end());
  return next;
}

// One sequence's part of a hand-built step: tokens [start, end) of `tokens`, whose KV
// lives in `blocks` (logical block i -> physical blocks[i]).
struct SeqRun {
  const std::vector<int32_t>* tokens;
  const std::vector<int32_t>* blocks;
  int32_t start;
  int32_t end;
};

// A ForwardBatch for the runs, logits requested for every token (all_rows) or only for
// each run's last token.
inline ForwardBatch MakeBatch(const std::vector<SeqRun>& runs, int32_t block_size, bool all_rows) {
  ForwardBatch b;
  b.q_start.push_back(0);
  for (const SeqRun& r : runs) {
    b.max_blocks_per_seq = std::max<int32_t>(b.max_blocks_per_seq, r.blocks->size());
  }
  for (const SeqRun& r : runs) {
    for (int32_t p = r.start; p < r.end; ++p) {
      if (all_rows) b.logit_rows.push_back(static_cast<int32_t>(b.token_ids.size()));
      b.token_ids.push_back((*r.tokens)[p]);
      b.positions.push_back(p);
      b.slot_mapping.push_back((*r.blocks)[p / block_size] * block_size + p % block_size);
    }
    if (!all_rows) b.logit_rows.push_back(static_cast<int32_t>(b.token_ids.size()) - 1);
    b.q_start.push_back(static_cast<int32_t>(b.token_ids.size()));
    b.kv_len.push_back(r.end);
    std::vector<int32_t> row(*r.blocks);
    row.resize(b.max_blocks_per_seq, 0);
    b.block_tables.insert(b.block_tables.end(), row.begin(), row.end());
  }
  return b;
}

// Runs a batch and returns its logits, failing the test on error.
inline std::vector<float> RunBatch(Backend* backend, const ForwardBatch& batch) {
  std::vector<float> logits;
  Status st = backend->Forward(batch, &logits);
  EXPECT_TRUE(st.ok()) << st.ToString();
  return logits;
}

// max |a - b| / max(1, max |b|): relative to the reference's scale.
inline double RelDiff(const std::vector<float>& a, const std::vector<float>& b) {
  if (a.size() != b.size()) return INFINITY;
  double diff = 0, scale = 1;
  for (size_t i = 0; i < a.size(); ++i) {
    diff = std::max(diff, std::abs(double{a[i]} - b[i]));
    scale = std::max(scale, std::abs(double{b[i]}));
  }
  return diff / scale;
}

// Sequential block ids [first, first + n).
inline std::vector<int32_t> Iota(int32_t n, int32_t first = 0) {
  std::vector<int32_t> v(n);
  for (int32_t i = 0; i < n; ++i) v[i] = first + i;
  return v;
}

}  // namespace kvkeep::enginetest
