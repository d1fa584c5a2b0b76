// VectorIndex: one session's segment vectors in FAISS, searched by inner product (the
// vectors are unit length, so this is cosine similarity).
//
// It is a faiss::IndexIDMap2 (ids are the caller's segment ids, reconstructible by id)
// over an exact IndexFlatIP while small; when the count passes options.hnsw_threshold it
// is rebuilt once over IndexHNSWFlat (inner product), which stays approximate from then
// on. Serialize() writes FAISS's own format; Restore() reads it back.
//
// FAISS throws; every call here catches and returns a Status.
// Thread-safety: none (callers serialise); distinct indexes are independent.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "base/status.h"

namespace faiss {
struct Index;
}

namespace kvkeep::index {

struct VectorIndexOptions {
  int64_t hnsw_threshold = 10000;  // switch to HNSW once more vectors than this are held
  int32_t hnsw_m = 32;             // HNSW graph degree
  int32_t hnsw_ef_construction = 64;
  int32_t hnsw_ef_search = 64;
};

struct SearchHit {
  int64_t id = 0;
  float score = 0.0f;  // inner product
};

class VectorIndex {
 public:
  static Result<std::unique_ptr<VectorIndex>> Create(int32_t dim, VectorIndexOptions options = {});
  // Reads what Serialize wrote. Corruption when the bytes are not a FAISS IDMap2 index.
  static Result<std::unique_ptr<VectorIndex>> Restore(const std::string& bytes,
                                                      VectorIndexOptions options = {});
  ~VectorIndex();
  VectorIndex(const VectorIndex&) = delete;
  VectorIndex& operator=(const VectorIndex&) = delete;

  int32_t dim() const { return dim_; }
  int64_t size() const;
  bool is_hnsw() const { return is_hnsw_; }

  // REQUIRES: vectors.size() == ids.size() * dim(); ids not already present.
  Status Add(const std::vector<int64_t>& ids, const std::vector<float>& vectors);
  // The top k by inner product, best first; fewer when the index holds fewer.
  Result<std::vector<SearchHit>> Search(const std::vector<float>& query, int32_t k) const;
  // The stored vector of id; NotFound when absent.
  Result<std::vector<float>> Reconstruct(int64_t id) const;
  Result<std::string> Serialize() const;

 private:
  VectorIndex(int32_t dim, VectorIndexOptions options, std::unique_ptr<faiss::Index> index,
              bool is_hnsw);
  Status MaybeSwitchToHnsw();

  int32_t dim_;
  VectorIndexOptions options_;
  std::unique_ptr<faiss::Index> index_;
  bool is_hnsw_;
};

}  // namespace kvkeep::index
