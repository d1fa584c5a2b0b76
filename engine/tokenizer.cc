// LoadTokenizer (dispatch on the tokenizer.json model type) and StreamDecoder.
#include "engine/tokenizer.h"

#include <nlohmann/json.hpp>

#include "engine/bpe_model.h"
#include "engine/gguf_file.h"
#include "engine/gguf_model.h"
#include "engine/tokenizer_unicode.h"
#include "engine/wordpiece_model.h"

namespace kvkeep {

Result<std::unique_ptr<Tokenizer>> LoadTokenizer(Env* env, const std::string& path) {
  if (IsGgufPath(path)) {
    ASSIGN_OR_RETURN(std::unique_ptr<GgufFile> file, GgufFile::Open(env, path));
    ASSIGN_OR_RETURN(nlohmann::json root, GgufTokenizerJson(*file));
    Result<std::unique_ptr<Tokenizer>> result = LoadBpeTokenizer(root);
    if (!result.ok()) return result.status().WithContext(path + " (GGUF tokenizer)");
    return result;
  }
  std::string file = path;
  if (file.size() < 5 || file.compare(file.size() - 5, 5, ".json") != 0) {
    file = JoinPath(path, "tokenizer.json");
  }
  ASSIGN_OR_RETURN(std::string text, env->ReadFile(file));
  try {
    nlohmann::json root = nlohmann::json::parse(text);
    const nlohmann::json& model = root.at("model");
    // Older files omit model.type; a BPE model is recognised by its merges.
    std::string type = model.value("type", model.contains("merges") ? "BPE" : "");
    Result<std::unique_ptr<Tokenizer>> result =
        Status::NotSupported("tokenizer model '" + type + "'");
    if (type == "BPE") {
      result = LoadBpeTokenizer(root);
    } else if (type == "WordPiece") {
      result = LoadWordPieceTokenizer(root);
    }
    if (!result.ok()) return result.status().WithContext(file);
    return result;
  } catch (const nlohmann::json::exception& e) {
    return Status::InvalidArgument(file + ": malformed tokenizer.json: " + e.what());
  }
}

std::string StreamDecoder::Push(int32_t id) {
  pending_ += tokenizer_->Decode({id}, /*skip_special=*/false);
  size_t hold = unicode::IncompleteUtf8Tail(pending_);
  std::string out = pending_.substr(0, pending_.size() - hold);
  pending_.erase(0, pending_.size() - hold);
  return out;
}

std::string StreamDecoder::Flush() {
  std::string out;
  out.swap(pending_);
  return out;
}

}  // namespace kvkeep
