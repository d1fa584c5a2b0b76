#include "bench/sim/agent_sim.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <map>
#include <nlohmann/json.hpp>
#include <queue>

#include "base/clock.h"
#include "engine/engine_impl.h"
#include "policy/policy_factory.h"
#include "policy/tool_key.h"
#include "tools/replay/accounting.h"

namespace kvkeep::sim {
namespace {

constexpr int32_t kVocab = 256;  // synthetic ids; the logits are never read

// Token id at a position: any fixed function works (each agent has its own cache salt).
int32_t TokenAt(int64_t position) { return static_cast<int32_t>(1 + position % (kVocab - 1)); }

ModelConfig SimModelConfig(const SimOptions& o) {
  ModelConfig c;  // the 8B shape (Llama-3-8B) as the engine sees it
  c.architecture = "LlamaForCausalLM";
  c.model_type = "llama";
  c.vocab_size = std::max(kVocab, o.vocab_size);
  c.num_layers = 32;
  c.num_q_heads = 32;
  c.num_kv_heads = 8;
  c.head_dim = 128;
  c.hidden_size = 4096;
  c.max_position_embeddings = o.max_position_tokens;
  return c;
}

struct Event {
  enum class Kind { kSubmit, kToolBegin, kToolEnd, kEnd };
  int64_t at_us = 0;
  int64_t order = 0;  // FIFO among equal times
  Kind kind = Kind::kSubmit;
  int32_t agent = 0;
  bool operator>(const Event& e) const {
    return at_us != e.at_us ? at_us > e.at_us : order > e.order;
  }
};

// Per-agent state between turns.
struct AgentState {
  const replay::AgentProgram* program = nullptr;
  int32_t next_step = 0;
  int64_t context_tokens = 0;   // tokens of the session after the last reply
  int64_t after_previous = 0;   // the same, as AccountTurn wants it
  int64_t first_token_us = -1;  // of the running turn
  bool use_ids = false;         // the program carries served token ids
  std::vector<int32_t> tokens;  // the session's ids so far (use_ids)
  bool finished_this_step = false;
  GenerateEvent finish;  // of the running turn
};

constexpr int64_t kPinSampleUs = 10'000;  // idle hops while pins hold blocks

int64_t ToMicros(double s) { return static_cast<int64_t>(std::llround(s * 1e6)); }

// Every step carries exactly as many served ids as it counts tokens (a non-empty output).
bool HasServedIds(const replay::AgentProgram& p) {
  for (const replay::AgentStep& s : p.steps) {
    if (static_cast<int64_t>(s.appended_ids.size()) != s.appended_tokens ||
        static_cast<int64_t>(s.output_ids.size()) != s.output_tokens || s.output_ids.empty()) {
      return false;
    }
  }
  return !p.steps.empty();
}

class Simulation {
 public:
  Simulation(const std::vector<replay::AgentProgram>& programs,
             const std::vector<replay::AgentArrival>& arrivals, const SimOptions& options)
      : programs_(programs), arrivals_(arrivals), o_(options), clock_(0) {}

