// StageRemotePrefix: the remote tier's one entry point for a prefix match (the engine calls
// it for each new request, before BlockPool::PlanDiskLoads). It asks the remote tier for
// the full blocks of `tokens` past the run the pool already knows on any tier, in one
// batched fetch, and stages what comes back through the disk tier: each block's bytes are
// queued as a write on the disk worker and its record adopted into the pool's disk tier
// (BlockPool::AdoptDiskBlock re-derives the hash from parent, tokens and scope). The disk
// reads PlanDiskLoads then queues run after those writes (the worker is FIFO), so the
// blocks reach the device by the path a disk block takes, with every check it gets.
//
// Remote blocks therefore need a disk tier with free room; staging stops at the first block
// that cannot be adopted. A remote tier that is down costs at most its timeout.
//
// Thread-safety: the engine thread's (the pool is single-threaded).
#pragma once

#include <cstdint>
#include <span>

#include "cache/block_pool.h"
#include "cache/disk_worker.h"
#include "cache/remote_tier.h"

namespace kvkeep {

// Returns how many blocks were staged (adopted into the disk tier).
// REQUIRES: remote's codec has pool's block size and the disk worker's block bytes.
int32_t StageRemotePrefix(std::span<const int32_t> tokens, HashScope scope,
                          RemoteBlockStore* remote, BlockPool* pool, DiskWorker* disk);

}  // namespace kvkeep
