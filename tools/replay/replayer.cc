#include "tools/replay/replayer.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <mutex>
#include <nlohmann/json.hpp>
#include <thread>

#include "tools/replay/accounting.h"
#include "tools/replay/daemon_client.h"
#include "tools/replay/timing_model.h"

namespace kvkeep::replay {
namespace {

using nlohmann::json;
using SteadyClock = std::chrono::steady_clock;

void SleepSeconds(double s) {
  if (s > 0) std::this_thread::sleep_for(std::chrono::duration<double>(s));
}

int64_t IntField(const json& j, const char* key) {
  auto it = j.find(key);
  return it != j.end() && it->is_number() ? it->get<int64_t>() : 0;
}
double NumField(const json& j, const char* key) {
  auto it = j.find(key);
  return it != j.end() && it->is_number() ? it->get<double>() : 0.0;
}

class Run {
 public:
  Run(const std::vector<Session>& trace, const ReplayOptions& o) : trace_(trace), o_(o) {}

  Result<ReplayResult> Execute() {
    ASSIGN_OR_RETURN(auto hello_conn, client::DaemonClient::Connect(o_.socket_path));
    ASSIGN_OR_RETURN(json hello, hello_conn->Call("hello"));
    if (hello.contains("limits"))
      max_tokens_ = std::max<int64_t>(1, IntField(hello["limits"], "max_tokens"));
    max_context_ = o_.max_prompt_tokens;
    if (hello.contains("model")) {
      int64_t vocab = IntField(hello["model"], "vocab_size");
      if (vocab > 0) num_ordinary_ = static_cast<int32_t>(std::min<int64_t>(vocab, 256));
      // Sessions end at the model's context rather than fail on it.
      int64_t model_max = IntField(hello["model"], "max_context_tokens");
      if (model_max > 0) {
        max_context_ = max_context_ > 0 ? std::min(max_context_, model_max) : model_max;
      }
    }
    ComputeArrivals();
    t0_ = SteadyClock::now();
    std::thread monitor([this] { Monitor(); });
    std::vector<std::thread> agents;
    for (int a = 0; a < std::max(1, o_.agents); ++a) agents.emplace_back([this] { Agent(); });
    for (auto& t : agents) t.join();
    finished_ = true;
    monitor.join();
    result_.wall_s = Since();
    result_.max_context_tokens = max_context_;
    return std::move(result_);
  }

 private:
  double Since() const { return std::chrono::duration<double>(SteadyClock::now() - t0_).count(); }
  bool PastDeadline() const { return o_.deadline_s > 0 && Since() >= o_.deadline_s; }
  // Waits s seconds, or until the deadline if that comes first.
  void Sleep(double s) const {
    SleepSeconds(o_.deadline_s > 0 ? std::min(s, o_.deadline_s - Since()) : s);
  }

  void ComputeArrivals() {
    arrivals_.resize(trace_.size());
    double t = 0;
    for (size_t i = 0; i < trace_.size(); ++i) {
      switch (o_.arrivals) {
        case ArrivalMode::kRecorded:
          arrivals_[i] = trace_[i].arrival_s * o_.time_scale;
          break;
        case ArrivalMode::kPoisson:
          if (i > 0) t += -std::log(DrawUniform01(MixKey(o_.seed, i))) / o_.rate_per_s;
          arrivals_[i] = t;
          break;
        case ArrivalMode::kTimestamps: {
          const auto& ts = o_.arrival_times_s;
          double base = ts.empty() ? 0 : ts.front();
          double span = ts.empty() ? 0 : ts.back() - base;
          size_t cycle = ts.empty() ? 0 : i / ts.size();
          arrivals_[i] = ts.empty() ? 0 : (ts[i % ts.size()] - base + cycle * span) * o_.time_scale;
          break;
        }
      }
    }
  }