  Result<SimResult> Run() {
    RETURN_IF_ERROR(Setup());
    double next_progress_s = o_.progress_every_sim_s;
    while (agents_done_ < static_cast<int>(agents_.size())) {
      RETURN_IF_ERROR(DeliverDueEvents());
      if (outstanding_ > 0 || hints_pending_) {
        // A step with no request only applies the hints (pins), at no cost.
        const bool idle = outstanding_ == 0;
        hints_pending_ = false;
        const size_t logged = o_.step_log != nullptr ? o_.step_log->steps().size() : 0;
        RETURN_IF_ERROR(engine_impl_->Step().WithContext("sim step"));
        if (!idle) ++result_.engine_steps;
        const int64_t step_us =
            std::max<int64_t>(idle ? 0 : 1, ToMicros(backend_->TakeElapsedSeconds()));
        if (o_.step_log != nullptr && o_.step_log->steps().size() > logged) {
          o_.step_log->SetLastStepSeconds(static_cast<double>(step_us) / 1e6);
        }
        pinned_blocks_ = engine_->GetStats().pinned_blocks;  // held while the step ran
        AdvanceTo(clock_.NowMicros() + step_us);
        RETURN_IF_ERROR(CollectFinished());
      } else if (!events_.empty()) {
        // While pins hold blocks, idle time moves in short hops with a step after each, so
        // a pin that expires between events stops counting within kPinSampleUs.
        int64_t to_us = events_.top().at_us;
        if (pinned_blocks_ > 0) {
          to_us = std::min(to_us, clock_.NowMicros() + kPinSampleUs);
          hints_pending_ = true;
        }
        AdvanceTo(to_us);
        ++result_.idle_jumps;
      } else if (agents_done_ < static_cast<int>(agents_.size())) {
        return Status::Internal("sim: agents left but nothing to do");
      }
      if (o_.progress && NowS() >= next_progress_s) {
        o_.progress(NowS(), agents_done_, static_cast<int>(agents_.size()),
                    static_cast<int64_t>(result_.turns.size()));
        next_progress_s = NowS() + o_.progress_every_sim_s;
      }
    }
    engine_->Stop();
    result_.end_s = NowS();
    result_.backend = backend_->counters();
    result_.engine = engine_->GetStats();
    result_.pin_block_s = pin_block_s_;
    return std::move(result_);
  }

 private:
  double NowS() const { return static_cast<double>(clock_.NowMicros()) / 1e6; }

  Status Setup() {
    if (programs_.empty() || arrivals_.empty()) return Status::InvalidArgument("sim: no agents");
    if (o_.cost.kv_bytes_per_token < 1) {
      return Status::InvalidArgument("sim: the cost model has no kv_bytes_per_token");
    }
    SimBackendOptions b;
    b.config = SimModelConfig(o_);
    b.num_kv_blocks = o_.device_blocks;
    b.block_size = o_.block_size;
    b.kv_bytes_per_token = o_.cost.kv_bytes_per_token;
    b.cost = o_.cost;
    b.host_bytes_per_s = o_.host_bytes_per_s;
    b.duplex_share = o_.duplex_share;
    if (o_.overlap_swaps) b.clock = &clock_;
    ASSIGN_OR_RETURN(std::unique_ptr<SimBackend> backend, SimBackend::Create(b));
    backend_ = backend.get();
    EngineOptions e;
    e.max_batch_tokens = o_.max_batch_tokens;
    e.prefill_chunk_tokens = o_.prefill_chunk_tokens;
    e.max_running = o_.max_running;
    e.num_host_blocks = o_.host_blocks;
    e.model_id = "sim-llama-3-8b";
    RETURN_IF_ERROR(ValidatePolicyName(o_.policy));
    e.policy.name = o_.policy;
    e.policy.cost_model = o_.cost;  // the TTL rule prices a hit as the simulator charges it
    e.policy.ttl = o_.ttl;
    e.policy.turn_end_grace_s = o_.turn_end_grace_s;
    e.step_log = o_.step_log;
    ASSIGN_OR_RETURN(engine_, Engine::Create(e, std::move(backend), nullptr, &clock_));
    engine_impl_ = dynamic_cast<EngineImpl*>(engine_.get());
    if (engine_impl_ == nullptr) return Status::Internal("sim: the engine is not an EngineImpl");
    agents_.resize(arrivals_.size());
    result_.agents.resize(arrivals_.size());
    for (size_t i = 0; i < arrivals_.size(); ++i) {
      if (arrivals_[i].program >= programs_.size()) {
        return Status::InvalidArgument("sim: an arrival names a program that does not exist");
      }
      agents_[i].program = &programs_[arrivals_[i].program];
      agents_[i].use_ids = HasServedIds(*agents_[i].program);
      result_.agents[i].arrival_s = arrivals_[i].arrival_s;
      Schedule(ToMicros(arrivals_[i].arrival_s), Event::Kind::kSubmit, static_cast<int32_t>(i));
    }
    return Status::OK();
  }

