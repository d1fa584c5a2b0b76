// MeasureTierBandwidths (engine/cost_calibration.h) with a fake clock: a backend whose
// WriteBlock and a file whose ReadAt advance the clock by bytes / a known bandwidth, so the
// measured figures must equal those bandwidths; the fitted cost model then prices a reload
// from them.
#include <gtest/gtest.h>

#include <algorithm>
#include <memory>
#include <set>
#include <span>
#include <utility>
#include <vector>

#include "base/clock.h"
#include "base/file.h"
#include "engine/cost_calibration.h"
#include "policy/ttl_policy.h"
#include "tests/testlib/test_util.h"

namespace kvkeep {
namespace {

constexpr double kHostBytesPerS = 8.192e9;  // 4 us a 32 KiB block: whole micros
constexpr double kDiskBytesPerS = 2.048e9;  // 16 us a block

int64_t Micros(size_t bytes, double bytes_per_s) {
  return static_cast<int64_t>(static_cast<double>(bytes) * 1e6 / bytes_per_s);
}

// A device pool that only counts: WriteBlock and ReadBlock cost block_bytes at
// kHostBytesPerS (so do the default swaps, which copy through them and complete before
// they return).
class TimedBackend : public Backend {
 public:
  explicit TimedBackend(FakeClock* clock) : clock_(clock) {
    shape_.num_blocks = 128;
    shape_.num_layers = 4;
    shape_.num_kv_heads = 2;
    shape_.block_size = 16;
    shape_.head_dim = 64;
  }
  std::string name() const override { return "timed"; }
  const ModelConfig& config() const override { return config_; }
  const KvPoolShape& kv_shape() const override { return shape_; }
  Status Forward(const ForwardBatch&, std::vector<float>*) override {
    return Status::Internal("not a model");
  }
  Status CopyBlocks(const std::vector<std::pair<int32_t, int32_t>>&) override {
    return Status::OK();
  }
  size_t block_bytes() const override { return shape_.block_stride() * sizeof(uint16_t); }
  Status ReadBlock(int32_t block_id, void*) override {
    if (block_id < 0 || block_id >= shape_.num_blocks) return Status::InvalidArgument("block");
    clock_->AdvanceMicros(Micros(block_bytes(), kHostBytesPerS));
    return Status::OK();
  }
  Status WriteBlock(int32_t block_id, const void*) override {
    if (block_id < 0 || block_id >= shape_.num_blocks) return Status::InvalidArgument("block");
    ++writes;
    clock_->AdvanceMicros(Micros(block_bytes(), kHostBytesPerS));
    return Status::OK();
  }
  int writes = 0;

 private:
  FakeClock* clock_;
  ModelConfig config_;
  KvPoolShape shape_;
};

// The real filesystem, with reads that cost their bytes at kDiskBytesPerS on the clock.
class TimedReadFile final : public RandomRWFile {
 public:
  TimedReadFile(std::unique_ptr<RandomRWFile> file, FakeClock* clock)
      : file_(std::move(file)), clock_(clock) {}
  Status ReadAt(uint64_t offset, void* dst, size_t n) override {
    clock_->AdvanceMicros(Micros(n, kDiskBytesPerS));
    return file_->ReadAt(offset, dst, n);
  }
  Status WriteAt(uint64_t offset, const void* src, size_t n) override {
    return file_->WriteAt(offset, src, n);
  }
  Result<uint64_t> Size() override { return file_->Size(); }

