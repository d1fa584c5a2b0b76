// Scheduler bookkeeping over a real (small) BlockPool, without a model: token budgets,
// chunking, decode-first ordering, prefix reuse, preemption with recompute, contexts that
// can never fit, and failed reservations that change nothing.
#include "engine/scheduler.h"

#include <gtest/gtest.h>

#include <memory>
#include <random>

#include "tests/testlib/test_util.h"

namespace kvkeep {
namespace {

class SchedulerTest : public ::testing::Test {
 protected:
  void Init(int32_t num_blocks, int32_t block_size, SchedulerOptions options,
            bool prefix_caching = true, int32_t host_blocks = 0) {
    BlockPoolOptions po;
    po.num_blocks = num_blocks;
    po.block_size = block_size;
    po.enable_prefix_caching = prefix_caching;
    po.num_host_blocks = host_blocks;
    pool_ = std::make_unique<BlockPool>(po);
    sched_ = std::make_unique<Scheduler>(options, pool_.get());
  }

  Sequence* AddSeq(std::vector<int32_t> prompt, uint64_t tenant_salt = 0) {
    GenerateRequest r;
    r.id = seqs_.size() + 1;
    r.prompt = std::move(prompt);
    seqs_.push_back(std::make_unique<Sequence>(std::move(r), pool_->block_size(),
                                               HashScope{7, tenant_salt}, std::vector<int32_t>{},
                                               nullptr));
    sched_->Add(seqs_.back().get());
    return seqs_.back().get();
  }

  // One step as the engine does it, minus the model: schedule, advance, append a token to
  // every sequence that samples.
  ScheduledBatch Step() {
    ScheduledBatch b = sched_->Schedule();
    sched_->OnStepDone(b);
    pool_->FinishTransfers();  // the engine runs the planned swaps before the next step
    for (const ScheduledSeq& s : b.seqs) {
      if (s.sample) s.seq->tokens.push_back(static_cast<int32_t>(rng_() % 256));
    }
    EXPECT_TRUE(pool_->TEST_CheckInvariants().ok()) << pool_->TEST_CheckInvariants().ToString();
    return b;
  }

  std::vector<int32_t> Tokens(int n) {
    std::vector<int32_t> t(n);
    for (int32_t& x : t) x = static_cast<int32_t>(rng_() % 256);
    return t;
  }