  void Schedule(int64_t at_us, Event::Kind kind, int32_t agent) {
    events_.push(Event{at_us, next_order_++, kind, agent});
  }

  // The client's clock: when the event being delivered was sent. kvkeepd stamps a hint or
  // a request when it receives it, in the middle of a step, not when the next step
  // applies it; the simulator delivers events between steps, so it stamps them with this.
  int64_t ClientNowUs() const { return sent_us_ >= 0 ? sent_us_ : clock_.NowMicros(); }

  SessionHint MakeHint(SessionHint::Kind kind, int32_t agent) const {
    SessionHint h;
    h.kind = kind;
    h.session = static_cast<SessionId>(agent) + 1;
    h.at_us = ClientNowUs();
    return h;
  }

  // tool_begin / tool_end of the tool that follows the agent's step `step`.
  SessionHint ToolHint(SessionHint::Kind kind, int32_t agent, const replay::AgentStep& step) const {
    SessionHint h = MakeHint(kind, agent);
    h.tool_key = ToolKey(step.tool, step.command);
    if (kind == SessionHint::Kind::kToolEnd && step.tool_timed)
      h.duration_us = ToMicros(step.tool_s);
    return h;
  }

  int64_t HalfRoundTripUs() const { return ToMicros(o_.client_round_trip_s / 2); }

  // tool_begin of the tool after the agent's last finished turn, sent at sent_us; the
  // tool runs from then.
  void BeginTool(int32_t agent, int64_t sent_us) {
    const AgentState& a = agents_[agent];
    const replay::AgentStep& step = a.program->steps[a.next_step - 1];
    SendHint(ToolHint(SessionHint::Kind::kToolBegin, agent, step));
    Schedule(sent_us + ToMicros(step.tool_s), Event::Kind::kToolEnd, agent);
  }

  void SendHint(const SessionHint& hint) {
    engine_->Hint(hint);
    hints_pending_ = true;
  }

  // Moves the clock, integrating the blocks pins held since the last move.
  void AdvanceTo(int64_t now_us) {
    const int64_t dt_us = now_us - clock_.NowMicros();
    if (dt_us <= 0) return;
    pin_block_s_ += static_cast<double>(pinned_blocks_) * static_cast<double>(dt_us) / 1e6;
    clock_.SetMicros(now_us);
  }

  Status DeliverDueEvents() {
    while (!events_.empty() && events_.top().at_us <= clock_.NowMicros()) {
      const Event ev = events_.top();
      events_.pop();
      sent_us_ = ev.at_us;
      if (ev.kind == Event::Kind::kEnd) {
        EndAgent(ev.agent, /*truncated=*/false, /*failed=*/false);
        continue;
      }
      if (ev.kind == Event::Kind::kToolBegin) {
        BeginTool(ev.agent, ev.at_us);
        continue;
      }
      if (ev.kind == Event::Kind::kToolEnd) {
        const AgentState& a = agents_[ev.agent];
        SendHint(
            ToolHint(SessionHint::Kind::kToolEnd, ev.agent, a.program->steps[a.next_step - 1]));
        const bool last = a.next_step >= static_cast<int32_t>(a.program->steps.size());
        // The client's own clock: it sent tool_end at ev.at_us, while the engine may have
        // been in a step (the hint is applied after it, the next turn maybe with it).
        if (last) {
          Schedule(ev.at_us + ToMicros(a.program->tail_s), Event::Kind::kEnd, ev.agent);
        } else {  // the next request reaches the engine half a round trip after tool_end
          Schedule(ev.at_us + ToMicros(a.program->steps[a.next_step].think_s) + HalfRoundTripUs(),
                   Event::Kind::kSubmit, ev.agent);
        }
        continue;
      }
      RETURN_IF_ERROR(Submit(ev.agent));
    }
    sent_us_ = -1;
    return Status::OK();
  }