  void Agent() {
    Result<std::unique_ptr<client::DaemonClient>> conn =
        client::DaemonClient::Connect(o_.socket_path);
    for (size_t i; (i = next_.fetch_add(1)) < trace_.size();) {
      Sleep(arrivals_[i] - Since());
      SessionRecord rec;
      std::vector<TurnRecord> turns;
      if (PastDeadline()) {
        rec.policy = o_.policy;
        rec.session = DaemonSessionId(i, trace_[i].id);
        rec.arrival_s = arrivals_[i];
        rec.error = "deadline_exceeded: not started before --deadline-s";
      } else if (!conn.ok()) {
        rec.error = conn.status().ToString();
      } else {
        Status st = ReplaySession(**conn, i, &rec, &turns);
        if (!st.ok()) rec.error = st.ToString();
        if (!st.ok() && st.code() == StatusCode::kUnavailable) {
          conn = client::DaemonClient::Connect(o_.socket_path);  // the connection broke
        }
      }
      std::lock_guard<std::mutex> lock(mu_);
      result_.sessions.push_back(std::move(rec));
      for (auto& t : turns) result_.turns.push_back(std::move(t));
      ++done_sessions_;
    }
  }

  Status ReplaySession(client::DaemonClient& c, size_t index, SessionRecord* rec,
                       std::vector<TurnRecord>* turns) {
    const Session& s = trace_[index];
    const std::string id = DaemonSessionId(index, s.id);
    rec->policy = o_.policy;
    rec->session = id;
    rec->arrival_s = arrivals_[index];
    const double start = Since();
    int64_t context = 0;      // tokens in the daemon's session so far
    int64_t after_reply = 0;  // the session's tokens after the previous reply
    // Room left before the context limit, less a margin for the chat template's role
    // markers around each message.
    constexpr int64_t kTemplateMargin = 64;
    auto budget = [&]() -> int64_t {
      return max_context_ > 0 ? max_context_ - context - kTemplateMargin : INT64_MAX;
    };
    // With --max-prompt-tokens each message is clipped to an eighth of it (or to
    // --max-message-tokens), so a session cut short still has several turns rather than
    // one huge first message.
    const int64_t message_cap =
        o_.max_message_tokens > 0 ? o_.max_message_tokens : max_context_ / 8;
    auto clip = [&]() -> int64_t {
      return o_.max_prompt_tokens > 0 ? std::min(budget(), message_cap) : budget();
    };
    // Until the first model turn, a message leaves room for that turn (a quarter of the
    // context at most), so a session whose first prompt exceeds the context still runs.
    const int64_t turn_reserve = max_context_ > 0 ? std::min(max_tokens_, max_context_ / 4) : 0;
    auto room = [&]() -> int64_t {
      if (rec->turns > 0) return clip();
      return std::min(clip(), std::max<int64_t>(0, budget() - turn_reserve));
    };
    auto clip_text = [&](const std::string& text) {
      std::string out = ClipUtf8(text, room());
      rec->clipped = rec->clipped || out.size() < text.size();
      return out;
    };

    json open = {{"session", id}};
    size_t first = 0;
    if (!s.events.empty() && s.events[0].type == EventType::kSystem) {
      open["system"] = clip_text(s.events[0].text);
      first = 1;
    }
    ASSIGN_OR_RETURN(json opened, c.Call("session.open", open));
    context = IntField(opened, "num_tokens");

    std::string waited_tool;
    double waited_s = 0;
    Status st;
    for (size_t k = first; k < s.events.size() && st.ok(); ++k) {
      const Event& e = s.events[k];
      if (PastDeadline()) {
        st = Status::DeadlineExceeded("cut at --deadline-s after " + std::to_string(rec->turns) +
                                      " turns");
        break;
      }
      if (budget() <= 0) {
        rec->clipped = true;  // stopped at the context limit
        break;
      }
      switch (e.type) {
        case EventType::kSystem:
        case EventType::kUser: {
          json msg = {{"role", e.type == EventType::kUser ? "user" : "system"}};
          if (e.tokens) {
            std::vector<int32_t> ids = SyntheticTokenIds(*e.tokens, num_ordinary_);
            if (static_cast<int64_t>(ids.size()) > room()) {
              ids.resize(static_cast<size_t>(room()));
              rec->clipped = true;
            }
            msg["tokens"] = ids;
          } else {
            msg["content"] = clip_text(e.text);
          }
          Result<json> r = c.Call("session.append", {{"session", id}, {"messages", {msg}}});
          if (r.ok()) context = IntField(*r, "num_tokens");
          st = r.status();
          break;
        }
        case EventType::kModel: {
          if (o_.max_turns > 0 && rec->turns >= o_.max_turns) {
            k = s.events.size();
            break;
          }
          json req = {{"session", id}};
          int64_t cap = std::min<int64_t>(max_tokens_, clip());
          if (cap < 1) {
            rec->clipped = true;
            k = s.events.size();
            break;
          }
          if (e.tokens) {
            std::vector<int32_t> ids = SyntheticTokenIds(*e.tokens, num_ordinary_);
            if (static_cast<int64_t>(ids.size()) > cap) ids.resize(cap);
            if (!ids.empty()) req["forced_tokens"] = ids;
          } else {
            std::string forced = ClipUtf8(ForcedText(e), cap);
            if (!forced.empty()) req["forced"] = forced;
          }
          if (!req.contains("forced") && !req.contains("forced_tokens")) {
            req["max_tokens"] = std::clamp<int64_t>(e.completion_tokens.value_or(16), 1, cap);
          } else {
            req["max_tokens"] = max_tokens_;
          }
          TurnRecord t;
          t.policy = o_.policy;
          t.session = id;
          t.turn = rec->turns;
          t.start_s = Since();
          t.tool = waited_tool;
          t.tool_wait_s = waited_s;
          auto sent = SteadyClock::now();
          Result<json> r = c.Call("session.generate", req);
          t.latency_ms =
              std::chrono::duration<double, std::milli>(SteadyClock::now() - sent).count();
          st = r.status();
          if (!r.ok()) break;
          const json usage = r->value("usage", json::object());
          t.prompt_tokens = IntField(usage, "prompt_tokens");
          t.cached_tokens = IntField(usage, "cached_tokens");
          t.recomputed_tokens = IntField(usage, "recomputed_tokens");
          t.generated_tokens = IntField(usage, "generated_tokens");
          t.ttft_ms = NumField(usage, "ttft_ms");
          t.decode_ms = NumField(usage, "decode_ms");
          if (usage.contains("cached_by_tier") && usage["cached_by_tier"].is_object()) {
            t.cached_device = IntField(usage["cached_by_tier"], "device");
            t.cached_host = IntField(usage["cached_by_tier"], "host");
            t.cached_disk = IntField(usage["cached_by_tier"], "disk");
          } else {
            t.cached_device = t.cached_tokens;
          }
          if (const auto ep = r->find("episode"); ep != r->end() && ep->is_object()) {
            const auto e = ep->find("episode");  // null: over budget, nothing clustered yet
            t.episode = e != ep->end() && e->is_number() ? e->get<int>() : -1;
            if ((*ep)["served_by"].is_string()) t.episode_served_by = (*ep)["served_by"];
          }
          const TurnTokens split = AccountTurn(usage, context, after_reply);
          t.context_tokens = split.context_tokens;
          t.first_prefill_tokens = split.first_prefill_tokens;
          t.reprefill_tokens = split.reprefill_tokens;
          context = IntField(*r, "num_tokens");
          after_reply = context;
          turns->push_back(std::move(t));
          rec->turns++;
          ++done_turns_;
          waited_tool.clear();
          waited_s = 0;
          // The last turn under --max-turns ends the session: no later turn reads the
          // result of the tool it called, so the tool's wait is not replayed.
          if (o_.max_turns > 0 && rec->turns >= o_.max_turns) k = s.events.size();
          break;
        }
        case EventType::kToolBegin: {
          Result<json> r = c.Call("session.tool_begin",
                                  {{"session", id}, {"tool", e.tool}, {"args", e.command}});
          st = r.status();
          break;
        }
        case EventType::kToolEnd: {
          double wait = e.duration_s * o_.time_scale;
          Sleep(wait);
          waited_tool = e.tool;
          waited_s += wait;
          json req = {{"session", id}, {"tool", e.tool}, {"content", clip_text(e.text)}};
          if (!e.call_id.empty()) req["tool_call_id"] = e.call_id;
          Result<json> r = c.Call("session.tool_end", req);
          if (r.ok()) context = IntField(*r, "num_tokens");
          st = r.status();
          break;
        }
        case EventType::kThink:
          Sleep(e.duration_s * o_.time_scale);
          break;
      }
    }
    rec->jct_s = Since() - start;
    // Close even after an error, so the daemon's per-uid session limit is not exhausted.
    Status closed = c.Call("session.close", {{"session", id}, {"keep", false}}).status();
    return st.ok() ? closed : st;
  }

