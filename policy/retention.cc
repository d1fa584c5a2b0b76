#include "policy/retention.h"

#include <cmath>

namespace kvkeep {

RetentionBook::RetentionBook(const RetentionOptions& options, const Clock* clock)
    : options_(options), clock_(clock) {}

Status RetentionBook::Retain(uint32_t uid, const std::string& session, double ttl_s,
                             double priority, int64_t blocks) {
  if (!std::isfinite(ttl_s) || ttl_s < 0) {
    return Status::InvalidArgument("retain: ttl_s must be a finite number >= 0");
  }
  if (ttl_s > options_.max_hint_ttl_s) {
    return Status::InvalidArgument("retain: ttl_s " + std::to_string(ttl_s) +
                                   " exceeds the maximum of " +
                                   std::to_string(options_.max_hint_ttl_s) + " s");
  }
  if (!std::isfinite(priority)) return Status::InvalidArgument("retain: priority must be finite");
  auto it = pins_.find(session);
  if (it != pins_.end() && it->second.owner_uid != uid) {
    return Status::NotFound("retain: no session '" + session + "'");
  }
  if (ttl_s == 0) {
    if (it != pins_.end()) pins_.erase(it);
    return Status::OK();
  }
  const int64_t own = it != pins_.end() && it->second.source == Pin::Source::kHint &&
                              it->second.deadline_us > clock_->NowMicros()
                          ? it->second.blocks
                          : 0;
  const int64_t after = HintPinnedBlocks(uid) - own + blocks;
  if (after > options_.max_hint_pinned_blocks_per_uid) {
    return Status::ResourceExhausted(
        "retain: pinning " + std::to_string(blocks) + " blocks would hold " +
        std::to_string(after) + " blocks for uid " + std::to_string(uid) + ", over its quota of " +
        std::to_string(options_.max_hint_pinned_blocks_per_uid) +
        " pinned blocks (retain_quota_blocks)");
  }
  Pin pin;
  pin.owner_uid = uid;
  pin.source = Pin::Source::kHint;
  pin.deadline_us = clock_->NowMicros() + static_cast<int64_t>(ttl_s * 1e6);
  pin.priority = priority;
  pin.blocks = blocks;
  pins_[session] = pin;
  return Status::OK();
}

bool RetentionBook::PinLearned(uint32_t uid, const std::string& session, double ttl_s,
                               int64_t blocks) {
  auto it = pins_.find(session);
  if (it != pins_.end() && it->second.source == Pin::Source::kHint && IsLive(session)) {
    return false;
  }
  if (it != pins_.end() && it->second.owner_uid != uid) return false;
  if (!(ttl_s > 0) || !std::isfinite(ttl_s)) {
    if (it != pins_.end()) pins_.erase(it);
    return true;
  }
  Pin pin;
  pin.owner_uid = uid;
  pin.source = Pin::Source::kLearned;
  pin.deadline_us = clock_->NowMicros() + static_cast<int64_t>(ttl_s * 1e6);
  pin.blocks = blocks;
  pins_[session] = pin;
  return true;
}

void RetentionBook::Release(const std::string& session) { pins_.erase(session); }

void RetentionBook::UpdateBlocks(const std::string& session, int64_t blocks) {
  if (auto it = pins_.find(session); it != pins_.end()) it->second.blocks = blocks;
}

void RetentionBook::RefreshHintBlocks(uint32_t uid,
                                      const std::function<int64_t(const std::string&)>& held) {
  const int64_t now = clock_->NowMicros();
  for (auto& [session, pin] : pins_) {
    if (pin.owner_uid == uid && pin.source == Pin::Source::kHint && pin.deadline_us > now) {
      pin.blocks = held(session);
    }
  }
}

std::optional<Pin> RetentionBook::Get(const std::string& session) const {
  auto it = pins_.find(session);
  if (it == pins_.end()) return std::nullopt;
  return it->second;
}

bool RetentionBook::IsLive(const std::string& session) const {
  auto it = pins_.find(session);
  return it != pins_.end() && it->second.deadline_us > clock_->NowMicros();
}

int64_t RetentionBook::HintPinnedBlocks(uint32_t uid) const {
  const int64_t now = clock_->NowMicros();
  int64_t total = 0;
  for (const auto& [id, pin] : pins_) {
    if (pin.owner_uid == uid && pin.source == Pin::Source::kHint && pin.deadline_us > now) {
      total += pin.blocks;
    }
  }
  return total;
}

int64_t RetentionBook::PinnedBlocks() const {
  const int64_t now = clock_->NowMicros();
  int64_t total = 0;
  for (const auto& [id, pin] : pins_) {
    if (pin.deadline_us > now) total += pin.blocks;
  }
  return total;
}

}  // namespace kvkeep
