// CostModel and timing samples as JSON files (the state directory's cost_model.json).
#include <cmath>
#include <nlohmann/json.hpp>

#include "policy/cost_model.h"

namespace kvkeep {
namespace {

using nlohmann::json;

Result<json> ParseFile(Env* env, const std::string& path) {
  ASSIGN_OR_RETURN(std::string text, env->ReadFile(path));
  json doc = json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (doc.is_discarded() || !doc.is_object()) {
    return Status::Corruption(path + ": not a JSON object");
  }
  return doc;
}

Result<double> Number(const json& doc, const char* key, const std::string& path, bool required) {
  if (!doc.contains(key)) {
    if (required) return Status::Corruption(path + ": '" + key + "' is missing");
    return 0.0;
  }
  if (!doc[key].is_number()) return Status::Corruption(path + ": '" + key + "' is not a number");
  const double v = doc[key].get<double>();
  if (!std::isfinite(v) || v < 0) {
    return Status::Corruption(path + ": '" + key + "' must be finite and >= 0");
  }
  return v;
}

}  // namespace

Status SaveCostModel(Env* env, const std::string& path, const CostModel& m) {
  json doc = {{"version", 1},
              {"prefill_per_token_s", m.prefill_per_token_s},
              {"prefill_attention_s", m.prefill_attention_s},
              {"decode_fixed_s", m.decode_fixed_s},
              {"decode_per_context_token_s", m.decode_per_context_token_s},
              {"decode_per_sequence_s", m.decode_per_sequence_s},
              {"mixed_decode_extra_per_context_token_s", m.mixed_decode_extra_per_context_token_s},
              {"host_to_device_bytes_per_s", m.host_to_device_bytes_per_s},
              {"disk_to_device_bytes_per_s", m.disk_to_device_bytes_per_s},
              {"host_duplex_share", m.host_duplex_share},
              {"kv_bytes_per_token", m.kv_bytes_per_token},
              {"source", m.source}};
  return env->WriteFileAtomic(path, doc.dump(2) + "\n");
}

Result<CostModel> LoadCostModel(Env* env, const std::string& path) {
  ASSIGN_OR_RETURN(json doc, ParseFile(env, path));
  if (doc.value("version", 0) != 1) return Status::Corruption(path + ": unknown version");
  CostModel m;
  ASSIGN_OR_RETURN(m.prefill_per_token_s, Number(doc, "prefill_per_token_s", path, true));
  ASSIGN_OR_RETURN(m.prefill_attention_s, Number(doc, "prefill_attention_s", path, true));
  ASSIGN_OR_RETURN(m.decode_fixed_s, Number(doc, "decode_fixed_s", path, true));
  ASSIGN_OR_RETURN(m.decode_per_context_token_s,
                   Number(doc, "decode_per_context_token_s", path, true));
  // Added after version 1 files were written: optional, 0 when absent.
  ASSIGN_OR_RETURN(m.decode_per_sequence_s, Number(doc, "decode_per_sequence_s", path, false));
  ASSIGN_OR_RETURN(m.mixed_decode_extra_per_context_token_s,
                   Number(doc, "mixed_decode_extra_per_context_token_s", path, false));
  ASSIGN_OR_RETURN(m.host_to_device_bytes_per_s,
                   Number(doc, "host_to_device_bytes_per_s", path, false));
  ASSIGN_OR_RETURN(m.disk_to_device_bytes_per_s,
                   Number(doc, "disk_to_device_bytes_per_s", path, false));
  ASSIGN_OR_RETURN(m.host_duplex_share, Number(doc, "host_duplex_share", path, false));
  ASSIGN_OR_RETURN(double kv, Number(doc, "kv_bytes_per_token", path, true));
  m.kv_bytes_per_token = static_cast<int64_t>(kv);
  if (doc.contains("source") && doc["source"].is_string()) m.source = doc["source"];
  return m;
}

Result<std::pair<std::vector<TimingSample>, CostModel>> LoadTimingSamples(Env* env,
                                                                          const std::string& path) {
  ASSIGN_OR_RETURN(json doc, ParseFile(env, path));
  CostModel base;
  ASSIGN_OR_RETURN(double kv, Number(doc, "kv_bytes_per_token", path, true));
  base.kv_bytes_per_token = static_cast<int64_t>(kv);
  ASSIGN_OR_RETURN(base.host_to_device_bytes_per_s,
                   Number(doc, "host_to_device_bytes_per_s", path, false));
  ASSIGN_OR_RETURN(base.disk_to_device_bytes_per_s,
                   Number(doc, "disk_to_device_bytes_per_s", path, false));
  base.source = doc.value("source", path);
  if (!doc.contains("samples") || !doc["samples"].is_array()) {
    return Status::Corruption(path + ": 'samples' is not an array");
  }
  std::vector<TimingSample> samples;
  for (size_t i = 0; i < doc["samples"].size(); ++i) {
    const json& s = doc["samples"][i];
    const std::string where = path + ": samples[" + std::to_string(i) + "]";
    if (!s.is_object()) return Status::Corruption(where + " is not an object");
    TimingSample t;
    const std::string kind = s.value("kind", "");
    if (kind == "prefill") {
      t.kind = TimingSample::Kind::kPrefill;
    } else if (kind == "prefill_attention") {
      t.kind = TimingSample::Kind::kPrefillAttention;
    } else if (kind == "decode") {
      t.kind = TimingSample::Kind::kDecode;
    } else if (kind == "decode_attention") {
      t.kind = TimingSample::Kind::kDecodeAttention;
    } else if (kind == "mixed") {
      t.kind = TimingSample::Kind::kMixedStep;
    } else {
      return Status::Corruption(where + ": unknown kind '" + kind + "'");
    }
    ASSIGN_OR_RETURN(double n, Number(s, "new_tokens", where, false));
    ASSIGN_OR_RETURN(double c, Number(s, "cached_tokens", where, false));
    ASSIGN_OR_RETURN(double ctx, Number(s, "context_tokens", where, false));
    ASSIGN_OR_RETURN(double seqs, Number(s, "sequences", where, false));
    ASSIGN_OR_RETURN(t.seconds, Number(s, "seconds", where, true));
    t.new_tokens = static_cast<int64_t>(n);
    t.cached_tokens = static_cast<int64_t>(c);
    t.context_tokens = static_cast<int64_t>(ctx);
    t.sequences = static_cast<int64_t>(seqs);
    t.note = s.value("note", "");
    samples.push_back(std::move(t));
  }
  return std::make_pair(std::move(samples), base);
}

}  // namespace kvkeep
