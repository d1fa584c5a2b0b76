#include "daemon/episode_state.h"

#include <algorithm>
#include <chrono>
#include <cstring>
#include <string_view>

#include "base/hash64.h"
#include "index/embedder.h"

namespace kvkeep {
namespace {

constexpr uint32_t kVersion = 1;
constexpr size_t kHeaderBytes = 4 + 4 + 8;  // magic, version, checksum

// Little-endian hosts only, as the store's token blobs.
class Writer {
 public:
  template <typename T>
  void Put(T v) {
    out_.append(reinterpret_cast<const char*>(&v), sizeof(T));
  }
  void PutBytes(std::string_view s) {
    Put<uint64_t>(s.size());
    out_.append(s);
  }
  template <typename T>
  void PutArray(const std::vector<T>& v) {
    Put<uint64_t>(v.size());
    out_.append(reinterpret_cast<const char*>(v.data()), v.size() * sizeof(T));
  }
  // magic, version, FNV-1a of the payload, payload.
  std::string Finish(const char magic[4]) const {
    std::string out(magic, 4);
    out.append(reinterpret_cast<const char*>(&kVersion), 4);
    const uint64_t sum = Fnv1a64(out_);
    out.append(reinterpret_cast<const char*>(&sum), 8);
    return out + out_;
  }

 private:
  std::string out_;
};

class Reader {
 public:
  explicit Reader(std::string_view in) : in_(in) {}
  template <typename T>
  bool Get(T* v) {
    if (in_.size() < sizeof(T)) return false;
    std::memcpy(v, in_.data(), sizeof(T));
    in_.remove_prefix(sizeof(T));
    return true;
  }
  bool GetBytes(std::string* s) {
    uint64_t n = 0;
    if (!Get(&n) || n > in_.size()) return false;
    s->assign(in_.data(), n);
    in_.remove_prefix(n);
    return true;
  }
  template <typename T>
  bool GetArray(std::vector<T>* v) {
    uint64_t n = 0;
    if (!Get(&n) || n > in_.size() / sizeof(T)) return false;
    v->resize(n);
    if (n > 0) std::memcpy(v->data(), in_.data(), n * sizeof(T));  // data() may be null
    in_.remove_prefix(n * sizeof(T));
    return true;
  }
  bool done() const { return in_.empty(); }

