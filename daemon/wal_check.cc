#include "daemon/wal_check.h"

#include "base/file.h"

namespace kvkeep {
namespace {

constexpr size_t kWalHeaderBytes = 32;
constexpr size_t kFrameHeaderBytes = 24;
constexpr uint32_t kMagicLittleEndian = 0x377f0682;
constexpr uint32_t kMagicBigEndian = 0x377f0683;

uint32_t Be32(const uint8_t* p) {
  return uint32_t{p[0]} << 24 | uint32_t{p[1]} << 16 | uint32_t{p[2]} << 8 | p[3];
}
uint32_t Le32(const uint8_t* p) {
  return uint32_t{p[3]} << 24 | uint32_t{p[2]} << 16 | uint32_t{p[1]} << 8 | p[0];
}

// SQLite's WAL checksum (walChecksumBytes): over 8-byte steps, continuing from s[0], s[1].
void Checksum(const uint8_t* p, size_t n, bool big_endian, uint32_t s[2]) {
  for (size_t i = 0; i + 8 <= n; i += 8) {
    const uint32_t x0 = big_endian ? Be32(p + i) : Le32(p + i);
    const uint32_t x1 = big_endian ? Be32(p + i + 4) : Le32(p + i + 4);
    s[0] += x0 + s[1];
    s[1] += x1 + s[0];
  }
}

}  // namespace

Result<WalScan> ScanWal(const std::string& path) {
  WalScan scan;
  if (!DefaultEnv()->FileExists(path)) return scan;
  ASSIGN_OR_RETURN(std::unique_ptr<MappedFile> file, DefaultEnv()->MapFile(path));
  const uint8_t* data = file->data();
  const size_t size = file->size();
  if (size == 0) return scan;
  scan.exists = true;
  if (size < kWalHeaderBytes) return scan;
  const uint32_t magic = Be32(data);
  if (magic != kMagicLittleEndian && magic != kMagicBigEndian) return scan;
  const bool big_endian = magic == kMagicBigEndian;
  const uint32_t page_bytes = Be32(data + 8);
  if (page_bytes < 512 || page_bytes > 65536 || (page_bytes & (page_bytes - 1)) != 0) {
    return scan;
  }
  uint32_t sum[2] = {0, 0};
  Checksum(data, 24, big_endian, sum);
  if (sum[0] != Be32(data + 24) || sum[1] != Be32(data + 28)) return scan;
  scan.header_valid = true;
  const uint32_t salt1 = Be32(data + 16);
  const uint32_t salt2 = Be32(data + 20);

  const size_t frame_bytes = kFrameHeaderBytes + page_bytes;
  scan.num_frames = static_cast<int64_t>((size - kWalHeaderBytes) / frame_bytes);
  bool valid = true;
  for (int64_t i = 0; i < scan.num_frames; ++i) {
    const uint8_t* f = data + kWalHeaderBytes + static_cast<size_t>(i) * frame_bytes;
    const bool commit = Be32(f + 4) != 0;
    // Frames with other salts are leftovers of an earlier generation: not this log's.
    if (Be32(f + 8) != salt1 || Be32(f + 12) != salt2) break;
    if (valid) {
      Checksum(f, 8, big_endian, sum);
      Checksum(f + kFrameHeaderBytes, page_bytes, big_endian, sum);
      if (sum[0] == Be32(f + 16) && sum[1] == Be32(f + 20)) {
        scan.num_valid_frames++;
        if (commit) scan.num_commits++;
        continue;
      }
      valid = false;
      scan.first_bad_frame = i;
    }
    if (commit) scan.num_commits_after_bad++;
  }
  return scan;
}

}  // namespace kvkeep
