#include "engine/episode_cache_directory.h"

namespace kvkeep {

const EpisodeCacheRecord* EpisodeCacheDirectory::Find(uint64_t session, int32_t episode) const {
  auto s = sessions_.find(session);
  if (s == sessions_.end()) return nullptr;
  auto e = s->second.find(episode);
  return e == s->second.end() ? nullptr : &e->second;
}

const EpisodeCacheRecord& EpisodeCacheDirectory::Add(const EpisodeCacheRecord& record) {
  std::map<int32_t, EpisodeCacheRecord>& episodes = sessions_[record.id.session];
  std::erase_if(episodes, [&](const auto& e) { return e.second.id.version < record.id.version; });
  return episodes[record.id.episode] = record;
}

void EpisodeCacheDirectory::Forget(uint64_t session) { sessions_.erase(session); }

int64_t EpisodeCacheDirectory::size() const {
  int64_t n = 0;
  for (const auto& [session, episodes] : sessions_) n += static_cast<int64_t>(episodes.size());
  return n;
}

std::vector<int32_t> EpisodeCacheDirectory::KeyTokens(const EpisodeCacheRecord& r,
                                                      int32_t block_size) {
  const uint64_t words64[] = {r.id.session, r.id.version, r.generation};
  std::vector<int32_t> words = {0x45504943};  // "EPIC"
  for (uint64_t w : words64) {
    words.push_back(static_cast<int32_t>(static_cast<uint32_t>(w)));
    words.push_back(static_cast<int32_t>(static_cast<uint32_t>(w >> 32)));
  }
  words.push_back(r.id.episode);
  std::vector<int32_t> key(static_cast<size_t>(r.num_blocks) * block_size, 0);
  for (int32_t b = 0; b < r.num_blocks; ++b) {
    int32_t* block = key.data() + static_cast<int64_t>(b) * block_size;
    std::copy(words.begin(), words.end(), block);
    block[words.size()] = b;  // so each block of the chain differs
  }
  return key;
}

HashScope EpisodeCacheDirectory::EpisodeScope(HashScope request_scope) {
  request_scope.model_id_hash ^= 0x9e3779b97f4a7c15ULL;  // no model id hashes to this
  return request_scope;
}

uint64_t EpisodeCacheDirectory::HistoryHash(std::span<const int32_t> tokens) {
  return Xxh64(tokens.data(), tokens.size_bytes(), 0x6570);
}

}  // namespace kvkeep