 private:
  std::unique_ptr<RandomRWFile> file_;
  FakeClock* clock_;
};

class TimedEnv final : public Env {
 public:
  explicit TimedEnv(FakeClock* clock) : clock_(clock) {}
  Result<std::string> ReadFile(const std::string& p) override { return base_->ReadFile(p); }
  Status WriteFileAtomic(const std::string& p, std::string_view c) override {
    return base_->WriteFileAtomic(p, c);
  }
  Result<std::unique_ptr<MappedFile>> MapFile(const std::string& p) override {
    return base_->MapFile(p);
  }
  bool FileExists(const std::string& p) override { return base_->FileExists(p); }
  Status CreateDirs(const std::string& p, int mode) override { return base_->CreateDirs(p, mode); }
  Result<std::vector<std::string>> ListDir(const std::string& p) override {
    return base_->ListDir(p);
  }
  Status RemoveFile(const std::string& p) override { return base_->RemoveFile(p); }
  std::string GetEnvVar(const char* name) override { return base_->GetEnvVar(name); }
  Result<std::unique_ptr<RandomRWFile>> OpenRandomRWFile(const std::string& p,
                                                         bool create) override {
    ASSIGN_OR_RETURN(std::unique_ptr<RandomRWFile> f, base_->OpenRandomRWFile(p, create));
    return std::unique_ptr<RandomRWFile>(new TimedReadFile(std::move(f), clock_));
  }

 private:
  Env* base_ = DefaultEnv();
  FakeClock* clock_;
};

TEST(TierBandwidth, MeasuresHostAndDiskReloadBandwidthsOnTheClock) {
  FakeClock clock;
  TimedBackend backend(&clock);
  TimedEnv env(&clock);
  testing::TempDir dir;
  TierBandwidthOptions o;
  o.blocks = 32;
  o.scratch_dir = dir.File("state");
  Result<TierBandwidths> r = MeasureTierBandwidths(&backend, &env, &clock, o);
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  const TierBandwidths& bw = *r;
  EXPECT_EQ(backend.writes, 32);
  EXPECT_EQ(bw.bytes_timed, 32 * static_cast<int64_t>(backend.block_bytes()));
  EXPECT_EQ(bw.kv_bytes_per_token, static_cast<int64_t>(backend.block_bytes()) / 16);
  EXPECT_NEAR(bw.host_to_device_bytes_per_s / kHostBytesPerS, 1.0, 1e-3);
  // Disk to device is the disk read, then the host copy.
  const double disk_then_host = 1.0 / (1.0 / kDiskBytesPerS + 1.0 / kHostBytesPerS);
  EXPECT_NEAR(bw.disk_to_device_bytes_per_s / disk_then_host, 1.0, 1e-3);
  EXPECT_FALSE(DefaultEnv()->FileExists(o.scratch_dir + "/bandwidth_probe.tmp"))
      << "the probe file is removed";

  // The TTL rule prices a host reload of 4,096 tokens of KV at
  // the measured bandwidth; from disk when the host tier has no room.
  CostModel m;
  m.prefill_per_token_s = 1e-4;
  m.kv_bytes_per_token = bw.kv_bytes_per_token;
  m.host_to_device_bytes_per_s = bw.host_to_device_bytes_per_s;
  m.disk_to_device_bytes_per_s = bw.disk_to_device_bytes_per_s;
  PinCandidate c;
  c.context_tokens = 4096;
  c.host_has_room = true;
  const HitBenefit host = ComputeHitBenefit(m, c);
  EXPECT_EQ(host.rebuild_from, RebuildSource::kHost);
  EXPECT_NEAR(host.rebuild_s, 4096.0 * bw.kv_bytes_per_token / kHostBytesPerS, 1e-9);
  c.host_has_room = false;
  c.disk_has_room = true;
  const HitBenefit disk = ComputeHitBenefit(m, c);
  EXPECT_EQ(disk.rebuild_from, RebuildSource::kDisk);
  EXPECT_NEAR(disk.rebuild_s, 4096.0 * bw.kv_bytes_per_token / disk_then_host, 1e-9);
}

// With the host tier's size, the probe allocates it and times the backend's swaps: this
// backend's swaps copy through WriteBlock and ReadBlock and complete before they return,
// so the two directions only take turns, and the host figure is the swaps' rate.
TEST(TierBandwidth, TimesTheHostLinkThroughTheBackendsSwaps) {
  FakeClock clock;
  TimedBackend backend(&clock);
  TimedEnv env(&clock);
  TierBandwidthOptions o;
  o.blocks = 16;
  o.host_blocks = 40;  // swaps of 20 blocks: half the tier, above `blocks`
  Result<TierBandwidths> r = MeasureTierBandwidths(&backend, &env, &clock, o);
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ(backend.num_host_blocks(), 40) << "allocated for the engine";
  EXPECT_EQ(r->host_duplex_share, 0.5);
  EXPECT_EQ(r->swap_bytes_timed, 20 * static_cast<int64_t>(backend.block_bytes()));
  EXPECT_NEAR(r->host_to_device_bytes_per_s / kHostBytesPerS, 1.0, 1e-3);
  EXPECT_EQ(backend.writes, 3 * (20 + 20))
      << "three swap-ins alone and three with swap-outs; no WriteBlock probe beside them";
  // Without it, nothing is allocated and the swaps are not timed.
  TimedBackend untouched(&clock);
  r = MeasureTierBandwidths(&untouched, &env, &clock, {});
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ(untouched.num_host_blocks(), 0);
  EXPECT_EQ(r->host_duplex_share, 0.0);
  EXPECT_EQ(r->swap_bytes_timed, 0);
}

// Swaps that move at a rate of their own (the CUDA backend's from pinned memory, against
// WriteBlock's from pageable memory) and that overlap when queued together: the host
// figure is the swap-in's rate, and the duplex share is what the overlap gives.
class OverlappingSwapsBackend final : public TimedBackend {
 public:
  static constexpr double kSwapBytesPerS = 4 * kHostBytesPerS;  // 1 us a block
  explicit OverlappingSwapsBackend(FakeClock* clock) : TimedBackend(clock), clock_(clock) {}
  // Each batch takes its bytes at kSwapBytesPerS; one queued while the other direction's
  // is pending adds only half its time (a duplex share of 2/3 when both are equal).
  Result<TransferFence> SwapOut(std::span<const std::pair<int32_t, int32_t>> p) override {
    return Queue(p.size());
  }
  Result<TransferFence> SwapIn(std::span<const std::pair<int32_t, int32_t>> p) override {
    return Queue(p.size());
  }
  Status WaitFence(TransferFence) override {
    pending_ = false;
    return Status::OK();
  }

