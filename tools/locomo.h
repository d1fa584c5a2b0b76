// LoCoMo conversations (snap-research/LoCoMo's locomo10.json format), as the episode
// evaluation reads them:
//   [{"sample_id", "conversation": {"session_N": [{"speaker", "dia_id", "text",
//     "blip_caption"?}], "session_N_date_time": "..."}, "qa": [{"question", "answer"?,
//     "evidence": ["D1:3", ...], "category"}]}]
// Sessions are taken in numeric order; an image's caption is appended to its turn's text
// as "[image: caption]". Evidence ids are parsed defensively ("D8:6; D9:17" is two ids).
#pragma once

#include <map>
#include <string>
#include <vector>

#include "base/status.h"
#include "index/segmenter.h"

namespace kvkeep::tools {

struct LocomoQuestion {
  std::string question;
  int32_t category = 0;
  std::vector<std::string> evidence;  // dia ids
  std::string answer;                 // the gold answer (numbers as text); may be empty
};

struct LocomoConversation {
  std::string sample_id;
  std::vector<index::Message> turns;  // group = session number, date = its date
  std::map<std::string, int32_t> turn_of_dia_id;
  std::vector<LocomoQuestion> questions;
};

// Parses a LoCoMo JSON file's text. InvalidArgument (naming the conversation) when the
// shape is wrong.
Result<std::vector<LocomoConversation>> ParseLocomo(const std::string& json_text);

}  // namespace kvkeep::tools
