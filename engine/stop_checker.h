// StopChecker: turns one request's generated tokens into streamed text and decides when
// the request ends.
//
// Per sampled token, in order:
//   1. a stop id (the model's EOS ids when use_model_eos, plus stop_token_ids) ends the
//      request with kStop; the stop token is counted and reported as a token event, but
//      its text is not emitted;
//   2. the token's text is decoded incrementally (StreamDecoder: a UTF-8 sequence split
//      across tokens is held back until complete) and searched for the stop strings. A
//      stop string may span tokens: any tail of the text that is a prefix of a stop
//      string is held back until it either completes the stop string (kStop; the text
//      before it is emitted, the stop string itself is not) or stops matching (emitted);
//   3. max_tokens generated tokens end the request with kLength.
// When a request ends, whatever text is still held back (minus a matched stop string) is
// released in the last token's text, so the concatenated text events are the full output.
//
// Forced tokens (teacher forcing) skip the stop checks: every forced token is emitted and
// the request ends after the last one with kStop.
//
// Thread-safety: not thread-safe; one per request.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "engine/engine.h"
#include "engine/tokenizer.h"

namespace kvkeep {

class StopChecker {
 public:
  // tokenizer may be null: no text is produced then and stop strings are not allowed.
  StopChecker(const StopConditions& stop, const std::vector<int32_t>& model_eos_ids,
              const Tokenizer* tokenizer);

  struct Outcome {
    std::string text;  // text this token releases (may be empty)
    FinishReason finish = FinishReason::kNone;
  };
  // num_generated counts generated tokens including this one.
  Outcome OnSampled(int32_t token, int64_t num_generated);
  Outcome OnForced(int32_t token, bool is_last);
  // Everything still held back, for a request the engine ends for another reason (e.g.
  // the context limit).
  std::string Flush();

 private:
  bool IsStopId(int32_t token) const;
  // Appends the token's text to pending_ and returns the text that can be released now;
  // sets *matched when a stop string completed (pending_ is then dropped).
  std::string PushText(int32_t token, bool check_stop_strings, bool* matched);

  StopConditions stop_;
  std::vector<int32_t> stop_ids_;
  const Tokenizer* tokenizer_;
  StreamDecoder decoder_;
  std::string pending_;  // decoded text held back as a possible stop-string prefix
};

}  // namespace kvkeep
