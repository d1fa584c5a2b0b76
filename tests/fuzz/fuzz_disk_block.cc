// fuzz_disk_block: the disk tier's block decoder (cache/disk_tier.h DecodeBlock, which the
// remote tier uses too) on arbitrary bytes, for a small block shape (4 tokens, 64 payload
// bytes). The expected hash is taken from the bytes' own hash field, so inputs reach the
// checksums. A block that decodes must encode back to exactly the same bytes; one that
// does not is refused with Corruption. Crashes and sanitizer findings abort.
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <string_view>
#include <vector>

#include "cache/disk_tier.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  constexpr int32_t kBlockSize = 4;
  constexpr size_t kBlockBytes = 64;
  static const kvkeep::DiskBlockStore codec(kvkeep::DefaultEnv(), "/nonexistent", kBlockSize,
                                            kBlockBytes);
  // The header: "KVKB" u32 version | u32 block_size | u64 block_bytes | u64 hash | ...
  constexpr size_t kHashOffset = 4 + 4 + 4 + 8;
  kvkeep::BlockHash expected{0};
  if (size >= kHashOffset + 8) std::memcpy(&expected.value, data + kHashOffset, 8);
  const std::string_view bytes(reinterpret_cast<const char*>(data), size);
  kvkeep::DiskBlockHeader header;
  std::vector<uint8_t> payload(kBlockBytes);
  const kvkeep::Status st = codec.DecodeBlock(bytes, expected, &header, payload.data());
  if (!st.ok()) {
    if (st.code() != kvkeep::StatusCode::kCorruption || st.message().empty()) std::abort();
    return 0;
  }
  if (header.hash != expected || header.tokens.size() != size_t{kBlockSize}) std::abort();
  if (codec.EncodeBlock(header, payload.data()) != bytes) std::abort();
  return 0;
}