  void EndAgent(int32_t agent, bool truncated, bool failed) {
    SendHint(MakeHint(SessionHint::Kind::kClose, agent));
    SimAgent& r = result_.agents[agent];
    r.finish_s = static_cast<double>(ClientNowUs()) / 1e6;
    r.truncated = truncated;
    r.failed = failed;
    ++agents_done_;
  }

  Status Submit(int32_t agent) {
    AgentState& a = agents_[agent];
    const replay::AgentStep& step = a.program->steps[a.next_step];
    const int64_t prompt_tokens =
        a.use_ids ? static_cast<int64_t>(a.tokens.size() + step.appended_ids.size())
                  : a.context_tokens + std::max<int64_t>(1, step.appended_tokens);
    const int64_t output_tokens = std::max<int64_t>(1, step.output_tokens);
    if (prompt_tokens + output_tokens > o_.max_position_tokens || prompt_tokens < 1) {
      EndAgent(agent, /*truncated=*/true, /*failed=*/false);
      return Status::OK();
    }
    GenerateRequest r;
    r.id = next_request_++;
    r.session = static_cast<SessionId>(agent) + 1;
    r.cache_salt = o_.shared_cache_salt ? 1 : static_cast<uint64_t>(agent) + 1;
    if (a.use_ids) {
      a.tokens.insert(a.tokens.end(), step.appended_ids.begin(), step.appended_ids.end());
      r.prompt = a.tokens;
      r.forced = step.output_ids;
    } else {
      r.prompt.resize(static_cast<size_t>(prompt_tokens));
      for (int64_t p = 0; p < prompt_tokens; ++p) r.prompt[p] = TokenAt(p);
      r.forced.resize(static_cast<size_t>(output_tokens));
      for (int64_t p = 0; p < output_tokens; ++p) r.forced[p] = TokenAt(prompt_tokens + p);
    }
    r.stop.max_tokens = static_cast<int32_t>(output_tokens);
    r.stop.use_model_eos = false;
    r.on_event = [this, agent](const GenerateEvent& ev) {
      AgentState& s = agents_[agent];
      if (ev.kind == GenerateEvent::Kind::kToken) {
        if (s.first_token_us < 0) s.first_token_us = -2;  // stamped after the step
        return;
      }
      s.finished_this_step = true;
      s.finish = ev;
      finished_.push_back(agent);
    };
    SimTurn t;
    t.agent = agent;
    t.step = a.next_step;
    t.submit_s = static_cast<double>(ClientNowUs()) / 1e6;
    t.context_tokens = prompt_tokens;
    pending_turn_[agent] = t;
    a.first_token_us = -1;
    // The engine stamps the request's arrival (its TTFT, the pin it returns within, its
    // place in the queue) from the clock: the client's time, as kvkeepd would receive it.
    const int64_t now_us = clock_.NowMicros();
    clock_.SetMicros(ClientNowUs());
    const Status submitted = engine_->Submit(std::move(r));
    clock_.SetMicros(now_us);
    RETURN_IF_ERROR(submitted);
    ++outstanding_;
    return Status::OK();
  }

