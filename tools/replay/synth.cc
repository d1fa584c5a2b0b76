#include "tools/replay/synth.h"

#include <algorithm>
#include <cmath>
#include <nlohmann/json.hpp>

namespace kvkeep::replay {
namespace {

constexpr const char* kSystemPrompt =
    "You are a helpful assistant that can interact with a computer shell to solve programming "
    "tasks.";

constexpr const char* kWords[] = {
    "the",    "function", "returns", "value",   "module",    "test",     "error",  "class",
    "import", "self",     "config",  "path",    "request",   "model",    "field",  "query",
    "assert", "def",      "return",  "None",    "list",      "dict",     "string", "file",
    "line",   "matrix",   "check",   "fix",     "issue",     "output",   "input",  "parser",
    "cache",  "index",    "django",  "astropy", "separable", "compound", "format", "raise"};

class Draws {
 public:
  explicit Draws(uint64_t key) : key_(key) {}
  double Uniform() { return DrawUniform01(Next()); }
  double LogNormalDraw(const LogNormal& d) { return DrawLogNormal(d, Next()); }
  uint64_t Next() { return MixKey(key_, counter_++); }

 private:
  uint64_t key_;
  uint64_t counter_ = 0;
};

// Deterministic code-ish prose of about `chars` characters.
std::string Prose(Draws& d, int chars) {
  std::string out;
  while (static_cast<int>(out.size()) < chars) {
    out += kWords[d.Next() % std::size(kWords)];
    out += (d.Next() % 11 == 0) ? ".\n" : " ";
  }
  out.resize(static_cast<size_t>(std::max(chars, 1)));
  return out;
}

std::string Command(Draws& d, const SynthOptions& o) {
  int file = static_cast<int>(d.Next() % 40);
  double u = d.Uniform();
  std::string path = "src/module_" + std::to_string(file) + ".py";
  if (u < o.p_read) {
    switch (d.Next() % 3) {
      case 0:
        return "cat " + path;
      case 1:
        return "grep -rn \"def \" src | head -40";
      default:
        return "find . -name \"*.py\" | grep module_" + std::to_string(file);
    }
  }
  if (u < o.p_read + o.p_run) {
    return d.Next() % 2 ? "python reproduce.py"
                        : "python -m pytest tests/test_" + std::to_string(file) + ".py -q";
  }
  return "sed -i 's/return None/return value/' " + path;
}

Session SynthesizeOne(const SynthOptions& o, int agent, double arrival_s) {
  Draws d(MixKey(o.seed, static_cast<uint64_t>(agent)));
  Session s;
  s.id = "synth-" + std::to_string(o.seed) + "-" + std::to_string(agent);
  s.source = "synth";
  s.arrival_s = arrival_s;
  int turns = static_cast<int>(std::lround(d.LogNormalDraw(o.turns)));
  turns = std::clamp(turns, o.min_turns, o.max_turns);

  auto push = [&s](Event e) { s.events.push_back(std::move(e)); };
  push(Event{.type = EventType::kSystem, .text = kSystemPrompt});
  push(Event{.type = EventType::kUser,
             .text = "<pr_description>\n" +
                     Prose(d, static_cast<int>(d.LogNormalDraw(o.task_chars))) +
                     "\n</pr_description>"});
  for (int t = 0; t < turns; ++t) {
    std::string command = Command(d, o);
    nlohmann::json args = {{"command", command}};
    std::string call_id = "call_" + std::to_string(t);
    int chars = std::max(16, static_cast<int>(d.LogNormalDraw(o.assistant_chars)));
    Event model{.type = EventType::kModel, .text = "THOUGHT: " + Prose(d, chars)};
    model.tool_calls.push_back({call_id, "bash", args.dump()});
    model.duration_s = o.timing.ModelSeconds(d.Next());
    model.timing = Timing::kSynthetic;
    push(std::move(model));
    push(Event{
        .type = EventType::kToolBegin, .tool = "bash", .command = command, .call_id = call_id});
    int obs = std::min(o.max_observation_chars,
                       std::max(1, static_cast<int>(d.LogNormalDraw(o.observation_chars))));
    Event end{.type = EventType::kToolEnd,
              .text = "<returncode>0</returncode>\n<output>\n" + Prose(d, obs) + "\n</output>",
              .tool = "bash",
              .call_id = call_id};
    end.exit_code = 0;
    end.duration_s = o.timing.ToolSeconds(command, d.Next());
    end.timing = Timing::kSynthetic;
    push(std::move(end));
  }
  return s;
}

}  // namespace

std::vector<Session> Synthesize(const SynthOptions& options) {
  std::vector<Session> out;
  Draws arrivals(MixKey(options.seed, 0xa5a5a5a5ULL));
  double t = 0;
  for (int a = 0; a < options.agents; ++a) {
    if (options.arrival_rate_per_s > 0 && a > 0) {
      t += -std::log(arrivals.Uniform()) / options.arrival_rate_per_s;
    }
    out.push_back(SynthesizeOne(options, a, t));
  }
  return out;
}

}  // namespace kvkeep::replay
