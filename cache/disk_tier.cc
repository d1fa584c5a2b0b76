#include "cache/disk_tier.h"

#include <fmt/format.h>

#include <cstring>
#include <unordered_map>

namespace kvkeep {
namespace {

constexpr char kMagic[4] = {'K', 'V', 'K', 'B'};
constexpr uint32_t kVersion = 1;
constexpr std::string_view kSuffix = ".kvb";

void PutU32(std::string* s, uint32_t v) {
  for (int i = 0; i < 4; ++i) s->push_back(static_cast<char>((v >> (8 * i)) & 0xff));
}
void PutU64(std::string* s, uint64_t v) {
  for (int i = 0; i < 8; ++i) s->push_back(static_cast<char>((v >> (8 * i)) & 0xff));
}
uint32_t GetU32(const char* p) {
  uint32_t v = 0;
  for (int i = 3; i >= 0; --i) v = (v << 8) | static_cast<uint8_t>(p[i]);
  return v;
}
uint64_t GetU64(const char* p) {
  uint64_t v = 0;
  for (int i = 7; i >= 0; --i) v = (v << 8) | static_cast<uint8_t>(p[i]);
  return v;
}

bool ParseName(std::string_view name, uint64_t* hash) {
  if (name.size() != 16 + kSuffix.size() || !name.ends_with(kSuffix)) return false;
  uint64_t v = 0;
  for (char c : name.substr(0, 16)) {
    int d;
    if (c >= '0' && c <= '9') {
      d = c - '0';
    } else if (c >= 'a' && c <= 'f') {
      d = c - 'a' + 10;
    } else {
      return false;
    }
    v = (v << 4) | static_cast<uint64_t>(d);
  }
  *hash = v;
  return true;
}

}  // namespace

DiskBlockStore::DiskBlockStore(Env* env, std::string dir, int32_t block_size, size_t block_bytes)
    : env_(env), dir_(std::move(dir)), block_size_(block_size), block_bytes_(block_bytes) {}

size_t DiskBlockStore::header_bytes() const {
  return 4 + 4 + 4 + 8 + 8 * 4 + 4 * static_cast<size_t>(block_size_) + 8 + 8;
}
size_t DiskBlockStore::file_bytes() const { return header_bytes() + block_bytes_; }

std::string DiskBlockStore::PathOf(BlockHash hash) const {
  return JoinPath(dir_, fmt::format("{:016x}{}", hash.value, kSuffix));
}

Status DiskBlockStore::Open() {
  RETURN_IF_ERROR(env_->CreateDirs(dir_, 0700));
  ASSIGN_OR_RETURN(std::vector<std::string> names, env_->ListDir(dir_));
  for (const std::string& name : names) {
    if (name.ends_with(".tmp")) RETURN_IF_ERROR(env_->RemoveFile(JoinPath(dir_, name)));
  }
  return Status::OK();
}

std::string DiskBlockStore::EncodeHeader(const DiskBlockHeader& h, uint64_t payload_sum) const {
  std::string s;
  s.reserve(header_bytes());
  s.append(kMagic, 4);
  PutU32(&s, kVersion);
  PutU32(&s, static_cast<uint32_t>(block_size_));
  PutU64(&s, block_bytes_);
  PutU64(&s, h.hash.value);
  PutU64(&s, h.parent_hash.value);
  PutU64(&s, h.scope.model_id_hash);
  PutU64(&s, h.scope.tenant_salt);
  for (int32_t t : h.tokens) PutU32(&s, static_cast<uint32_t>(t));
  PutU64(&s, payload_sum);
  PutU64(&s, Xxh64(s.data(), s.size(), 0));
  return s;
}

Result<uint64_t> DiskBlockStore::DecodeHeader(const std::string& b, DiskBlockHeader* h) const {
  if (b.size() != header_bytes() || std::memcmp(b.data(), kMagic, 4) != 0) {
    return Status::Corruption("disk block: bad magic or size");
  }
  const size_t sum_at = b.size() - 8;
  if (GetU64(b.data() + sum_at) != Xxh64(b.data(), sum_at, 0)) {
    return Status::Corruption("disk block: header checksum mismatch");
  }
  const char* p = b.data() + 4;
  if (GetU32(p) != kVersion || GetU32(p + 4) != static_cast<uint32_t>(block_size_) ||
      GetU64(p + 8) != block_bytes_) {
    return Status::Corruption("disk block: written for another version, block size or layout");
  }
  p += 16;
  h->hash.value = GetU64(p);
  h->parent_hash.value = GetU64(p + 8);
  h->scope.model_id_hash = GetU64(p + 16);
  h->scope.tenant_salt = GetU64(p + 24);
  p += 32;
  h->tokens.resize(block_size_);
  for (int32_t i = 0; i < block_size_; ++i) h->tokens[i] = static_cast<int32_t>(GetU32(p + 4 * i));
  p += 4 * static_cast<size_t>(block_size_);
  return GetU64(p);
}

Status DiskBlockStore::Write(const DiskBlockHeader& header, const void* bytes) {
  const std::string head = EncodeHeader(header, Xxh64(bytes, block_bytes_, 0));
  const std::string path = PathOf(header.hash);
  const std::string tmp = path + ".tmp";
  {
    ASSIGN_OR_RETURN(std::unique_ptr<RandomRWFile> file, env_->OpenRandomRWFile(tmp, true));
    RETURN_IF_ERROR(file->WriteAt(0, head.data(), head.size()));
    RETURN_IF_ERROR(file->WriteAt(head.size(), bytes, block_bytes_));
  }
  return env_->RenameFile(tmp, path);
}

Status DiskBlockStore::Read(BlockHash hash, void* dst) {
  const std::string path = PathOf(hash);
  ASSIGN_OR_RETURN(std::unique_ptr<RandomRWFile> file, env_->OpenRandomRWFile(path, false));
  ASSIGN_OR_RETURN(uint64_t size, file->Size());
  if (size != file_bytes()) return Status::Corruption("disk block " + path + ": wrong size");
  std::string head(header_bytes(), '\0');
  RETURN_IF_ERROR(file->ReadAt(0, head.data(), head.size()));
  DiskBlockHeader header;
  ASSIGN_OR_RETURN(uint64_t payload_sum, DecodeHeader(head, &header));
  if (header.hash != hash)
    return Status::Corruption("disk block " + path + ": names another block");
  RETURN_IF_ERROR(file->ReadAt(head.size(), dst, block_bytes_));
  if (Xxh64(dst, block_bytes_, 0) != payload_sum) {
    return Status::Corruption("disk block " + path + ": payload checksum mismatch");
  }
  return Status::OK();
}

std::string DiskBlockStore::EncodeBlock(const DiskBlockHeader& header, const void* bytes) const {
  std::string s = EncodeHeader(header, Xxh64(bytes, block_bytes_, 0));
  s.append(static_cast<const char*>(bytes), block_bytes_);
  return s;
}

Status DiskBlockStore::DecodeBlock(std::string_view data, BlockHash expected,
                                   DiskBlockHeader* header, void* dst) const {
  if (data.size() != file_bytes()) return Status::Corruption("block: wrong size");
  ASSIGN_OR_RETURN(uint64_t payload_sum,
                   DecodeHeader(std::string(data.substr(0, header_bytes())), header));
  if (header->hash != expected) return Status::Corruption("block: names another block");
  std::memcpy(dst, data.data() + header_bytes(), block_bytes_);
  if (Xxh64(dst, block_bytes_, 0) != payload_sum) {
    return Status::Corruption("block: payload checksum mismatch");
  }
  return Status::OK();
}

Status DiskBlockStore::Remove(BlockHash hash) {
  Status st = env_->RemoveFile(PathOf(hash));
  return st.code() == StatusCode::kNotFound ? Status::OK() : st;
}

Result<std::vector<DiskBlockHeader>> DiskBlockStore::Scan(int32_t* num_bad) {
  *num_bad = 0;
  ASSIGN_OR_RETURN(std::vector<std::string> names, env_->ListDir(dir_));
  std::vector<DiskBlockHeader> headers;
  for (const std::string& name : names) {
    uint64_t named = 0;
    if (!ParseName(name, &named)) continue;  // not ours
    const std::string path = JoinPath(dir_, name);
    DiskBlockHeader header;
    Status st = [&]() -> Status {
      ASSIGN_OR_RETURN(std::unique_ptr<RandomRWFile> file, env_->OpenRandomRWFile(path, false));
      ASSIGN_OR_RETURN(uint64_t size, file->Size());
      if (size != file_bytes()) return Status::Corruption("wrong size");
      std::string head(header_bytes(), '\0');
      RETURN_IF_ERROR(file->ReadAt(0, head.data(), head.size()));
      RETURN_IF_ERROR(DecodeHeader(head, &header).status());
      if (header.hash.value != named) return Status::Corruption("name disagrees with header");
      return Status::OK();
    }();
    if (st.ok()) {
      headers.push_back(std::move(header));
    } else {
      ++*num_bad;
      (void)env_->RemoveFile(path);  // dropped: recomputed when needed
    }
  }
  return headers;
}

std::vector<BlockHash> AdoptDiskBlocks(const std::vector<DiskBlockHeader>& headers,
                                       BlockPool* pool) {
  enum : uint8_t { kNew, kAdopted, kRejected };
  std::unordered_map<BlockHash, size_t> by_hash;
  for (size_t i = 0; i < headers.size(); ++i) by_hash.emplace(headers[i].hash, i);
  std::vector<uint8_t> state(headers.size(), kNew);
  std::vector<size_t> chain;
  for (size_t start = 0; start < headers.size(); ++start) {
    // Walk up to the first ancestor that is adopted, rejected, absent or the root ...
    chain.clear();
    for (size_t i = start; state[i] == kNew;) {
      chain.push_back(i);
      state[i] = kRejected;  // provisional: also breaks parent cycles
      auto parent = by_hash.find(headers[i].parent_hash);
      if (headers[i].parent_hash == kRootParentHash || parent == by_hash.end()) break;
      i = parent->second;
    }
    // ... then adopt downwards; a child of a rejected block is rejected.
    for (auto it = chain.rbegin(); it != chain.rend(); ++it) {
      const DiskBlockHeader& h = headers[*it];
      if (pool->AdoptDiskBlock(h.hash, h.parent_hash, h.tokens, h.scope)) state[*it] = kAdopted;
    }
  }
  std::vector<BlockHash> rejected;
  for (size_t i = 0; i < headers.size(); ++i) {
    if (state[i] != kAdopted) rejected.push_back(headers[i].hash);
  }
  return rejected;
}

}  // namespace kvkeep
