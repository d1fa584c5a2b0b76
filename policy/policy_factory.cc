#include "policy/policy_factory.h"

#include <algorithm>
#include <map>

namespace kvkeep {
namespace {

// The pinning policies: ttl, ttl-fcfs and fixed-ttl differ in how a tool_begin's TTL is
// chosen and whether admission is program-aware.
class PinningReclaimPolicy final : public ReclaimPolicy {
 public:
  enum class Rule { kLearned, kFixed };
  PinningReclaimPolicy(std::string name, Rule rule, bool program_aware,
                       const PolicyOptions& options, const ToolLatencyStats* tool_stats)
      : name_(std::move(name)),
        rule_(rule),
        program_aware_(program_aware),
        options_(options),
        tool_stats_(tool_stats) {}

  std::string_view name() const override { return name_; }
  bool reuses_across_requests() const override { return true; }
  bool retains_sessions() const override { return true; }
  bool program_aware_admission() const override { return program_aware_; }

  void OnHint(const SessionHint& hint, const EngineLoad& load, SessionReclaimInfo* info) override {
    info->last_use_us = std::max(info->last_use_us, hint.at_us);
    switch (hint.kind) {
      case SessionHint::Kind::kToolBegin:
        ++info->tool_calls;
        PinForTool(hint, load, info);
        return;
      case SessionHint::Kind::kRetain:
        if (hint.retain_until_us <= hint.at_us) {  // ttl_s 0: release
          info->pinned = info->pin_from_hint = info->pin_is_grace = false;
          info->retention_priority = 0;
          return;
        }
        info->pinned = info->pin_from_hint = true;
        info->pin_is_grace = false;
        info->pin_deadline_us = hint.retain_until_us;
        info->retention_priority = hint.priority;
        info->pin_benefit_s = Benefit(load, *info).total_s();
        return;
      case SessionHint::Kind::kToolEnd:
      case SessionHint::Kind::kClose:
        return;  // the engine accounts the pin and keeps it until the next turn arrives
    }
  }

  void OnRetain(SessionReclaimInfo* info) override {
    const double rebuild_s =
        options_.cost_model.RebuildSeconds(RebuildSource::kPrefill, info->context_tokens);
    info->gdsf_priority = gdsf_.PriorityOnUse(info->use_count, rebuild_s, info->blocks_on_tier[0]);
    // The turn-end grace pin: the agent's tool_begin arrives a client round trip after
    // the turn's last token; without a pin a full pool reclaims the session in that gap
    // and the tool's pin then holds nothing. Only sessions that have called tools get it,
    // and a live session.retain pin is kept as it is.
    const bool hint_pin =
        info->pinned && info->pin_from_hint && info->pin_deadline_us > info->last_use_us;
    if (options_.turn_end_grace_s > 0 && info->tool_calls > 0 && !hint_pin) {
      info->pinned = info->pin_is_grace = true;
      info->pin_from_hint = false;
      info->pin_deadline_us =
          info->last_use_us + static_cast<int64_t>(options_.turn_end_grace_s * 1e6);
      info->pin_benefit_s = rebuild_s;
    }
  }
  void OnReclaimed(const SessionReclaimInfo& info) override {
    if (!info.pinned) gdsf_.OnReclaim(info.gdsf_priority);
  }

  void Order(const ReclaimRequest& request, std::span<const SessionReclaimInfo> candidates,
             std::vector<ReclaimVictim>* victims) const override {
    OrderByClass(request, candidates, victims);
  }

  std::vector<std::pair<std::string, double>> LastTtls() const override {
    return {last_ttl_s_.begin(), last_ttl_s_.end()};
  }

 private:
  HitBenefit Benefit(const EngineLoad& load, const SessionReclaimInfo& info) const {
    PinCandidate c;
    c.context_tokens = info.context_tokens;
    c.device_blocks = info.blocks_on_tier[0];
    const int64_t blocks = info.blocks_on_tier[0];
    c.host_has_room =
        load.host_has_room && (load.host_free_blocks < 0 || load.host_free_blocks >= blocks);
    c.disk_has_room =
        load.disk_has_room && (load.disk_free_blocks < 0 || load.disk_free_blocks >= blocks);
    c.queued_prefill_tokens = load.queued_prefill_tokens;
    return ComputeHitBenefit(options_.cost_model, c);
  }

