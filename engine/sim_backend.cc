#include "engine/sim_backend.h"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <chrono>
#include <thread>

namespace kvkeep {

double SimStepSeconds(const CostModel& cost, const ForwardBatch& batch) {
  int64_t decode_sequences = 0, decode_context_tokens = 0;
  std::vector<CostModel::PrefillRun> prefills;
  for (int32_t i = 0; i < batch.num_seqs(); ++i) {
    const int64_t n = batch.q_start[i + 1] - batch.q_start[i];
    const int64_t kv_len = batch.kv_len[i];
    if (IsDecodeRun(n, kv_len - n)) {
      ++decode_sequences;
      decode_context_tokens += kv_len;
    } else {
      prefills.push_back({n, kv_len - n});
    }
  }
  return cost.StepSeconds(decode_sequences, decode_context_tokens, prefills);
}

Result<std::unique_ptr<SimBackend>> SimBackend::Create(const SimBackendOptions& options) {
  if (options.num_kv_blocks < 1 || options.block_size < 1 || options.config.vocab_size < 1 ||
      options.kv_bytes_per_token < 1) {
    return Status::InvalidArgument(
        "sim backend: need num_kv_blocks, block_size, vocab_size and kv_bytes_per_token >= 1");
  }
  return std::unique_ptr<SimBackend>(new SimBackend(options));
}

SimBackend::SimBackend(const SimBackendOptions& options) : options_(options) {
  shape_.num_blocks = options.num_kv_blocks;
  shape_.block_size = options.block_size;
  shape_.num_layers = options.config.num_layers;
  shape_.num_kv_heads = options.config.num_kv_heads;
  shape_.head_dim = options.config.head_dim;
  block_bytes_ = static_cast<size_t>(options.kv_bytes_per_token) * options.block_size;
}

Status SimBackend::Forward(const ForwardBatch& batch, std::vector<float>* logits) {
  if (batch.q_start.size() != batch.kv_len.size() + 1 ||
      batch.q_start.back() != batch.num_tokens()) {
    return Status::InvalidArgument("sim backend: q_start does not match the batch");
  }
  for (int32_t i = 0; i < batch.num_seqs(); ++i) {
    const int32_t n = batch.q_start[i + 1] - batch.q_start[i];
    if (n < 1 || n > batch.kv_len[i]) {
      return Status::InvalidArgument("sim backend: a run of " + std::to_string(n) +
                                     " tokens with kv_len " + std::to_string(batch.kv_len[i]));
    }
    if (IsDecodeRun(n, batch.kv_len[i] - n)) {
      ++counters_.decode_tokens;
    } else {
      counters_.prefill_tokens += n;
    }
  }
  const double step_s = SimStepSeconds(options_.cost, batch);
  Wait(WaitForSwaps(batch));
  pending_s_ += step_s;
  counters_.busy_s += step_s;
  ++counters_.steps;
  if (options_.spend) options_.spend(TakeElapsedSeconds());
  counters_.sampled_rows += static_cast<int64_t>(batch.logit_rows.size());
  logits->assign(batch.logit_rows.size() * static_cast<size_t>(options_.config.vocab_size), 0.0f);
  return Status::OK();
}

Status SimBackend::CopyBlocks(const std::vector<std::pair<int32_t, int32_t>>& src_dst) {
  for (auto [src, dst] : src_dst) {
    RETURN_IF_ERROR(CheckBlockId(shape_, src));
    RETURN_IF_ERROR(CheckBlockId(shape_, dst));
  }
  return Status::OK();
}

Status SimBackend::ReadBlock(int32_t block_id, void*) { return CheckBlockId(shape_, block_id); }
Status SimBackend::WriteBlock(int32_t block_id, const void*) {
  return CheckBlockId(shape_, block_id);
}

Status SimBackend::AllocateHostTier(int32_t num_blocks) {
  if (num_blocks < 0 || num_host_blocks_ != 0) {
    return Status::InvalidArgument("host tier: allocated twice or negative size");
  }
  num_host_blocks_ = num_blocks;  // bookkeeping only: no bytes
  if (options_.clock != nullptr) {
    link_ = std::make_unique<SimHostLink>(options_.duplex_share, shape_.num_blocks, num_blocks);
  }
  return Status::OK();
}

double SimBackend::SwapSeconds(size_t num_blocks) const {
  if (options_.host_bytes_per_s <= 0) return 0;
  return static_cast<double>(num_blocks) * static_cast<double>(block_bytes_) /
         options_.host_bytes_per_s;
}

Result<TransferFence> SimBackend::SwapOut(
    std::span<const std::pair<int32_t, int32_t>> device_host) {
  RETURN_IF_ERROR(QueueSwap(SimHostLink::kOut, device_host));
  counters_.swapped_out_blocks += static_cast<int64_t>(device_host.size());
  return TransferFence{};
}

Result<TransferFence> SimBackend::SwapIn(std::span<const std::pair<int32_t, int32_t>> host_device) {
  RETURN_IF_ERROR(QueueSwap(SimHostLink::kIn, host_device));
  counters_.swapped_in_blocks += static_cast<int64_t>(host_device.size());
  return TransferFence{};
}

Status SimBackend::WaitFence(TransferFence) {
  if (link_ != nullptr) {
    const double now = NowSeconds();
    Wait(link_->IdleAt(now) - now);
  }
  return Status::OK();
}

Status SimBackend::QueueSwap(int direction, std::span<const std::pair<int32_t, int32_t>> pairs) {
  const bool out = direction == SimHostLink::kOut;  // pairs are (device, host); else (host, device)
  std::vector<int32_t> blocks, slots;
  for (auto [src, dst] : pairs) {
    const int32_t device = out ? src : dst, host = out ? dst : src;
    RETURN_IF_ERROR(CheckBlockId(shape_, device));
    if (host < 0 || host >= num_host_blocks_) return Status::InvalidArgument("bad host slot");
    blocks.push_back(device);
    slots.push_back(host);
  }
  const double s = SwapSeconds(blocks.size());
  counters_.swap_s += s;
  if (link_ == nullptr) {  // the step waits for it
    Wait(s);
  } else {
    link_->Queue(NowSeconds(), direction, s, blocks, slots);
  }
  return Status::OK();
}

double SimBackend::WaitForSwaps(const ForwardBatch& batch) {
  if (link_ == nullptr) return 0;
  const double now = NowSeconds();
  if (!link_->Busy(now)) return 0;  // the common case: nothing in flight
  return link_->ReadyAt(now, BlocksTouched(batch, shape_.block_size)) - now;
}

double SimBackend::NowSeconds() const {
  return static_cast<double>(options_.clock->NowMicros()) * 1e-6 + pending_s_;
}

void SimBackend::Wait(double seconds) {
  if (!(seconds > 0)) return;
  pending_s_ += seconds;
  counters_.busy_s += seconds;
  counters_.swap_wait_s += seconds;
}

Result<std::unique_ptr<Backend>> CreatePacedSimBackend(Env* env, const ModelConfig& config,
                                                       const BackendOptions& options,
                                                       const std::string& cost_model_path) {
  ASSIGN_OR_RETURN(CostModel cost, LoadCostModel(env, cost_model_path));
  if (cost.kv_bytes_per_token < 1) {
    return Status::InvalidArgument(cost_model_path + ": no kv_bytes_per_token");
  }
  SimBackendOptions o;
  o.config = config;
  o.block_size = options.block_size;
  o.kv_bytes_per_token = cost.kv_bytes_per_token;
  const int64_t block_bytes = cost.kv_bytes_per_token * std::max(options.block_size, 1);
  o.num_kv_blocks = options.num_kv_blocks > 0
                        ? options.num_kv_blocks
                        : static_cast<int32_t>(static_cast<int64_t>(options.kv_memory_bytes) /
                                               std::max<int64_t>(block_bytes, 1));
  o.cost = cost;
  o.host_bytes_per_s = cost.host_to_device_bytes_per_s;
  if (cost.host_duplex_share > 0) o.duplex_share = cost.host_duplex_share;
  o.clock = SystemClock();  // the engine's: swaps overlap the steps, as on CUDA
  o.spend = [](double seconds) {
    std::this_thread::sleep_for(std::chrono::duration<double>(seconds));
  };
  spdlog::warn(
      "TESTING: the engine runs over the simulator backend priced by {} ({}), in real "
      "time: {} KV blocks",
      cost_model_path, cost.source, o.num_kv_blocks);
  ASSIGN_OR_RETURN(std::unique_ptr<SimBackend> sim, SimBackend::Create(o));
  return std::unique_ptr<Backend>(std::move(sim));
}

double SimBackend::TakeElapsedSeconds() {
  const double s = pending_s_;
  pending_s_ = 0;
  return s;
}

}  // namespace kvkeep