 private:
  std::string_view in_;
};

// The payload of bytes after checking magic, version and checksum.
Result<std::string_view> Payload(const std::string& bytes, const char magic[4]) {
  if (bytes.size() < kHeaderBytes || std::memcmp(bytes.data(), magic, 4) != 0) {
    return Status::Corruption(std::string("episode state: not a ") + std::string(magic, 4) +
                              " blob");
  }
  uint32_t version = 0;
  uint64_t sum = 0;
  std::memcpy(&version, bytes.data() + 4, 4);
  std::memcpy(&sum, bytes.data() + 8, 8);
  if (version != kVersion) {
    return Status::Corruption("episode state: unknown version " + std::to_string(version));
  }
  std::string_view payload(bytes.data() + kHeaderBytes, bytes.size() - kHeaderBytes);
  if (Fnv1a64(payload) != sum) return Status::Corruption("episode state: checksum mismatch");
  return payload;
}

Status Truncated() { return Status::Corruption("episode state: truncated or malformed"); }

}  // namespace

std::string EncodeSessionEpisodes(const SessionEpisodes& s) {
  Writer w;
  w.PutBytes(s.embedder);
  w.Put<int32_t>(s.dim);
  w.Put<int32_t>(s.window_messages);
  w.Put<int64_t>(s.indexed_messages);
  w.Put<int64_t>(s.budget_tokens);
  w.Put<uint8_t>(s.capped ? 1 : 0);
  w.PutArray(s.segments);
  std::string faiss;
  if (s.segment_index) {
    auto bytes = s.segment_index->Serialize();
    if (bytes.ok()) faiss = std::move(bytes).value();
  }
  w.PutBytes(faiss);
  w.PutArray(s.window_vectors);
  w.PutArray(s.turns);
  return w.Finish("KVEP");
}

Result<SessionEpisodes> DecodeSessionEpisodes(const std::string& bytes,
                                              const index::VectorIndexOptions& options) {
  ASSIGN_OR_RETURN(std::string_view payload, Payload(bytes, "KVEP"));
  Reader r(payload);
  SessionEpisodes s;
  uint8_t capped = 0;
  std::string faiss;
  if (!r.GetBytes(&s.embedder) || !r.Get(&s.dim) || !r.Get(&s.window_messages) ||
      !r.Get(&s.indexed_messages) || !r.Get(&s.budget_tokens) || !r.Get(&capped) ||
      !r.GetArray(&s.segments) || !r.GetBytes(&faiss) || !r.GetArray(&s.window_vectors) ||
      !r.GetArray(&s.turns) || !r.done()) {
    return Truncated();
  }
  s.capped = capped != 0;
  if (s.dim <= 0 || s.window_messages <= 0 || s.indexed_messages < 0 ||
      s.window_vectors.size() % static_cast<size_t>(s.dim) != 0) {
    return Truncated();
  }
  ASSIGN_OR_RETURN(s.segment_index, index::VectorIndex::Restore(faiss, options));
  if (s.segment_index->dim() != s.dim ||
      s.segment_index->size() != static_cast<int64_t>(s.segments.size())) {
    return Status::Corruption("episode state: the FAISS index does not match its segments");
  }
  return s;
}

std::string EncodeIdf(const IdfState& idf) {
  Writer w;
  w.Put<int64_t>(idf.num_observed);
  w.PutArray(idf.doc_freq);
  return w.Finish("KVID");
}

Result<IdfState> DecodeIdf(const std::string& bytes) {
  ASSIGN_OR_RETURN(std::string_view payload, Payload(bytes, "KVID"));
  Reader r(payload);
  IdfState idf;
  if (!r.Get(&idf.num_observed) || !r.GetArray(&idf.doc_freq) || !r.done()) return Truncated();
  return idf;
}

bool FullClusteringDue(const SessionEpisodes& s, int64_t budget_tokens,
                       const EpisodeClusterPolicy& policy) {
  const int32_t n = s.num_windows();
  if (budget_tokens <= 0 || s.total_tokens <= budget_tokens || n == 0) return false;
  return s.episodes.episodes.empty() ||
         (n > s.clustered_windows &&
          n >= static_cast<double>(s.clustered_windows) * policy.regrow_factor);
}

Result<ClusteredWindows> ClusterWindows(std::vector<float> window_vectors, int32_t dim,
                                        const EpisodeClusterPolicy& policy) {
  ClusteredWindows out;
  out.num_windows = dim > 0 ? static_cast<int32_t>(window_vectors.size() / dim) : 0;
  const auto start = std::chrono::steady_clock::now();
  ASSIGN_OR_RETURN(out.episodes,
                   index::ClusterEpisodes(window_vectors, out.num_windows, dim, policy.cluster));
  out.cluster_ms =
      std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count();
  return out;
}

void InstallEpisodes(SessionEpisodes* s, ClusteredWindows clustered) {
  s->episodes = std::move(clustered.episodes);
  s->clustered_windows = clustered.num_windows;
  s->last_cluster_ms = clustered.cluster_ms;
  s->num_reclusters++;
}

Result<bool> UpdateEpisodes(SessionEpisodes* s, int64_t budget_tokens,
                            const EpisodeClusterPolicy& policy) {
  const int32_t n = s->num_windows();
  if (budget_tokens <= 0 || s->total_tokens <= budget_tokens || n == 0) {
    s->episodes = {};
    s->clustered_windows = 0;
    return false;
  }
  const auto have = static_cast<int32_t>(s->episodes.assignment.size());
  if (FullClusteringDue(*s, budget_tokens, policy)) {
    ASSIGN_OR_RETURN(ClusteredWindows c, ClusterWindows(s->window_vectors, s->dim, policy));
    InstallEpisodes(s, std::move(c));
    return true;
  }
  // Incremental: new windows join their nearest centroid.
  index::EpisodeSet& set = s->episodes;
  for (int32_t w = have; w < n; ++w) {
    const float* x = s->window_vectors.data() + static_cast<size_t>(w) * s->dim;
    int32_t best = 0;
    float best_score = -2.0f;
    for (size_t e = 0; e < set.episodes.size(); ++e) {
      const float score = index::Dot(x, set.episodes[e].centroid.data(), s->dim);
      if (score > best_score) {
        best_score = score;
        best = static_cast<int32_t>(e);
      }
    }
    set.assignment.push_back(best);
    set.episodes[best].members.push_back(w);
    set.objective += best_score;
  }
  return false;
}

}  // namespace kvkeep
