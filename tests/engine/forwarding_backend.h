// ForwardingBackend: a test Backend that hands every call of the model and its KV blocks
// to a wrapped backend; a test derives from it and overrides the one call it observes or
// alters (counting forwarded tokens, corrupting logits).
#pragma once

#include <memory>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "engine/backend.h"

namespace kvkeep::enginetest {

class ForwardingBackend : public Backend {
 public:
  explicit ForwardingBackend(std::unique_ptr<Backend> inner) : inner_(std::move(inner)) {}
  std::string name() const override { return inner_->name(); }
  const ModelConfig& config() const override { return inner_->config(); }
  const KvPoolShape& kv_shape() const override { return inner_->kv_shape(); }
  Status Forward(const ForwardBatch& batch, std::vector<float>* logits) override {
    return inner_->Forward(batch, logits);
  }
  Status ForwardScored(const ForwardBatch& batch, int32_t num_scored, std::vector<float>* logits,
                       std::vector<float>* scores) override {
    return inner_->ForwardScored(batch, num_scored, logits, scores);
  }
  Status CopyBlocks(const std::vector<std::pair<int32_t, int32_t>>& src_dst) override {
    return inner_->CopyBlocks(src_dst);
  }
  size_t block_bytes() const override { return inner_->block_bytes(); }
  Status ReadBlock(int32_t block_id, void* dst) override {
    return inner_->ReadBlock(block_id, dst);
  }
  Status WriteBlock(int32_t block_id, const void* src) override {
    return inner_->WriteBlock(block_id, src);
  }
  Status CompactKv(std::span<const int32_t> table, int32_t num_entries,
                   std::span<const int32_t> keep, int32_t num_keep) override {
    return inner_->CompactKv(table, num_entries, keep, num_keep);
  }
  Status CompactKvLayers(std::span<const int32_t> table, std::span<const int32_t> num_entries,
                         std::span<const int32_t> keep,
                         std::span<const int32_t> num_keep) override {
    return inner_->CompactKvLayers(table, num_entries, keep, num_keep);
  }

 private:
  std::unique_ptr<Backend> inner_;
};

}  // namespace kvkeep::enginetest