  // After a step: stamps first tokens and finishes with the step's end time.
  Status CollectFinished() {
    for (auto& [agent, turn] : pending_turn_) {
      AgentState& a = agents_[agent];
      if (a.first_token_us == -2) {
        a.first_token_us = clock_.NowMicros();
        turn.first_token_s = NowS();
      }
    }
    for (int32_t agent : finished_) {
      AgentState& a = agents_[agent];
      SimTurn t = pending_turn_[agent];
      pending_turn_.erase(agent);
      --outstanding_;
      const Usage& u = a.finish.usage;
      t.finish_s = NowS();
      t.ok = a.finish.finish_reason == FinishReason::kStop ||
             a.finish.finish_reason == FinishReason::kLength;
      if (t.first_token_s == 0) t.first_token_s = t.finish_s;
      const nlohmann::json usage = {{"cached_tokens", u.cached_tokens},
                                    {"recomputed_tokens", u.recomputed_tokens}};
      const replay::TurnTokens tt = replay::AccountTurn(usage, t.context_tokens, a.after_previous);
      t.cached_tokens = tt.cached_tokens;
      t.cached_host_tokens = std::min(u.cached_host_tokens, tt.cached_tokens);
      t.first_prefill_tokens = tt.first_prefill_tokens;
      t.reprefill_tokens = tt.reprefill_tokens;
      t.recomputed_tokens = u.recomputed_tokens;
      t.recounted_tokens =
          std::max<int64_t>(0, u.cached_tokens + u.recomputed_tokens - t.context_tokens);
      t.generated_tokens = u.generated_tokens;
      result_.turns.push_back(t);
      a.finished_this_step = false;
      ++result_.agents[agent].turns;
      if (!t.ok) {
        EndAgent(agent, false, /*failed=*/true);
        continue;
      }
      a.context_tokens = t.context_tokens + u.generated_tokens;
      a.after_previous = a.context_tokens;
      const replay::AgentStep& step = a.program->steps[a.next_step];
      if (a.use_ids)
        a.tokens.insert(a.tokens.end(), step.output_ids.begin(), step.output_ids.end());
      ++a.next_step;
      const bool last = a.next_step >= static_cast<int32_t>(a.program->steps.size());
      if (last && a.program->cut) {  // `replay run --max-turns` closes at the last reply
        EndAgent(agent, false, false);
        continue;
      }
      if (last && step.tool.empty()) {  // the replay's trailing waits, then close
        if (a.program->tail_s > 0) {
          Schedule(clock_.NowMicros() + ToMicros(a.program->tail_s), Event::Kind::kEnd, agent);
        } else {
          EndAgent(agent, false, false);
        }
        continue;
      }
      if (!step.tool.empty()) {
        if (HalfRoundTripUs() > 0) {  // the reply, then the client's tool_begin call
          Schedule(clock_.NowMicros() + HalfRoundTripUs(), Event::Kind::kToolBegin, agent);
        } else {
          BeginTool(agent, clock_.NowMicros());
        }
      } else {
        Schedule(clock_.NowMicros() + ToMicros(a.program->steps[a.next_step].think_s) +
                     2 * HalfRoundTripUs(),
                 Event::Kind::kSubmit, agent);
      }
    }
    finished_.clear();
    return Status::OK();
  }

