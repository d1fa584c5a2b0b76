#include "tools/locomo.h"

#include <algorithm>
#include <cctype>

#include <nlohmann/json.hpp>

namespace kvkeep::tools {
namespace {

using nlohmann::json;

std::vector<std::string> SplitEvidence(const std::string& s) {
  std::vector<std::string> ids;
  std::string current;
  for (char c : s + ";") {
    if (c == ';' || c == ',' || std::isspace(static_cast<unsigned char>(c))) {
      if (!current.empty()) ids.push_back(current);
      current.clear();
    } else {
      current.push_back(c);
    }
  }
  return ids;
}

Result<LocomoConversation> ParseOne(const json& item, size_t position) {
  LocomoConversation conv;
  conv.sample_id = item.value("sample_id", "conversation " + std::to_string(position));
  if (!item.contains("conversation") || !item["conversation"].is_object()) {
    return Status::InvalidArgument(conv.sample_id + ": no \"conversation\" object");
  }
  const json& c = item["conversation"];
  std::vector<int32_t> sessions;
  for (const auto& [key, value] : c.items()) {
    if (key.rfind("session_", 0) != 0 || !value.is_array()) continue;
    const std::string num = key.substr(8);
    if (num.empty() || !std::all_of(num.begin(), num.end(), ::isdigit)) continue;
    sessions.push_back(std::stoi(num));
  }
  std::sort(sessions.begin(), sessions.end());
  for (int32_t s : sessions) {
    const std::string key = "session_" + std::to_string(s);
    const std::string date = c.value(key + "_date_time", "");
    for (const json& turn : c[key]) {
      if (!turn.is_object() || !turn.contains("text") || !turn["text"].is_string()) {
        return Status::InvalidArgument(conv.sample_id + ": a turn of " + key + " has no text");
      }
      index::Message m;
      m.speaker = turn.value("speaker", "");
      m.text = turn["text"].get<std::string>();
      if (turn.contains("blip_caption") && turn["blip_caption"].is_string()) {
        m.text += " [image: " + turn["blip_caption"].get<std::string>() + "]";
      }
      m.group = s;
      m.date = date;
      if (turn.contains("dia_id") && turn["dia_id"].is_string()) {
        conv.turn_of_dia_id[turn["dia_id"].get<std::string>()] =
            static_cast<int32_t>(conv.turns.size());
      }
      conv.turns.push_back(std::move(m));
    }
  }
  if (item.contains("qa") && item["qa"].is_array()) {
    for (const json& qa : item["qa"]) {
      if (!qa.is_object() || !qa.contains("question") || !qa["question"].is_string()) continue;
      LocomoQuestion q;
      q.question = qa["question"].get<std::string>();
      q.category = qa.value("category", 0);
      if (qa.contains("answer") && qa["answer"].is_string()) {
        q.answer = qa["answer"].get<std::string>();
      } else if (qa.contains("answer") && qa["answer"].is_number()) {
        q.answer = qa["answer"].dump();
      }
      if (qa.contains("evidence") && qa["evidence"].is_array()) {
        for (const json& e : qa["evidence"]) {
          if (!e.is_string()) continue;
          for (std::string& id : SplitEvidence(e.get<std::string>())) {
            q.evidence.push_back(std::move(id));
          }
        }
      }
      conv.questions.push_back(std::move(q));
    }
  }
  return conv;
}

}  // namespace

Result<std::vector<LocomoConversation>> ParseLocomo(const std::string& json_text) {
  json root = json::parse(json_text, nullptr, /*allow_exceptions=*/false);
  if (root.is_discarded()) return Status::InvalidArgument("LoCoMo file is not valid JSON");
  if (root.is_object()) root = json::array({root});
  if (!root.is_array()) return Status::InvalidArgument("LoCoMo file is not a JSON array");
  std::vector<LocomoConversation> out;
  try {
    for (size_t i = 0; i < root.size(); ++i) {
      ASSIGN_OR_RETURN(LocomoConversation conv, ParseOne(root[i], i));
      out.push_back(std::move(conv));
    }
  } catch (const json::exception& e) {
    return Status::InvalidArgument(std::string("LoCoMo file: ") + e.what());
  }
  return out;
}

}  // namespace kvkeep::tools