  void Monitor() {
    auto conn = client::DaemonClient::Connect(o_.socket_path);
    auto last_progress = SteadyClock::now();
    for (bool last = false; !last;) {
      last = finished_;  // one more sample after the sessions end: the final pin counters
      if (conn.ok()) {
        Result<json> stats = (*conn)->Call("stats");
        if (stats.ok()) {
          OccupancySample sample;
          sample.t_s = Since();
          json pool = json::object();
          if (stats->contains("pools") && (*stats)["pools"].contains("device")) {
            pool = (*stats)["pools"]["device"];
          }
          sample.blocks_total = IntField(pool, "blocks_total");
          sample.blocks_used = IntField(pool, "blocks_used");
          sample.blocks_cached = IntField(pool, "blocks_cached");
          sample.blocks_pinned = IntField(pool, "blocks_pinned");
          const json pins = stats->contains("pins") ? (*stats)["pins"] : json::object();
          sample.pins_granted = IntField(pins, "granted");
          sample.pins_used = IntField(pins, "used");
          sample.pins_expired = IntField(pins, "expired");
          sample.pins_violated = IntField(pins, "violated");
          std::lock_guard<std::mutex> lock(mu_);
          result_.occupancy.push_back(sample);
        }
      }
      if (o_.on_progress && SteadyClock::now() - last_progress > std::chrono::seconds(1)) {
        last_progress = SteadyClock::now();
        char line[256];
        std::snprintf(line, sizeof(line), "[%s] sessions %d/%zu done, %d model turns, %.1f s",
                      o_.policy.c_str(), done_sessions_.load(), trace_.size(), done_turns_.load(),
                      Since());
        o_.on_progress(line);
      }
      if (!last) std::this_thread::sleep_for(std::chrono::milliseconds(std::max(10, o_.sample_ms)));
    }
  }