  void PinForTool(const SessionHint& hint, const EngineLoad& load, SessionReclaimInfo* info) {
    if (info->pinned && info->pin_from_hint && info->pin_deadline_us > hint.at_us) return;
    const std::string& key = hint.tool_key.empty() ? std::string("unknown") : hint.tool_key;
    const HitBenefit benefit = Benefit(load, *info);
    double ttl_s = 0, hit = 0;
    if (rule_ == Rule::kFixed) {
      ttl_s = FixedTtl(*tool_stats_, key, options_.fixed_ttl);
      hit = ttl_s > 0 ? tool_stats_->ForKey(key).Cdf(ttl_s) : 0;
    } else {
      const PoolState pool{load.device_total_blocks, load.device_free_blocks};
      const TtlDecision d =
          DecideTtl(tool_stats_->ForKey(key), benefit.total_s(), info->blocks_on_tier[0],
                    MemoryPressure(pool, options_.ttl), options_.ttl);
      ttl_s = d.ttl_s;
      hit = d.hit_probability;
    }
    last_ttl_s_[key] = ttl_s;
    info->pin_from_hint = info->pin_is_grace = false;
    info->pinned = ttl_s > 0;
    info->pin_deadline_us = hint.at_us + static_cast<int64_t>(ttl_s * 1e6);
    info->pin_benefit_s = hit * benefit.total_s();
  }

  const std::string name_;
  const Rule rule_;
  const bool program_aware_;
  const PolicyOptions options_;
  const ToolLatencyStats* tool_stats_;
  GdsfClock gdsf_;
  std::map<std::string, double> last_ttl_s_;
};

}  // namespace

const std::vector<std::string_view>& PolicyNames() {
  static const std::vector<std::string_view> names = {"ttl", "ttl-fcfs", "fixed-ttl", "lru",
                                                      "none"};
  return names;
}

Status ValidatePolicyName(std::string_view name) {
  const auto& names = PolicyNames();
  if (std::find(names.begin(), names.end(), name) != names.end()) return Status::OK();
  return Status::InvalidArgument("unknown policy '" + std::string(name) +
                                 "' (expected ttl, ttl-fcfs, fixed-ttl, lru or none)");
}

bool PolicyReusesKv(std::string_view name) { return name != "none"; }

CostModel DefaultCostModel() {
  CostModel m;
  m.prefill_per_token_s = 2.281e-05;
  m.prefill_attention_s = 1.209e-09;
  m.decode_fixed_s = 0.005915;
  m.decode_per_context_token_s = 4.627e-08;
  m.source = "default: 8B-shape H100 fit (bench/data/h100_8b_timings.json)";
  return m;
}

Result<std::unique_ptr<ReclaimPolicy>> NewReclaimPolicy(const PolicyOptions& options,
                                                        const ToolLatencyStats* tool_stats) {
  RETURN_IF_ERROR(ValidatePolicyName(options.name));
  using Rule = PinningReclaimPolicy::Rule;
  const std::string& n = options.name;
  if (n == "lru") return NewLruReclaimPolicy();
  if (n == "none") return NewNoneReclaimPolicy();
  if (tool_stats == nullptr) return Status::InvalidArgument("policy " + n + ": no tool stats");
  std::unique_ptr<ReclaimPolicy> p;
  if (n == "ttl") {
    p = std::make_unique<PinningReclaimPolicy>(n, Rule::kLearned, true, options, tool_stats);
  } else if (n == "ttl-fcfs") {
    p = std::make_unique<PinningReclaimPolicy>(n, Rule::kLearned, false, options, tool_stats);
  } else {
    p = std::make_unique<PinningReclaimPolicy>(n, Rule::kFixed, true, options, tool_stats);
  }
  return p;
}

}  // namespace kvkeep
