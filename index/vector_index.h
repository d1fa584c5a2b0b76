// VectorIndex: one session's segment vectors in FAISS, searched by inner product (the
// vectors are unit length, so this is cosine similarity).
//
// It is a faiss::IndexIDMap2 (ids are the caller's segment ids, reconstructible by id)
// over an exact IndexFlatIP while small; when the count passes options.ann_threshold it
// is rebuilt once over an approximate index, which it stays from then on:
//   - kIvfFlat (the default): IndexIVFFlat (inner product) with ivf_lists lists (0:
//     sqrt(n) at the rebuild), its coarse quantizer trained by k-means on at most
//     ivf_train_per_list vectors per list of those held, ivf_probe lists searched;
//   - kHnsw: IndexHNSWFlat (inner product, hnsw_m, efConstruction, efSearch).
// Chosen by bench/episodes_bench (bench/RESULTS.md, "HNSW and IVF-Flat at 100k"): on
// clustered vectors with queries near stored ones, IVF-Flat reaches HNSW's recall@1
// (0.97) with a 19x cheaper build and 6x cheaper search.
// Serialize() writes FAISS's own format; Restore() reads it back.
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

enum class AnnKind { kIvfFlat, kHnsw };

struct VectorIndexOptions {
  int64_t ann_threshold = 10000;  // rebuild as `ann` once more vectors than this are held
  AnnKind ann = AnnKind::kIvfFlat;
  int32_t ivf_lists = 0;            // 0: sqrt(vectors held at the rebuild), at least 1
  int32_t ivf_probe = 16;           // lists searched per query
  int32_t ivf_train_per_list = 64;  // k-means sample: at most this many vectors per list
  int32_t hnsw_m = 32;              // HNSW graph degree
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
  // Past the threshold: an approximate (IVF-Flat or HNSW) index.
  bool is_approximate() const { return kind_ != Kind::kFlat; }
  // "flat", "ivf_flat" or "hnsw".
  const char* kind_name() const;

  // REQUIRES: vectors.size() == ids.size() * dim(); ids not already present.
  Status Add(const std::vector<int64_t>& ids, const std::vector<float>& vectors);
  // The top k by inner product, best first; fewer when the index holds fewer.
  Result<std::vector<SearchHit>> Search(const std::vector<float>& query, int32_t k) const;
  // The stored vector of id; NotFound when absent.
  Result<std::vector<float>> Reconstruct(int64_t id) const;
  Result<std::string> Serialize() const;

 private:
  enum class Kind { kFlat, kIvfFlat, kHnsw };
  VectorIndex(int32_t dim, VectorIndexOptions options, std::unique_ptr<faiss::Index> index,
              Kind kind);
  Status MaybeSwitchToAnn();

  int32_t dim_;
  VectorIndexOptions options_;
  std::unique_ptr<faiss::Index> index_;
  Kind kind_;
};

}  // namespace kvkeep::index