  const std::vector<replay::AgentProgram>& programs_;
  const std::vector<replay::AgentArrival>& arrivals_;
  const SimOptions& o_;
  FakeClock clock_;
  std::vector<AgentState> agents_;
  std::priority_queue<Event, std::vector<Event>, std::greater<Event>> events_;
  std::map<int32_t, SimTurn> pending_turn_;
  std::vector<int32_t> finished_;
  int64_t next_order_ = 0;
  RequestId next_request_ = 1;
  int64_t outstanding_ = 0;
  int agents_done_ = 0;
  int64_t sent_us_ = -1;        // the event being delivered was sent then (-1: none)
  bool hints_pending_ = false;  // hints sent that no step has applied yet
  int64_t pinned_blocks_ = 0;   // device blocks held by live pins after the last step
  double pin_block_s_ = 0;
  SimResult result_;
  // Last, so destroyed first: a run that ends in an error leaves requests in flight, and
  // the engine's Stop() then calls their on_event, which writes agents_ and finished_.
  SimBackend* backend_ = nullptr;  // owned by engine_
  std::unique_ptr<Engine> engine_;
  EngineImpl* engine_impl_ = nullptr;
};

}  // namespace

Result<SimResult> RunAgentSim(const std::vector<replay::AgentProgram>& programs,
                              const std::vector<replay::AgentArrival>& arrivals,
                              const SimOptions& options) {
  Simulation sim(programs, arrivals, options);
  return sim.Run();
}

double Percentile(std::vector<double> values, double q) {
  if (values.empty()) return 0;
  std::sort(values.begin(), values.end());
  const double rank = std::ceil(std::clamp(q, 0.0, 1.0) * static_cast<double>(values.size()));
  const size_t i = static_cast<size_t>(std::max(1.0, rank)) - 1;
  return values[std::min(i, values.size() - 1)];
}

SimSummary Summarize(const SimResult& r) {
  SimSummary s;
  std::vector<double> jct, ttft;
  for (const SimAgent& a : r.agents) {
    if (a.truncated) ++s.agents_truncated;
    if (a.failed) {
      ++s.agents_failed;
      continue;
    }
    ++s.agents_done;
    jct.push_back(a.finish_s - a.arrival_s);
  }
  for (const SimTurn& t : r.turns) {
    ttft.push_back(t.first_token_s - t.submit_s);
    s.context_tokens += t.context_tokens;
    s.cached_tokens += t.cached_tokens;
    s.cached_host_tokens += t.cached_host_tokens;
    s.first_prefill_tokens += t.first_prefill_tokens;
    s.reprefill_tokens += t.reprefill_tokens;
    s.recounted_tokens += t.recounted_tokens;
    if (t.recounted_tokens > 0) ++s.preempted_turns;
  }
  s.turns = static_cast<int64_t>(r.turns.size());
  auto mean = [](const std::vector<double>& v) {
    double sum = 0;
    for (double x : v) sum += x;
    return v.empty() ? 0.0 : sum / static_cast<double>(v.size());
  };
  s.mean_jct_s = mean(jct);
  s.p99_jct_s = Percentile(jct, 0.99);
  s.mean_ttft_s = mean(ttft);
  s.p99_ttft_s = Percentile(ttft, 0.99);
  s.hit_ratio = s.context_tokens > 0
                    ? static_cast<double>(s.cached_tokens) / static_cast<double>(s.context_tokens)
                    : 0;
  s.recomputed_tokens = s.first_prefill_tokens + s.reprefill_tokens;
  s.pin_violations = r.engine.pin_violations;
  s.pin_block_s = r.pin_block_s;
  s.pins_granted = r.engine.pins_granted;
  s.pins_used = r.engine.pins_used;
  s.pins_expired = r.engine.pins_expired;
  s.reclaimed_sessions = r.engine.reclaimed_sessions;
  s.swapped_in_blocks = r.backend.swapped_in_blocks;
  s.swap_s = r.backend.swap_s;
  s.swap_wait_s = r.backend.swap_wait_s;
  s.evicted_blocks = r.engine.evicted_blocks;
  s.dropped_blocks = r.engine.dropped_blocks;
  s.engine_steps = r.engine_steps;
  s.end_s = r.end_s;
  return s;
}

std::string TurnsCsv(const SimResult& r, const std::vector<replay::AgentProgram>& programs,
                     const std::vector<replay::AgentArrival>& arrivals) {
  std::string out =
      "agent,program,turn,submit_s,first_token_s,finish_s,context_tokens,cached_tokens,"
      "cached_host_tokens,first_prefill_tokens,reprefill_tokens\n";
  char line[512];
  for (const SimTurn& t : r.turns) {
    const size_t agent = static_cast<size_t>(t.agent);
    const std::string& program =
        agent < arrivals.size() && arrivals[agent].program < programs.size()
            ? programs[arrivals[agent].program].id
            : std::string();
    std::snprintf(line, sizeof(line), "%d,%s,%d,%.6f,%.6f,%.6f,%lld,%lld,%lld,%lld,%lld\n", t.agent,
                  program.c_str(), t.step, t.submit_s, t.first_token_s, t.finish_s,
                  static_cast<long long>(t.context_tokens), static_cast<long long>(t.cached_tokens),
                  static_cast<long long>(t.cached_host_tokens),
                  static_cast<long long>(t.first_prefill_tokens),
                  static_cast<long long>(t.reprefill_tokens));
    out += line;
  }
  return out;
}

}  // namespace kvkeep::sim
