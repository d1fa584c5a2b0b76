#include "tools/replay/agent_workload.h"

#include <algorithm>
#include <cmath>

#include "tools/replay/timing_model.h"

namespace kvkeep::replay {
namespace {

int64_t TextTokens(const std::string& text, double bytes_per_token) {
  return static_cast<int64_t>(std::ceil(static_cast<double>(text.size()) / bytes_per_token));
}

int64_t ModelTokens(const Event& e, double bytes_per_token) {
  if (e.completion_tokens) return *e.completion_tokens;
  if (e.tokens) return e.tokens->count;
  int64_t n = TextTokens(e.text, bytes_per_token);
  for (const ToolCall& c : e.tool_calls) {
    n += TextTokens(c.name, bytes_per_token) + TextTokens(c.arguments, bytes_per_token);
  }
  return n;
}

}  // namespace

int64_t AgentProgram::ContextTokens() const {
  int64_t n = 0;
  for (const AgentStep& s : steps) n += s.appended_tokens + s.output_tokens;
  return n;
}

Result<std::vector<AgentProgram>> ProgramsFromTrace(const std::vector<Session>& sessions,
                                                    const WorkloadOptions& options) {
  if (!(options.bytes_per_token > 0)) {
    return Status::InvalidArgument("bytes_per_token must be positive");
  }
  if (!(options.time_scale >= 0)) return Status::InvalidArgument("time_scale must be >= 0");
  const auto* served = options.served_tokens;
  if (served != nullptr && served->size() != sessions.size()) {
    return Status::InvalidArgument("served_tokens has " + std::to_string(served->size()) +
                                   " sessions, the trace " + std::to_string(sessions.size()));
  }
  const double scale = options.time_scale;
  std::vector<AgentProgram> out;
  for (size_t si = 0; si < sessions.size(); ++si) {
    const Session& s = sessions[si];
    if (served != nullptr && (*served)[si].size() != s.events.size()) {
      return Status::InvalidArgument("served_tokens of session " + s.id +
                                     " does not match its events");
    }
    AgentProgram p;
    p.id = s.id;
    p.arrival_s = s.arrival_s * scale;
    int64_t pending_tokens = 0;
    std::vector<int32_t> pending_ids;
    bool have_ids = served != nullptr;  // every event of the session carries its ids
    double pending_think_s = 0;
    for (size_t ei = 0; ei < s.events.size() && !p.cut; ++ei) {
      const Event& e = s.events[ei];
      const ServedEventTokens* st = served != nullptr ? &(*served)[si][ei] : nullptr;
      // The turn after the last under max_turns (where the served walk stops too).
      if (e.type == EventType::kModel && options.max_turns > 0 &&
          static_cast<int>(p.steps.size()) >= options.max_turns) {
        p.cut = true;
        break;
      }
      if (st != nullptr && st->stop) break;
      if (st != nullptr && have_ids) {
        have_ids = static_cast<int64_t>(st->ids.size()) == st->before + st->output + st->after;
      }
      switch (e.type) {
        case EventType::kSystem:
        case EventType::kUser:
          if (have_ids) pending_ids.insert(pending_ids.end(), st->ids.begin(), st->ids.end());
          pending_tokens += st != nullptr ? st->before
                            : e.tokens    ? e.tokens->count
                                          : TextTokens(e.text, options.bytes_per_token);
          break;
        case EventType::kToolEnd:
          if (have_ids) pending_ids.insert(pending_ids.end(), st->ids.begin(), st->ids.end());
          pending_tokens +=
              st != nullptr ? st->before : TextTokens(e.text, options.bytes_per_token);
          if (!p.steps.empty() && !p.steps.back().tool.empty() && !p.steps.back().tool_timed) {
            p.steps.back().tool_s = std::max(0.0, e.duration_s) * scale;
            p.steps.back().tool_timed = e.timing != Timing::kNone;
          }
          break;
        case EventType::kThink:
          pending_think_s += std::max(0.0, e.duration_s) * scale;
          break;
        case EventType::kToolBegin:
          if (!p.steps.empty() && p.steps.back().tool.empty()) {
            p.steps.back().tool = e.tool;
            p.steps.back().command = e.command;
          }
          break;
        case EventType::kModel: {
          AgentStep step;
          step.appended_tokens = pending_tokens + (st != nullptr ? st->before : 0);
          step.output_tokens = st != nullptr ? st->output : ModelTokens(e, options.bytes_per_token);
          step.think_s = pending_think_s;
          if (have_ids) {
            const auto out_begin = st->ids.begin() + st->before;
            const auto out_end = out_begin + st->output;
            pending_ids.insert(pending_ids.end(), st->ids.begin(), out_begin);
            step.appended_ids = std::move(pending_ids);
            step.output_ids.assign(out_begin, out_end);
            pending_ids.assign(out_end, st->ids.end());
          } else {
            step.appended_ids.clear();
          }
          pending_tokens = st != nullptr ? st->after : 0;
          pending_think_s = 0;
          p.steps.push_back(std::move(step));
          break;
        }
      }
    }
    p.tail_s = p.cut ? 0 : pending_think_s;  // the replay sleeps these before it closes
    if (!p.steps.empty()) out.push_back(std::move(p));
  }
  if (out.empty()) return Status::InvalidArgument("the trace has no session with a model turn");
  return out;
}

std::vector<double> PoissonArrivals(int n, double rate_per_s, uint64_t seed) {
  std::vector<double> out;
  double t = 0;
  for (int i = 0; i < n; ++i) {
    if (i > 0) t += -std::log(DrawUniform01(MixKey(seed, static_cast<uint64_t>(i)))) / rate_per_s;
    out.push_back(t);
  }
  return out;
}

Result<std::vector<AgentArrival>> MakeArrivals(size_t num_programs, int num_agents,
                                               double rate_per_s, uint64_t seed) {
  if (num_programs == 0) return Status::InvalidArgument("no agent programs");
  if (num_agents < 1) return Status::InvalidArgument("agents must be at least 1");
  if (!(rate_per_s > 0)) return Status::InvalidArgument("the arrival rate must be positive");
  std::vector<AgentArrival> out;
  const std::vector<double> times = PoissonArrivals(num_agents, rate_per_s, seed);
  for (int i = 0; i < num_agents; ++i) {
    out.push_back({times[static_cast<size_t>(i)], static_cast<size_t>(i) % num_programs});
  }
  return out;
}

}  // namespace kvkeep::replay
