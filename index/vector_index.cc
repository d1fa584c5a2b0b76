#include "index/vector_index.h"

#include <faiss/IndexFlat.h>
#include <faiss/IndexHNSW.h>
#include <faiss/IndexIDMap.h>
#include <faiss/IndexIVFFlat.h>
#include <faiss/impl/FaissException.h>
#include <faiss/impl/io.h>
#include <faiss/index_io.h>

#include <algorithm>
#include <cmath>

namespace kvkeep::index {
namespace {

using idx_t = faiss::Index::idx_t;

std::unique_ptr<faiss::IndexIDMap2> MakeFlat(int32_t dim) {
  auto idmap = std::make_unique<faiss::IndexIDMap2>(new faiss::IndexFlatIP(dim));
  idmap->own_fields = true;
  return idmap;
}

std::unique_ptr<faiss::IndexIDMap2> MakeHnsw(int32_t dim, const VectorIndexOptions& o) {
  auto* hnsw = new faiss::IndexHNSWFlat(dim, o.hnsw_m, faiss::METRIC_INNER_PRODUCT);
  hnsw->hnsw.efConstruction = o.hnsw_ef_construction;
  hnsw->hnsw.efSearch = o.hnsw_ef_search;
  auto idmap = std::make_unique<faiss::IndexIDMap2>(hnsw);
  idmap->own_fields = true;
  return idmap;
}

// An IVF-Flat index over n vectors (row-major), its quantizer trained on an evenly spaced
// sample of them (k-means with FAISS's fixed seed).
std::unique_ptr<faiss::IndexIDMap2> MakeIvf(int32_t dim, const VectorIndexOptions& o, idx_t n,
                                            const float* vectors) {
  const int64_t lists = o.ivf_lists > 0
                            ? o.ivf_lists
                            : std::max<int64_t>(1, std::llround(std::sqrt(static_cast<double>(n))));
  auto* ivf = new faiss::IndexIVFFlat(new faiss::IndexFlatIP(dim), dim, static_cast<size_t>(lists),
                                      faiss::METRIC_INNER_PRODUCT);
  ivf->own_fields = true;
  ivf->nprobe = static_cast<size_t>(std::max(1, o.ivf_probe));
  ivf->make_direct_map(true);  // Reconstruct by id
  auto idmap = std::make_unique<faiss::IndexIDMap2>(ivf);
  idmap->own_fields = true;
  const int64_t sample = std::min<int64_t>(n, lists * std::max(1, o.ivf_train_per_list));
  std::vector<float> train(static_cast<size_t>(sample) * dim);
  for (int64_t i = 0; i < sample; ++i) {
    const int64_t row = i * n / sample;
    std::copy_n(vectors + row * dim, dim, train.begin() + i * dim);
  }
  ivf->cp.verbose = false;
  ivf->train(sample, train.data());
  return idmap;
}

}  // namespace

VectorIndex::VectorIndex(int32_t dim, VectorIndexOptions options,
                         std::unique_ptr<faiss::Index> index, Kind kind)
    : dim_(dim), options_(options), index_(std::move(index)), kind_(kind) {}

const char* VectorIndex::kind_name() const {
  switch (kind_) {
    case Kind::kFlat:
      return "flat";
    case Kind::kIvfFlat:
      return "ivf_flat";
    case Kind::kHnsw:
      return "hnsw";
  }
  return "flat";
}

VectorIndex::~VectorIndex() = default;

Result<std::unique_ptr<VectorIndex>> VectorIndex::Create(int32_t dim, VectorIndexOptions options) {
  if (dim <= 0) return Status::InvalidArgument("vector index: dim must be positive");
  try {
    return std::unique_ptr<VectorIndex>(new VectorIndex(dim, options, MakeFlat(dim), Kind::kFlat));
  } catch (const std::exception& e) {
    return Status::Internal(std::string("faiss: ") + e.what());
  }
}

int64_t VectorIndex::size() const { return index_->ntotal; }

Status VectorIndex::Add(const std::vector<int64_t>& ids, const std::vector<float>& vectors) {
  if (vectors.size() != ids.size() * static_cast<size_t>(dim_)) {
    return Status::InvalidArgument("vector index: " + std::to_string(vectors.size()) +
                                   " floats for " + std::to_string(ids.size()) + " ids of dim " +
                                   std::to_string(dim_));
  }
  if (ids.empty()) return Status::OK();
  auto* idmap = static_cast<faiss::IndexIDMap2*>(index_.get());
  for (int64_t id : ids) {
    if (idmap->rev_map.count(id)) {
      return Status::AlreadyExists("vector index: id " + std::to_string(id) + " already present");
    }
  }
  try {
    std::vector<idx_t> faiss_ids(ids.begin(), ids.end());
    index_->add_with_ids(static_cast<idx_t>(ids.size()), vectors.data(), faiss_ids.data());
  } catch (const std::exception& e) {
    return Status::Internal(std::string("faiss add: ") + e.what());
  }
  return MaybeSwitchToAnn();
}

Status VectorIndex::MaybeSwitchToAnn() {
  if (kind_ != Kind::kFlat || index_->ntotal <= options_.ann_threshold) return Status::OK();
  try {
    auto* flat = static_cast<faiss::IndexIDMap2*>(index_.get());
    const idx_t n = flat->ntotal;
    std::vector<float> vectors(static_cast<size_t>(n) * dim_);
    flat->index->reconstruct_n(0, n, vectors.data());
    const bool ivf = options_.ann == AnnKind::kIvfFlat;
    std::unique_ptr<faiss::IndexIDMap2> ann =
        ivf ? MakeIvf(dim_, options_, n, vectors.data()) : MakeHnsw(dim_, options_);
    ann->add_with_ids(n, vectors.data(), flat->id_map.data());
    index_ = std::move(ann);
    kind_ = ivf ? Kind::kIvfFlat : Kind::kHnsw;
  } catch (const std::exception& e) {
    return Status::Internal(std::string("faiss approximate rebuild: ") + e.what());
  }
  return Status::OK();
}

Result<std::vector<SearchHit>> VectorIndex::Search(const std::vector<float>& query,
                                                   int32_t k) const {
  if (query.size() != static_cast<size_t>(dim_)) {
    return Status::InvalidArgument("vector index: query has " + std::to_string(query.size()) +
                                   " floats, index dim is " + std::to_string(dim_));
  }
  if (k <= 0) return Status::InvalidArgument("vector index: k must be positive");
  const int64_t want = std::min<int64_t>(k, index_->ntotal);
  std::vector<SearchHit> hits;
  if (want == 0) return hits;
  std::vector<float> scores(static_cast<size_t>(want));
  std::vector<idx_t> labels(static_cast<size_t>(want));
  try {
    index_->search(1, query.data(), want, scores.data(), labels.data());
  } catch (const std::exception& e) {
    return Status::Internal(std::string("faiss search: ") + e.what());
  }
  for (int64_t i = 0; i < want; ++i) {
    if (labels[i] < 0) break;  // an approximate index may return fewer than asked
    hits.push_back({labels[i], scores[i]});
  }
  return hits;
}

Result<std::vector<float>> VectorIndex::Reconstruct(int64_t id) const {
  auto* idmap = static_cast<faiss::IndexIDMap2*>(index_.get());
  if (!idmap->rev_map.count(id)) {
    return Status::NotFound("vector index: no id " + std::to_string(id));
  }
  std::vector<float> v(static_cast<size_t>(dim_));
  try {
    idmap->reconstruct(id, v.data());
  } catch (const std::exception& e) {
    return Status::Internal(std::string("faiss reconstruct: ") + e.what());
  }
  return v;
}

Result<std::string> VectorIndex::Serialize() const {
  try {
    faiss::VectorIOWriter writer;
    faiss::write_index(index_.get(), &writer);
    return std::string(writer.data.begin(), writer.data.end());
  } catch (const std::exception& e) {
    return Status::Internal(std::string("faiss write: ") + e.what());
  }
}

Result<std::unique_ptr<VectorIndex>> VectorIndex::Restore(const std::string& bytes,
                                                          VectorIndexOptions options) {
  std::unique_ptr<faiss::Index> index;
  try {
    faiss::VectorIOReader reader;
    reader.data.assign(bytes.begin(), bytes.end());
    index.reset(faiss::read_index(&reader));
  } catch (const std::exception& e) {
    return Status::Corruption(std::string("vector index: unreadable FAISS bytes: ") + e.what());
  }
  auto* idmap = dynamic_cast<faiss::IndexIDMap2*>(index.get());
  if (idmap == nullptr || idmap->metric_type != faiss::METRIC_INNER_PRODUCT) {
    return Status::Corruption("vector index: bytes are not an inner-product IndexIDMap2");
  }
  Kind kind = Kind::kFlat;
  if (auto* hnsw = dynamic_cast<faiss::IndexHNSW*>(idmap->index)) {
    hnsw->hnsw.efSearch = options.hnsw_ef_search;
    kind = Kind::kHnsw;
  } else if (auto* ivf = dynamic_cast<faiss::IndexIVFFlat*>(idmap->index)) {
    if (ivf->metric_type != faiss::METRIC_INNER_PRODUCT || !ivf->is_trained) {
      return Status::Corruption("vector index: IVF index untrained or not inner product");
    }
    ivf->nprobe = static_cast<size_t>(std::max(1, options.ivf_probe));
    ivf->make_direct_map(true);  // Reconstruct by id
    kind = Kind::kIvfFlat;
  } else if (dynamic_cast<faiss::IndexFlat*>(idmap->index) == nullptr) {
    return Status::Corruption("vector index: inner index is neither flat, IVF-Flat nor HNSW");
  }
  const auto dim = static_cast<int32_t>(idmap->d);
  return std::unique_ptr<VectorIndex>(new VectorIndex(dim, options, std::move(index), kind));
}

}  // namespace kvkeep::index