  const std::vector<Session>& trace_;
  const ReplayOptions& o_;
  std::vector<double> arrivals_;
  SteadyClock::time_point t0_;
  int64_t max_tokens_ = 4096;
  int64_t max_context_ = 0;  // min(--max-prompt-tokens, the model's context); 0: unknown
  int32_t num_ordinary_ = 256;
  std::atomic<size_t> next_{0};
  std::atomic<int> done_sessions_{0};
  std::atomic<int> done_turns_{0};
  std::atomic<bool> finished_{false};
  std::mutex mu_;
  ReplayResult result_;
};

}  // namespace

// A model turn's recorded output as text: the assistant text, then each tool call.
std::string ForcedText(const Event& e) {
  std::string text = e.text;
  for (const ToolCall& c : e.tool_calls) {
    json args = json::parse(c.arguments, nullptr, false);
    json call = {{"name", c.name}, {"arguments", args.is_discarded() ? json(c.arguments) : args}};
    text += "\n<tool_call>\n" + call.dump(-1, ' ', false, json::error_handler_t::replace) +
            "\n</tool_call>";
  }
  return text;
}

// Cuts text to at most max_bytes without splitting a UTF-8 sequence. Every token of a
// byte-level tokenizer covers at least one byte, so max_bytes bounds the token count.
std::string ClipUtf8(std::string text, int64_t max_bytes) {
  if (max_bytes < 0 || static_cast<int64_t>(text.size()) <= max_bytes) return text;
  size_t n = static_cast<size_t>(max_bytes);
  while (n > 0 && (static_cast<unsigned char>(text[n]) & 0xC0) == 0x80) --n;
  text.resize(n);
  return text;
}

std::string DaemonSessionId(size_t index, const std::string& trace_id) {
  std::string id = "r" + std::to_string(index) + "-";
  for (char c : trace_id) {
    bool ok =
        std::isalnum(static_cast<unsigned char>(c)) || c == '.' || c == '_' || c == ':' || c == '-';
    id += ok ? c : '_';
  }
  if (id.size() > 128) id.resize(128);
  return id;
}

Result<ReplayResult> RunReplay(const std::vector<Session>& trace, const ReplayOptions& options) {
  if (trace.empty()) return Status::InvalidArgument("the trace has no sessions");
  if (options.arrivals == ArrivalMode::kPoisson && options.rate_per_s <= 0) {
    return Status::InvalidArgument("--rate must be positive for Poisson arrivals");
  }
  Run run(trace, options);
  return run.Execute();
}

}  // namespace kvkeep::replay