  std::mt19937_64 rng_{testing::TestSeed()};
  std::unique_ptr<BlockPool> pool_;
  std::unique_ptr<Scheduler> sched_;
  std::vector<std::unique_ptr<Sequence>> seqs_;
};

TEST_F(SchedulerTest, LongPrefillIsChunkedAndNeverStallsDecode) {
  Init(128, 4, {.max_batch_tokens = 16, .prefill_chunk_tokens = 8, .max_running = 8});
  Sequence* shortp = AddSeq(Tokens(5));
  Sequence* longp = AddSeq(Tokens(120));
  int steps = 0;
  while (longp->is_prefilling() || longp->num_computed() == 0) {
    ScheduledBatch b = Step();
    ++steps;
    ASSERT_LE(b.num_tokens, 16);
    bool seen_prefill = false;
    for (const ScheduledSeq& s : b.seqs) {
      EXPECT_LE(s.num_new_tokens, 8);
      // After the step: the run started at num_computed - n.
      const bool is_decode = s.seq->num_computed() - s.num_new_tokens >= s.seq->prefill_end;
      if (!is_decode) seen_prefill = true;
      EXPECT_FALSE(is_decode && seen_prefill) << "decodes come before prefill chunks";
    }
    // Once the short prompt is prefilled, it decodes in every step.
    if (steps > 1) {
      EXPECT_TRUE(std::any_of(b.seqs.begin(), b.seqs.end(),
                              [&](const ScheduledSeq& s) { return s.seq == shortp; }))
          << "step " << steps;
    }
    ASSERT_LT(steps, 100);
  }
  // 120 tokens in chunks of at most 8 (7 per step once the decode takes one): many steps.
  EXPECT_GE(steps, 120 / 8);
  EXPECT_EQ(longp->usage.recomputed_tokens, 120);
  EXPECT_EQ(longp->usage.cached_tokens, 0);
  EXPECT_EQ(shortp->num_generated(), steps) << "the short sequence sampled in every step";
}

TEST_F(SchedulerTest, RespectsMaxRunning) {
  Init(128, 4, {.max_batch_tokens = 64, .prefill_chunk_tokens = 64, .max_running = 2});
  for (int i = 0; i < 5; ++i) AddSeq(Tokens(6));
  ScheduledBatch b = Step();
  EXPECT_EQ(b.seqs.size(), 2u);
  EXPECT_EQ(sched_->num_running(), 2);
  EXPECT_EQ(sched_->num_waiting(), 3);
}

TEST_F(SchedulerTest, ReusesCommittedPrefixAfterFinish) {
  const int kBs = 4;
  Init(64, kBs, {.max_batch_tokens = 256, .prefill_chunk_tokens = 256, .max_running = 8});
  std::vector<int32_t> p = Tokens(23);
  Sequence* first = AddSeq(p);
  Step();
  ASSERT_EQ(first->num_computed(), 23);
  sched_->Remove(first);  // finished: blocks go to the cached LRU
  EXPECT_GT(pool_->stats().num_cached, 0);
  std::vector<int32_t> pq = p;
  for (int32_t t : Tokens(9)) pq.push_back(t);
  Sequence* second = AddSeq(pq);
  ScheduledBatch b = Step();
  ASSERT_EQ(b.seqs.size(), 1u);
  EXPECT_EQ(second->usage.cached_tokens, 23 / kBs * kBs);
  EXPECT_EQ(b.seqs[0].num_new_tokens, 32 - 23 / kBs * kBs);
  EXPECT_EQ(second->usage.cached_tokens + second->usage.recomputed_tokens, 32);
}

TEST_F(SchedulerTest, WholePromptCachedStillComputesTheLastToken) {
  Init(64, 4, {.max_batch_tokens = 256, .prefill_chunk_tokens = 256, .max_running = 8});
  std::vector<int32_t> p = Tokens(16);
  Sequence* a = AddSeq(p);
  Step();
  sched_->Remove(a);
  Sequence* b = AddSeq(p);
  ScheduledBatch batch = Step();
  ASSERT_EQ(batch.seqs.size(), 1u);
  EXPECT_EQ(b->usage.cached_tokens, 12);  // the last block holds the token that needs logits
  EXPECT_TRUE(batch.seqs[0].sample);
}

TEST_F(SchedulerTest, NoPrefixCachingMeansNoReuse) {
  Init(64, 4, {.max_batch_tokens = 256, .prefill_chunk_tokens = 256, .max_running = 8},
       /*prefix_caching=*/false);
  std::vector<int32_t> p = Tokens(30);
  Sequence* a = AddSeq(p);
  Step();
  sched_->Remove(a);
  Sequence* b = AddSeq(p);
  Step();
  EXPECT_EQ(b->usage.cached_tokens, 0);
  EXPECT_EQ(b->usage.recomputed_tokens, 30);
}

TEST_F(SchedulerTest, PreemptsNewestWhenPoolRunsDryAndRecomputesOnResume) {
  // 10 blocks of 4 = 40 slots; two sequences of 12 tokens decoding until they collide.
  Init(10, 4, {.max_batch_tokens = 64, .prefill_chunk_tokens = 64, .max_running = 8});
  Sequence* old_seq = AddSeq(Tokens(12));
  Sequence* new_seq = AddSeq(Tokens(12));
  int preempted_steps = 0;
  for (int i = 0; i < 40 && old_seq->num_tokens() < 30; ++i) {
    ScheduledBatch b = Step();
    if (b.num_preempted > 0) ++preempted_steps;
    ASSERT_TRUE(b.failed.empty());
  }
  EXPECT_GT(preempted_steps, 0);
  EXPECT_GE(old_seq->num_tokens(), 30) << "the oldest sequence keeps running";
  EXPECT_EQ(old_seq->num_preemptions, 0);
  EXPECT_GT(new_seq->num_preemptions, 0);
  EXPECT_EQ(new_seq->status, SequenceStatus::kWaiting);
  EXPECT_TRUE(new_seq->table.empty());
  const int64_t context = new_seq->num_tokens();
  sched_->Remove(old_seq);
  // Alone now, it resumes, recomputing (or re-matching) its whole context.
  Step();
  EXPECT_EQ(new_seq->status, SequenceStatus::kRunning);
  EXPECT_EQ(new_seq->num_computed(), context);
  EXPECT_EQ(new_seq->usage.recomputed_tokens + new_seq->usage.cached_tokens, 12 + context);
}

TEST_F(SchedulerTest, ContextThatCanNeverFitFails) {
  Init(4, 4, {.max_batch_tokens = 64, .prefill_chunk_tokens = 64, .max_running = 8});
  Sequence* s = AddSeq(Tokens(14));
  bool failed = false;
  for (int i = 0; i < 10 && !failed; ++i) {
    ScheduledBatch b = Step();
    failed = !b.failed.empty();
    if (failed) {
      EXPECT_EQ(b.failed[0], s);
    }
  }
  EXPECT_TRUE(failed);
  EXPECT_EQ(s->status, SequenceStatus::kFinished);
  EXPECT_EQ(s->num_tokens(), 17) << "fails when the 17th token needs a 5th block";
  EXPECT_EQ(pool_->stats().num_in_use, 0);
  EXPECT_FALSE(sched_->has_work());
}

TEST_F(SchedulerTest, AdmissionThatCannotGetBlocksChangesNothing) {
  Init(8, 4, {.max_batch_tokens = 64, .prefill_chunk_tokens = 64, .max_running = 8});
  std::vector<int32_t> shared = Tokens(8);
  Sequence* a = AddSeq(shared);
  Step();
  sched_->Remove(a);                   // 2 cached blocks hold `shared`
  Sequence* hog = AddSeq(Tokens(20));  // 5 blocks from the free list, 1 free left
  Step();
  ASSERT_EQ(hog->status, SequenceStatus::kRunning);
  std::vector<int32_t> c_tokens = shared;
  for (int32_t t : Tokens(12)) c_tokens.push_back(t);
  // This step hog's decode takes the last free block; c matches the 2 cached blocks but
  // cannot get 3 more, so it must hand them back.
  Sequence* c = AddSeq(c_tokens);
  ScheduledBatch b = Step();
  ASSERT_EQ(b.seqs.size(), 1u);
  EXPECT_EQ(b.seqs[0].seq, hog);
  EXPECT_EQ(c->status, SequenceStatus::kWaiting);
  EXPECT_TRUE(c->table.empty());
  EXPECT_EQ(c->usage.cached_tokens, 0);
  const BlockPoolStats st = pool_->stats();
  EXPECT_EQ(st.num_in_use, hog->table.num_blocks());
  EXPECT_EQ(st.num_cached, 2);
  EXPECT_EQ(pool_->CountCachedPrefix(shared, HashScope{7, 0}), 2);
}

// A turn whose prefix is on the host tier and that cannot be admitted yet must not promote
// it: the swap-in would be wasted (the blocks wait as cached device blocks, first in line
// to be demoted again), and when the turn is admitted later its prefix would be counted
// as a device hit. 16 blocks of 4 and a 16-block host tier.
TEST_F(SchedulerTest, WaitingTurnDoesNotPromoteItsHostPrefixUntilItIsAdmitted) {
  Init(16, 4, {.max_batch_tokens = 128, .prefill_chunk_tokens = 128, .max_running = 8},
       /*prefix_caching=*/true, /*host_blocks=*/16);
  const HashScope scope{7, 0};
  std::vector<int32_t> prefix = Tokens(16);
  Sequence* a = AddSeq(prefix);
  Step();
  sched_->Remove(a);                      // 4 cached blocks hold `prefix`
  Sequence* big = AddSeq(Tokens(38));     // 10 blocks
  Sequence* filler = AddSeq(Tokens(22));  // 6 blocks: with big's, 12 free + the 4 cached
  Step();
  ASSERT_EQ(big->status, SequenceStatus::kRunning);
  ASSERT_EQ(pool_->ProbePrefix(prefix, scope).host, 4) << "prefix demoted to the host tier";
  sched_->Remove(filler);  // 6 allocatable again
  const int64_t promotions_before = pool_->stats().num_promotions;

  std::vector<int32_t> c_tokens = prefix;
  for (int32_t t : Tokens(12)) c_tokens.push_back(t);  // 7 blocks: 4 promoted + 3 new > 6
  Sequence* c = AddSeq(c_tokens);
  Step();
  EXPECT_EQ(c->status, SequenceStatus::kWaiting);
  EXPECT_EQ(pool_->stats().num_promotions, promotions_before) << "no swap-in for a waiting turn";
  EXPECT_EQ(pool_->ProbePrefix(prefix, scope).host, 4);

  sched_->Remove(big);
  Step();
  ASSERT_EQ(c->status, SequenceStatus::kRunning);
  EXPECT_EQ(pool_->stats().num_promotions, promotions_before + 4);
  EXPECT_EQ(c->usage.cached_host_tokens, 16);
  EXPECT_EQ(c->usage.cached_device_tokens, 0);
  EXPECT_EQ(c->usage.cached_tokens, 16);
}

// On a full pool a turn whose prefix is on the host tier makes room for its promotion, as
// it does for its new blocks: PlanMatch plans no promotion while no device slot is free,
// and the admission then matched nothing and recomputed the whole host prefix. Here big
// runs, a retained table (held) takes the rest of the 16 blocks and the reclaimer frees
// it; C (4 host blocks + 2 new) must come back with its prefix from the host tier.
TEST_F(SchedulerTest, FullPoolAdmissionMakesRoomToPromoteItsHostPrefix) {
  Init(16, 4, {.max_batch_tokens = 128, .prefill_chunk_tokens = 128, .max_running = 8},
       /*prefix_caching=*/true, /*host_blocks=*/16);
  const HashScope scope{7, 0};
  std::vector<int32_t> prefix = Tokens(16);
  Sequence* a = AddSeq(prefix);
  Step();
  sched_->Remove(a);                      // 4 cached blocks hold `prefix`
  Sequence* big = AddSeq(Tokens(38));     // 10 blocks
  Sequence* filler = AddSeq(Tokens(22));  // 6 blocks: the cached prefix is demoted for them
  Step();
  ASSERT_EQ(big->status, SequenceStatus::kRunning);
  ASSERT_EQ(pool_->ProbePrefix(prefix, scope).host, 4) << "prefix demoted to the host tier";
  BlockTable held = std::move(filler->table);  // a retained session's table
  filler->table = BlockTable(pool_->block_size(), held.scope());
  sched_->Remove(filler);
  ASSERT_EQ(pool_->num_allocatable(), 0);
  sched_->set_reclaimer([&](int32_t, bool) {
    const int32_t n = held.num_blocks();
    pool_->Free(&held);
    return n;
  });
  std::vector<int32_t> c_tokens = prefix;
  for (int32_t t : Tokens(6)) c_tokens.push_back(t);  // 6 blocks: 4 promoted + 2 new
  Sequence* c = AddSeq(c_tokens);
  Step();
  ASSERT_EQ(c->status, SequenceStatus::kRunning);
  EXPECT_EQ(c->usage.cached_host_tokens, 16) << "the host prefix was recomputed";
  EXPECT_EQ(c->usage.cached_tokens, 16);
}

// Issue 15: an admission reserves its whole prefill, not only its first chunk. Here 16
// blocks of 4; A's 40-token prompt (10 blocks) prefills in 8-token chunks. B's 32-token
// prompt arrives one step later: its first chunk fits beside A's, but A's remaining
// prefill and B's together need 18 blocks. Admitting B then (first-chunk reservation)
// preempts one of them mid-prefill; with the whole prefill reserved B waits until A no
// longer needs the blocks, and nothing is preempted.
TEST_F(SchedulerTest, AdmissionReservesTheWholePrefillSoNoLaterTurnPreemptsIt) {
  Init(16, 4, {.max_batch_tokens = 16, .prefill_chunk_tokens = 8, .max_running = 8});
  Sequence* a = AddSeq(Tokens(40));
  Step();
  ASSERT_EQ(a->status, SequenceStatus::kRunning);
  ASSERT_TRUE(a->is_prefilling());
  Sequence* b = AddSeq(Tokens(32));
  ScheduledBatch next = Step();
  EXPECT_EQ(b->status, SequenceStatus::kWaiting) << "B's prefill does not fit beside A's";
  EXPECT_EQ(next.seqs.size(), 1u);
  int64_t preemptions = 0;
  for (int i = 0; i < 60 && (a->num_tokens() < 44 || b->num_tokens() < 34); ++i) {
    ScheduledBatch s = Step();
    preemptions += s.num_preempted;
    ASSERT_TRUE(s.failed.empty());
    if (a->num_tokens() >= 44 && a->status == SequenceStatus::kRunning) sched_->Remove(a);
  }
  EXPECT_EQ(preemptions, 0);
  EXPECT_EQ(sched_->num_preemptions(), 0);
  EXPECT_EQ(a->num_preemptions, 0);
  EXPECT_EQ(b->num_preemptions, 0);
  EXPECT_GE(b->num_tokens(), 34) << "B runs once A no longer needs the blocks";
}

// A running prefill still needs blocks that are free now; a later admission may use only
// what is left beyond them. Two short prompts that fit beside A's whole prefill are
// admitted at once.
TEST_F(SchedulerTest, AdmissionUsesWhatIsLeftBesideRunningPrefills) {
  Init(16, 4, {.max_batch_tokens = 32, .prefill_chunk_tokens = 8, .max_running = 8});
  Sequence* a = AddSeq(Tokens(40));  // 10 blocks
  Step();
  Sequence* b = AddSeq(Tokens(8));  // 2 blocks
  Sequence* c = AddSeq(Tokens(8));  // 2 blocks: 14 of 16 with A's
  Step();
  EXPECT_EQ(a->status, SequenceStatus::kRunning);
  EXPECT_EQ(b->status, SequenceStatus::kRunning);
  EXPECT_EQ(c->status, SequenceStatus::kRunning);
  Sequence* d = AddSeq(Tokens(16));  // 4 more blocks: 18 > 16 while A prefills
  Step();
  EXPECT_EQ(d->status, SequenceStatus::kWaiting);
  EXPECT_EQ(sched_->num_preemptions(), 0);
}

// Issue 11, defect 3: one tenant's 16 long requests must not hold back another tenant's
// short one. Without fairness (FIFO admission after the running prefills) the short
// request waits for all 16 prefills: about 16 * 1024 / 64 = 256 steps here.
TEST_F(SchedulerTest, AnotherTenantsShortRequestStartsWithinAStepOfManyLongOnes) {
  Init(4096, 16, {.max_batch_tokens = 64, .prefill_chunk_tokens = 32, .max_running = 64});
  for (int i = 0; i < 16; ++i) AddSeq(Tokens(1024), /*tenant_salt=*/1);
  Step();
  Step();
  Sequence* other = AddSeq(Tokens(40), /*tenant_salt=*/2);
  int steps = 0;
  while (other->num_generated() == 0) {
    Step();
    ++steps;
    ASSERT_LT(steps, 100) << "the short request is starved";
  }
  // Its 40-token prompt takes two chunks (the first as admitted, the second round-robin
  // before the other tenant's 15 later prefills), then its first token is sampled.
  EXPECT_LE(steps, 2);
}

TEST_F(SchedulerTest, AtMaxRunningTheBusiestTenantYieldsASlotToAnIdleOne) {
  Init(4096, 16, {.max_batch_tokens = 64, .prefill_chunk_tokens = 32, .max_running = 4});
  for (int i = 0; i < 6; ++i) AddSeq(Tokens(20), /*tenant_salt=*/1);
  for (int i = 0; i < 4; ++i) Step();
  ASSERT_EQ(sched_->num_running(), 4);
  Sequence* other = AddSeq(Tokens(8), /*tenant_salt=*/2);
  ScheduledBatch b = Step();
  EXPECT_EQ(other->status, SequenceStatus::kRunning);
  EXPECT_EQ(sched_->num_running(), 4);
  EXPECT_EQ(sched_->num_preemptions(), 1);
  // The preempted sequence is the busiest tenant's newest; the idle tenant runs now.
  int32_t tenant1 = 0;
  for (Sequence* s : sched_->running()) tenant1 += Scheduler::TenantOf(s) == 1;
  EXPECT_EQ(tenant1, 3);
  // One tenant alone keeps FIFO order and is never preempted for fairness.
  EXPECT_EQ(Scheduler::RoundRobinByTenant({seqs_[0].get(), seqs_[1].get(), other}),
            (std::vector<Sequence*>{seqs_[0].get(), other, seqs_[1].get()}));
}

// Issue 11, defect 1 (KV blocks per uid): a tenant running something is admitted another
// sequence only while its running sequences' blocks_bound stay within the cap; another
// tenant is not held back by it, and the waiting one starts once its tenant makes room.
TEST_F(SchedulerTest, ATenantAtItsBlockCapWaitsAndOthersDoNot) {
  Init(256, 16,
       {.max_batch_tokens = 256,
        .prefill_chunk_tokens = 64,
        .max_running = 64,
        .max_blocks_per_tenant = 10});
  std::vector<Sequence*> mine;
  for (int i = 0; i < 3; ++i) {
    mine.push_back(AddSeq(Tokens(40), /*tenant_salt=*/1));
    mine.back()->blocks_bound = 4;  // 3 blocks of prompt + room to grow
  }
  Sequence* other = AddSeq(Tokens(40), /*tenant_salt=*/2);
  other->blocks_bound = 4;
  Step();
  EXPECT_EQ(mine[0]->status, SequenceStatus::kRunning);
  EXPECT_EQ(mine[1]->status, SequenceStatus::kRunning);
  EXPECT_EQ(mine[2]->status, SequenceStatus::kWaiting);  // 4 + 4 + 4 > 10
  EXPECT_EQ(other->status, SequenceStatus::kRunning);
  for (int i = 0; i < 3; ++i) Step();
  EXPECT_EQ(mine[2]->status, SequenceStatus::kWaiting);  // blocks are there; the cap is not
  sched_->Remove(mine[0]);
  Step();
  EXPECT_EQ(mine[2]->status, SequenceStatus::kRunning);
}

}  // namespace
}  // namespace kvkeep
