#include "cache/remote_staging.h"

#include <vector>

namespace kvkeep {

int32_t StageRemotePrefix(std::span<const int32_t> tokens, HashScope scope,
                          RemoteBlockStore* remote, BlockPool* pool, DiskWorker* disk) {
  const int32_t block_size = pool->block_size();
  const size_t num_full = tokens.size() / static_cast<size_t>(block_size);
  const size_t known = static_cast<size_t>(pool->ProbePrefix(tokens, scope).total());
  if (known >= num_full) return 0;
  // The chain's hashes: the known run's last one is the first asked-for block's parent.
  std::vector<BlockHash> wanted;
  BlockHash parent = kRootParentHash, first_parent = kRootParentHash;
  for (size_t i = 0; i < num_full; ++i) {
    const BlockHash h = HashBlock(parent, tokens.subspan(i * block_size, block_size), scope);
    if (i == known) first_parent = parent;
    if (i >= known) wanted.push_back(h);
    parent = h;
  }
  std::vector<RemoteBlock> found = remote->GetPrefix(wanted, scope, first_parent);
  int32_t staged = 0;
  for (RemoteBlock& b : found) {
    if (!pool->AdoptDiskBlock(b.header.hash, b.header.parent_hash, b.header.tokens, scope)) break;
    disk->Write(std::move(b.header), std::move(b.bytes));
    ++staged;
  }
  return staged;
}

}  // namespace kvkeep
