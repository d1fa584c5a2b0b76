// WAL check: reads an SQLite write-ahead log the way SQLite's recovery does (header and
// cumulative frame checksums, https://sqlite.org/fileformat2.html#walformat) and reports
// frames that SQLite would silently drop.
//
// SQLite replays a WAL up to its last valid commit frame and ignores everything after the
// first frame whose checksum fails. A process crash (kill -9) never produces such a frame:
// its writes reach the page cache whole, so it only leaves valid frames of an uncommitted
// transaction. A frame of the current WAL generation (matching salts) with a bad checksum
// therefore means torn storage (power loss) or corruption, and any commit frame after it
// is a committed transaction SQLite is about to lose.
//
// Thread-safety: a pure function of the file.
#pragma once

#include <cstdint>
#include <string>

#include "base/status.h"

namespace kvkeep {

struct WalScan {
  bool exists = false;                // the file is there and non-empty
  bool header_valid = false;          // a WAL header with a valid checksum
  int64_t num_frames = 0;             // whole frames in the file
  int64_t num_valid_frames = 0;       // frames up to the first checksum failure
  int64_t num_commits = 0;            // commit frames among the valid ones
  int64_t first_bad_frame = -1;       // 0-based index of the first frame of this generation whose
                                      // checksum fails; -1: none
  int64_t num_commits_after_bad = 0;  // commit frames of this generation after it (lost)

  // A frame of this generation failed its checksum: SQLite will drop it and what follows.
  bool damaged() const { return first_bad_frame >= 0; }
};

// Scans path (a "-wal" file). An absent or empty file is OK with exists == false.
Result<WalScan> ScanWal(const std::string& path);

}  // namespace kvkeep
