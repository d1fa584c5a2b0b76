// Importers for request workloads that carry lengths but no text: Mooncake and BurstGPT.
// Content becomes SyntheticTokens (see trace.h), so equal Mooncake hash ids give equal
// token blocks and prefix reuse in the replay is real.
#include <cmath>
#include <map>
#include <sstream>

#include "base/file.h"
#include "tools/replay/import_common.h"

namespace kvkeep::replay {

using internal::BaseName;
using internal::json;

namespace {

constexpr int32_t kMooncakeBlockTokens = 512;

// Seeds of synthetic content: one shared seed for a format's blocks (so equal ids match
// across sessions), and per-session seeds for unshared content.
uint64_t ContentSeed(const ImportOptions& options, std::string_view what) {
  return MixKey(options.seed, HashString(what));
}

Event TokensEvent(EventType type, SyntheticTokens tokens) {
  Event e;
  e.type = type;
  e.tokens = std::move(tokens);
  return e;
}

Event ModelEvent(int64_t completion_tokens, uint64_t seed, double duration_s, Timing timing) {
  Event e = TokensEvent(EventType::kModel, SyntheticTokens{completion_tokens, 0, {}, seed});
  e.completion_tokens = completion_tokens;
  e.duration_s = duration_s;
  e.timing = timing;
  return e;
}

void Skip(ImportReport* report, const std::string& path, int lineno, std::string_view what) {
  report->skipped++;
  report->errors.push_back(path + ":" + std::to_string(lineno) + ": " + std::string(what));
}

std::vector<std::string> SplitCsvLine(std::string_view line) {
  std::vector<std::string> out;
  std::string cur;
  bool quoted = false;
  for (char c : line) {
    if (c == '"') {
      quoted = !quoted;
    } else if (c == ',' && !quoted) {
      out.push_back(std::move(cur));
      cur.clear();
    } else if (c != '\r') {
      cur += c;
    }
  }
  out.push_back(std::move(cur));
  return out;
}

// A finite number in [0, max].
bool ParseNumber(const std::string& s, double* out, double max = HUGE_VAL) {
  char* end = nullptr;
  *out = std::strtod(s.c_str(), &end);
  return !s.empty() && end != s.c_str() && *end == '\0' && std::isfinite(*out) && *out >= 0 &&
         *out <= max;
}

}  // namespace

Status ImportMooncake(const std::string& path, const ImportOptions& options,
                      std::vector<Session>* out, ImportReport* report) {
  ASSIGN_OR_RETURN(std::string text, DefaultEnv()->ReadFile(path));
  const uint64_t block_seed = ContentSeed(options, "mooncake-blocks");
  std::istringstream in(text);
  std::string line;
  for (int lineno = 1; std::getline(in, line); ++lineno) {
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    json r = json::parse(line, nullptr, false);
    if (r.is_discarded() || !r.is_object()) {
      Skip(report, path, lineno, "not a JSON object");
      continue;
    }
    auto ts = internal::NumberOf(r, "timestamp");
    bool ints = r.contains("input_length") && r["input_length"].is_number_integer() &&
                r.contains("output_length") && r["output_length"].is_number_integer();
    if (!ts || !ints || !r.contains("hash_ids") || !r["hash_ids"].is_array()) {
      Skip(report, path, lineno,
           "need timestamp (ms), integer input_length and output_length, and hash_ids");
      continue;
    }
    int64_t input = r["input_length"], output = r["output_length"];
    std::vector<int64_t> ids;
    bool ok = input > 0 && input <= internal::kMaxImportedTokens && output >= 0 &&
              output <= internal::kMaxImportedTokens;
    for (const json& id : r["hash_ids"]) {
      ok = ok && id.is_number_integer();
      if (ok) ids.push_back(id.get<int64_t>());
    }
    // The block count only once input is known to be in range (no overflow).
    if (!ok || static_cast<int64_t>(ids.size()) !=
                   (input + kMooncakeBlockTokens - 1) / kMooncakeBlockTokens) {
      Skip(report, path, lineno,
           "input_length must be 1..2^40, output_length 0..2^40, and hash_ids integers, "
           "one per 512-token block of input_length");
      continue;
    }
    Session s;
    s.id = "mooncake-" + std::to_string(lineno);
    s.source = "mooncake";
    s.source_file = BaseName(path) + ":" + std::to_string(lineno);
    s.arrival_s = *ts / 1000.0;
    s.events.push_back(TokensEvent(EventType::kUser, SyntheticTokens{input, kMooncakeBlockTokens,
                                                                     std::move(ids), block_seed}));
    s.events.push_back(ModelEvent(output, ContentSeed(options, s.id), 0, Timing::kNone));
    out->push_back(std::move(s));
  }
  return Status::OK();
}

Status ImportBurstGpt(const std::string& path, const ImportOptions& options,
                      std::vector<Session>* out, ImportReport* report) {
  ASSIGN_OR_RETURN(std::string text, DefaultEnv()->ReadFile(path));
  std::istringstream in(text);
  std::string line;
  if (!std::getline(in, line)) return Status::InvalidArgument(path + ": empty CSV");
  std::vector<std::string> header = SplitCsvLine(line);
  std::map<std::string, size_t> col;
  for (size_t i = 0; i < header.size(); ++i) col[header[i]] = i;
  for (const char* need : {"Timestamp", "Request tokens", "Response tokens"}) {
    if (!col.count(need)) {
      return Status::InvalidArgument(path + ":1: missing column '" + std::string(need) + "'");
    }
  }
  const bool has_sessions = col.count("Session ID") > 0;
  const bool has_elapsed = col.count("Elapsed time") > 0;

  struct Turn {
    double ts, elapsed;
    int64_t request, response;
  };
  std::vector<std::pair<std::string, std::vector<Turn>>> sessions;  // in first-seen order
  std::map<std::string, size_t> index;
  for (int lineno = 2; std::getline(in, line); ++lineno) {
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    std::vector<std::string> f = SplitCsvLine(line);
    if (f.size() != header.size()) {
      Skip(report, path, lineno, "expected " + std::to_string(header.size()) + " columns");
      continue;
    }
    double ts, req, resp, elapsed = 0;
    constexpr double kMaxTokens = static_cast<double>(internal::kMaxImportedTokens);
    if (!ParseNumber(f[col["Timestamp"]], &ts) ||
        !ParseNumber(f[col["Request tokens"]], &req, kMaxTokens) ||
        !ParseNumber(f[col["Response tokens"]], &resp, kMaxTokens) ||
        (has_elapsed && !ParseNumber(f[col["Elapsed time"]], &elapsed))) {
      Skip(report, path, lineno,
           "Timestamp, token counts (at most 2^40) and Elapsed time must be finite numbers >= 0");
      continue;
    }
    if (resp == 0) {
      Skip(report, path, lineno, "failed request (0 response tokens)");
      continue;
    }
    std::string sid = has_sessions ? f[col["Session ID"]] : "row-" + std::to_string(lineno);
    auto [it, fresh] = index.try_emplace(sid, sessions.size());
    if (fresh) sessions.push_back({sid, {}});
    sessions[it->second].second.push_back(
        {ts, elapsed, static_cast<int64_t>(req), static_cast<int64_t>(resp)});
  }

  // The earliest timestamp of any row (rows need not be in time order, and a later row of
  // a session may start a segment), so that every arrival_s is >= 0.
  double t0 = -1;
  for (const auto& [sid, turns] : sessions) {
    for (const Turn& t : turns) {
      if (t0 < 0 || t.ts < t0) t0 = t.ts;
    }
  }
  // Request tokens count the whole context (they grow within a session by the previous
  // reply plus the new user text). A context that shrinks means the client truncated the
  // history: that starts a new segment "<id>#k" with no reuse.
  for (const auto& entry : sessions) {
    // Plain references, not a structured binding: the lambdas below capture them.
    const std::string& sid = entry.first;
    const auto& turns = entry.second;
    Session s;
    int segment = 1;
    int64_t context = 0;
    double prev_end = 0;
    auto start_segment = [&](double arrival) {
      if (!s.events.empty()) out->push_back(std::move(s));
      s = Session();
      s.id = "burstgpt-" + sid + (segment > 1 ? "#" + std::to_string(segment) : "");
      s.source = "burstgpt";
      s.source_file = BaseName(path);
      s.arrival_s = arrival - t0;
      ++segment;
      context = 0;
    };
    start_segment(turns.front().ts);
    for (size_t k = 0; k < turns.size(); ++k) {
      const Turn& t = turns[k];
      if (k > 0 && t.request < context) start_segment(t.ts);
      if (!s.events.empty())
        s.events.push_back([&] {
          Event think;
          think.type = EventType::kThink;
          think.duration_s = std::max(0.0, t.ts - prev_end);
          think.timing = Timing::kRecorded;
          return think;
        }());
      uint64_t seed = ContentSeed(options, s.id + "/" + std::to_string(k));
      s.events.push_back(
          TokensEvent(EventType::kUser, SyntheticTokens{t.request - context, 0, {}, seed}));
      s.events.push_back(ModelEvent(t.response, MixKey(seed, 1), t.elapsed,
                                    has_elapsed ? Timing::kRecorded : Timing::kNone));
      context = t.request + t.response;
      prev_end = t.ts + t.elapsed;
    }
    if (!s.events.empty()) out->push_back(std::move(s));
  }
  return Status::OK();
}

const std::vector<std::string>& ImportFormats() {
  static const std::vector<std::string> kFormats = {"mini-swe-agent", "swe-agent", "nebius",
                                                    "openhands",      "mooncake",  "burstgpt"};
  return kFormats;
}

Status ImportFiles(const std::string& format, const std::vector<std::string>& paths,
                   const ImportOptions& options, std::vector<Session>* out, ImportReport* report) {
  const auto& formats = ImportFormats();
  if (std::find(formats.begin(), formats.end(), format) == formats.end()) {
    std::string names;
    for (const auto& f : formats) names += (names.empty() ? "" : ", ") + f;
    return Status::InvalidArgument("unknown trace format '" + format + "' (known: " + names + ")");
  }
  for (const std::string& path : paths) {
    size_t before = out->size();
    Status st;
    if (format == "mini-swe-agent") st = ImportMiniSweAgent(path, options, out);
    if (format == "swe-agent") st = ImportSweAgent(path, options, out);
    if (format == "nebius") st = ImportNebius(path, options, out);
    if (format == "openhands") st = ImportOpenHands(path, options, out, report);
    if (format == "mooncake") st = ImportMooncake(path, options, out, report);
    if (format == "burstgpt") st = ImportBurstGpt(path, options, out, report);
    report->files++;
    if (!st.ok()) {
      out->resize(before);
      report->skipped++;
      report->errors.push_back(
          st.message().find(path) == std::string::npos ? path + ": " + st.message() : st.message());
    }
  }
  report->sessions = static_cast<int>(out->size());
  return Status::OK();
}

}  // namespace kvkeep::replay
