// Served token counts: how many tokens each event of a canonical trace adds to a kvkeepd
// session when `kvkeep replay run` replays it against a daemon serving a given model, so
// the policy simulator (bench/policy_bench --model) counts what the real run counts.
//
// It walks each session as the replayer does (tools/replay/replayer.cc): the system
// prompt at session.open, user messages appended, each tool result a `tool` message named
// after its tool, each model turn the generation prompt plus the forced output (text
// encoded without special tokens) and the tokens closing the turn. Every message is
// rendered with the model's chat template against the session's history, exactly as the
// daemon's TurnRenderer does; text is clipped to the room left under the context limit
// with the replayer's rules, and the walk stops where the replayer would. The token ids
// come with the counts, so the simulator's sessions share prefixes as the daemon's do.
//
// Thread-safety: ServedTokenCounter is immutable after Create; Count is const and safe to
// call concurrently.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "base/file.h"
#include "base/status.h"
#include "daemon/turn_renderer.h"
#include "engine/tokenizer.h"
#include "tools/replay/agent_workload.h"
#include "tools/replay/trace.h"

namespace kvkeep::sim {

struct ServedTokenOptions {
  // The daemon's limits as its `hello` reports them: max_context_tokens (0: none) and
  // limits.max_tokens; the replayer clips messages and outputs to them.
  int64_t max_context_tokens = 0;
  int64_t max_tokens = 4096;
  int max_turns = 0;  // model turns per session, as `replay run --max-turns`; 0: all
};

class ServedTokenCounter {
 public:
  // Loads the tokenizer and chat template of model_dir (kvkeepd's --model).
  static Result<std::unique_ptr<ServedTokenCounter>> Create(Env* env, const std::string& model_dir);

  // One entry per event of `session` (replay::WorkloadOptions::served_tokens).
  Result<std::vector<replay::ServedEventTokens>> Count(const replay::Session& session,
                                                       const ServedTokenOptions& options) const;
  // Every session of a trace.
  Result<std::vector<std::vector<replay::ServedEventTokens>>> CountAll(
      const std::vector<replay::Session>& sessions, const ServedTokenOptions& options) const;

 private:
  ServedTokenCounter(std::unique_ptr<Tokenizer> tokenizer, std::unique_ptr<TurnRenderer> renderer)
      : tokenizer_(std::move(tokenizer)), renderer_(std::move(renderer)) {}

  std::unique_ptr<Tokenizer> tokenizer_;
  std::unique_ptr<TurnRenderer> renderer_;  // uses tokenizer_
};

}  // namespace kvkeep::sim
