// SimHostLink (engine/sim_host_link.h): the simulator's two-way host link, checked against
// finish times worked out by hand for each case.
#include "engine/sim_host_link.h"

#include <gtest/gtest.h>

#include <vector>

namespace kvkeep {
namespace {

constexpr int kOut = SimHostLink::kOut, kIn = SimHostLink::kIn;
using Ids = std::vector<int32_t>;

TEST(SimHostLink, OneDirectionRunsItsBatchesOneAfterAnother) {
  SimHostLink link(0.7, 16, 16);
  link.Queue(0.0, kOut, 0.010, Ids{1}, Ids{1});
  link.Queue(0.002, kOut, 0.004, Ids{2}, Ids{2});
  EXPECT_DOUBLE_EQ(link.ReadyAt(0.0, Ids{1}), 0.010);
  EXPECT_DOUBLE_EQ(link.ReadyAt(0.0, Ids{2}), 0.014);
  EXPECT_DOUBLE_EQ(link.ReadyAt(0.0, Ids{3}), 0.0);  // no swap touches it
  EXPECT_DOUBLE_EQ(link.IdleAt(0.0), 0.014);
  EXPECT_TRUE(link.Busy(0.013));
  EXPECT_FALSE(link.Busy(0.015));
  // Issued after the link went idle: starts when issued.
  link.Queue(0.020, kIn, 0.005, Ids{4}, Ids{4});
  EXPECT_DOUBLE_EQ(link.ReadyAt(0.020, Ids{4}), 0.025);
}

TEST(SimHostLink, TheTwoDirectionsShareTheLink) {
  for (double share : {0.5, 0.68, 1.0}) {
    SimHostLink link(share, 16, 16);
    link.Queue(0.0, kOut, 0.010, Ids{1}, Ids{1});
    link.Queue(0.0, kIn, 0.010, Ids{2}, Ids{2});
    // Both move at `share` of their rate the whole time.
    EXPECT_NEAR(link.ReadyAt(0.0, Ids{1}), 0.010 / share, 1e-12) << share;
    EXPECT_NEAR(link.ReadyAt(0.0, Ids{2}), 0.010 / share, 1e-12) << share;
  }
  // Unequal batches at 0.5: both at half rate until the 4 ms swap-in is done at 8 ms (the
  // swap-out has then done 4 of its 10 ms), then the swap-out alone: 8 + 6 = 14 ms.
  SimHostLink link(0.5, 16, 16);
  link.Queue(0.0, kOut, 0.010, Ids{1}, Ids{1});
  link.Queue(0.0, kIn, 0.004, Ids{2}, Ids{2});
  EXPECT_NEAR(link.ReadyAt(0.0, Ids{2}), 0.008, 1e-12);
  EXPECT_NEAR(link.ReadyAt(0.0, Ids{1}), 0.014, 1e-12);
}

TEST(SimHostLink, ABatchQueuedLaterSlowsTheOtherDirection) {
  SimHostLink link(0.5, 16, 16);
  link.Queue(0.0, kOut, 0.010, Ids{1}, Ids{1});
  EXPECT_NEAR(link.ReadyAt(0.0, Ids{1}), 0.010, 1e-12);
  // At 6 ms the swap-out has 4 ms left; a 2 ms swap-in then shares the link: both at half
  // rate until it is done at 10 ms, the swap-out's last 2 ms alone: 12 ms.
  link.Queue(0.006, kIn, 0.002, Ids{2}, Ids{2});
  EXPECT_NEAR(link.ReadyAt(0.006, Ids{2}), 0.010, 1e-12);
  EXPECT_NEAR(link.ReadyAt(0.006, Ids{1}), 0.012, 1e-12);
  EXPECT_NEAR(link.IdleAt(0.006), 0.012, 1e-12);
}

TEST(SimHostLink, ASwapWaitsForTheOtherDirectionOverTheSameBlockOrSlot) {
  // A swap-in into the device block a swap-out still reads starts after it (alone, full
  // rate): 10 + 2 ms.
  SimHostLink by_block(0.5, 16, 16);
  by_block.Queue(0.0, kOut, 0.010, Ids{5}, Ids{1});
  by_block.Queue(0.0, kIn, 0.002, Ids{5}, Ids{2});
  EXPECT_NEAR(by_block.ReadyAt(0.0, Ids{5}), 0.012, 1e-12);
  // A swap-in from the host slot a swap-out still fills, into another block.
  SimHostLink by_slot(0.5, 16, 16);
  by_slot.Queue(0.0, kOut, 0.010, Ids{5}, Ids{3});
  by_slot.Queue(0.0, kIn, 0.002, Ids{6}, Ids{3});
  EXPECT_NEAR(by_slot.ReadyAt(0.0, Ids{6}), 0.012, 1e-12);
  EXPECT_NEAR(by_slot.ReadyAt(0.0, Ids{5}), 0.010, 1e-12);
  // A swap-out of a block a swap-in still writes, and a later, unrelated swap-in.
  SimHostLink chain(0.5, 16, 16);
  chain.Queue(0.0, kIn, 0.004, Ids{7}, Ids{1});   // in 1
  chain.Queue(0.0, kOut, 0.003, Ids{7}, Ids{2});  // waits for in 1
  chain.Queue(0.0, kIn, 0.001, Ids{8}, Ids{4});   // in 2, after in 1 on its stream
  // in 1 runs alone (the swap-out waits on it): 4 ms. Then the swap-out and in 2 share:
  // in 2 done at 4 + 2 = 6 ms (swap-out 1 ms done), the swap-out's last 2 ms alone: 8 ms.
  EXPECT_NEAR(chain.ReadyAt(0.0, Ids{8}), 0.006, 1e-12);
  EXPECT_NEAR(chain.ReadyAt(0.0, Ids{7}), 0.008, 1e-12);
}

}  // namespace
}  // namespace kvkeep