 private:
  Result<TransferFence> Queue(size_t blocks) {
    const int64_t us = Micros(blocks * block_bytes(), kSwapBytesPerS);
    clock_->AdvanceMicros(pending_ ? us / 2 : us);
    pending_ = true;
    return TransferFence{};
  }
  FakeClock* clock_;
  bool pending_ = false;
};

TEST(TierBandwidth, TheHostFigureIsTheSwapInRateAndTheShareTheirOverlap) {
  FakeClock clock;
  OverlappingSwapsBackend backend(&clock);
  TimedEnv env(&clock);
  TierBandwidthOptions o;
  o.blocks = 8;
  o.host_blocks = 64;  // swaps of 32 blocks
  Result<TierBandwidths> r = MeasureTierBandwidths(&backend, &env, &clock, o);
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_NEAR(r->host_to_device_bytes_per_s / OverlappingSwapsBackend::kSwapBytesPerS, 1.0, 1e-3);
  EXPECT_NEAR(r->host_duplex_share, 32.0 / 48.0, 1e-9);
  // min_swap_bytes below a block still times `blocks` blocks.
  o.min_swap_bytes = 1;
  OverlappingSwapsBackend again(&clock);
  r = MeasureTierBandwidths(&again, &env, &clock, o);
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ(r->swap_bytes_timed, 8 * static_cast<int64_t>(again.block_bytes()));
}

// Swaps that only record their pairs.
class RecordingSwapsBackend final : public TimedBackend {
 public:
  using TimedBackend::TimedBackend;
  using Pairs = std::vector<std::pair<int32_t, int32_t>>;
  Result<TransferFence> SwapOut(std::span<const std::pair<int32_t, int32_t>> p) override {
    outs.emplace_back(p.begin(), p.end());
    return TransferFence{};
  }
  Result<TransferFence> SwapIn(std::span<const std::pair<int32_t, int32_t>> p) override {
    ins.emplace_back(p.begin(), p.end());
    return TransferFence{};
  }
  Status WaitFence(TransferFence) override { return Status::OK(); }
  std::vector<Pairs> outs, ins;
};

// Sorted, with no two neighbours one apart: a backend that merges adjacent blocks into one
// copy (CUDA's SwapBlocks) copies each block on its own.
bool NoneAdjacent(std::vector<int32_t> v) {
  std::sort(v.begin(), v.end());
  for (size_t i = 1; i < v.size(); ++i) {
    if (v[i] - v[i - 1] <= 1) return false;
  }
  return true;
}

TEST(TierBandwidth, TheTimedSwapsMoveScatteredBlocksAsPromotionsDo) {
  FakeClock clock;
  RecordingSwapsBackend backend(&clock);
  TimedEnv env(&clock);
  TierBandwidthOptions o;
  o.blocks = 16;
  o.host_blocks = 64;  // swaps of 32 blocks: all 64 slots and half the 128-block pool
  ASSERT_TRUE(MeasureTierBandwidths(&backend, &env, &clock, o).ok());
  ASSERT_EQ(backend.outs.size(), 6u) << "three alone, three beside the swap-ins";
  ASSERT_EQ(backend.ins.size(), 6u);
  const RecordingSwapsBackend::Pairs& out = backend.outs[0];
  const RecordingSwapsBackend::Pairs& in = backend.ins[0];
  ASSERT_EQ(out.size(), 32u);
  ASSERT_EQ(in.size(), 32u);
  std::vector<int32_t> blocks[2], slots[2];  // per direction
  for (const auto& [block, slot] : out) {
    blocks[0].push_back(block);
    slots[0].push_back(slot);
  }
  for (const auto& [slot, block] : in) {
    blocks[1].push_back(block);
    slots[1].push_back(slot);
  }
  std::set<int32_t> all_blocks, all_slots;
  for (int d = 0; d < 2; ++d) {
    EXPECT_TRUE(NoneAdjacent(blocks[d])) << "direction " << d;
    EXPECT_TRUE(NoneAdjacent(slots[d])) << "direction " << d;
    all_blocks.insert(blocks[d].begin(), blocks[d].end());
    all_slots.insert(slots[d].begin(), slots[d].end());
    for (int32_t b : blocks[d]) EXPECT_TRUE(b >= 0 && b < backend.kv_shape().num_blocks) << b;
    for (int32_t s : slots[d]) EXPECT_TRUE(s >= 0 && s < o.host_blocks) << s;
  }
  EXPECT_EQ(all_blocks.size(), 64u) << "the directions touch disjoint blocks";
  EXPECT_EQ(all_slots.size(), 64u) << "and disjoint slots";
}

TEST(TierBandwidth, WithoutAScratchDirTheDiskIsNotMeasured) {
  FakeClock clock;
  TimedBackend backend(&clock);
  TimedEnv env(&clock);
  Result<TierBandwidths> r = MeasureTierBandwidths(&backend, &env, &clock, {});
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  const TierBandwidths& bw = *r;
  EXPECT_GT(bw.host_to_device_bytes_per_s, 0);
  EXPECT_EQ(bw.disk_to_device_bytes_per_s, 0) << "0: not measured, never used to price";
}

TEST(TierBandwidth, AClockThatDoesNotMoveMeasuresNothing) {
  FakeClock clock;
  FakeClock frozen;  // the probe's clock never moves
  TimedBackend backend(&clock);
  TimedEnv env(&clock);
  testing::TempDir dir;
  TierBandwidthOptions o;
  o.scratch_dir = dir.path();
  Result<TierBandwidths> r = MeasureTierBandwidths(&backend, &env, &frozen, o);
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  const TierBandwidths& bw = *r;
  EXPECT_EQ(bw.host_to_device_bytes_per_s, 0);
  EXPECT_EQ(bw.disk_to_device_bytes_per_s, 0);
}

}  // namespace
}  // namespace kvkeep
