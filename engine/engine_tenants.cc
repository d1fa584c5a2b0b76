// Device KV blocks per tenant (EngineOptions::max_device_blocks_per_tenant): the bound a
// request counts, trimming a tenant's retained sessions to its cap, and the per-tenant
// block figures of EngineStats.
#include <algorithm>
#include <map>

#include "engine/engine_impl.h"

namespace kvkeep {

int64_t EngineImpl::BlocksBound(const GenerateRequest& r) const {
  const int64_t new_tokens =
      std::max<int64_t>(r.stop.max_tokens, static_cast<int64_t>(r.forced.size()));
  const int64_t tokens =
      std::min<int64_t>(static_cast<int64_t>(r.prompt.size()) + new_tokens, max_context_tokens_);
  const int64_t block_size = pool_.block_size();
  return (tokens + block_size - 1) / block_size;
}

void EngineImpl::TrimTenant(uint64_t tenant, const Sequence* leaving) {
  const int64_t cap = options_.max_device_blocks_per_tenant;
  if (cap <= 0) return;
  int64_t held = 0;
  for (const auto& [id, seq] : seqs_) {
    if (seq.get() != leaving && seq->table.scope().tenant_salt == tenant) {
      held += seq->blocks_bound;
    }
  }
  // The tenant's retained sessions, in release order: unpinned before pinned, then least
  // recently used first.
  std::vector<std::pair<std::pair<bool, int64_t>, SessionId>> order;
  for (const auto& [session, r] : retained_) {
    if (r.table.scope().tenant_salt != tenant) continue;
    held += r.table.num_blocks();
    order.push_back({{r.info.pinned, r.info.last_use_us}, session});
  }
  if (held <= cap) return;
  std::sort(order.begin(), order.end());
  for (const auto& [key, session] : order) {
    if (held <= cap) break;
    auto it = retained_.find(session);
    held -= it->second.table.num_blocks();
    reclaim_policy_->OnReclaimed(it->second.info);
    // To the cache as the next evicted (demoted, not dropped, when a host tier is there):
    // the uid over its cap gives up its KV before other uids' cached prefixes.
    ReleaseSession(session, /*evict_first=*/true);
    SetRetainedBlocks(session, 0);
    ++tenant_cap_releases_;
  }
}

std::vector<EngineStats::TenantBlocks> EngineImpl::TenantBlockStats() const {
  std::map<uint64_t, EngineStats::TenantBlocks> by_tenant;
  auto at = [&](uint64_t tenant) -> EngineStats::TenantBlocks& {
    EngineStats::TenantBlocks& t = by_tenant[tenant];
    t.tenant_salt = tenant;
    return t;
  };
  for (const auto& [tenant, counts] : pool_.tenant_blocks()) {
    EngineStats::TenantBlocks& t = at(tenant);
    t.device_blocks = counts[static_cast<int>(Tier::kDevice)];
    t.host_blocks = counts[static_cast<int>(Tier::kHost)];
    t.disk_blocks = counts[static_cast<int>(Tier::kDisk)];
  }
  for (const auto& [id, seq] : seqs_) {
    at(seq->table.scope().tenant_salt).held_device_blocks += seq->table.num_blocks();
  }
  for (const auto& [session, r] : retained_) {
    at(r.table.scope().tenant_salt).held_device_blocks += r.table.num_blocks();
  }
  std::vector<EngineStats::TenantBlocks> out;
  out.reserve(by_tenant.size());
  for (auto& [tenant, t] : by_tenant) out.push_back(t);
  return out;
}

}  // namespace kvkeep
