// safetensors reading (mmap, zero-copy) and writing.
// Format: u64 little-endian header length N, N bytes of JSON header
//   {"name": {"dtype": "BF16", "shape": [..], "data_offsets": [begin, end]}, "__metadata__": {..}}
// then the raw tensor bytes. Offsets are relative to the end of the header.
//
// Thread-safety: a SafetensorsFile is immutable after Open and safe to share.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "base/file.h"
#include "base/status.h"

namespace kvkeep {

enum class DType { kF32, kBF16, kF16, kI32, kI64, kU8 };

std::string_view DTypeName(DType dtype);  // "F32", "BF16", ...
int DTypeBytes(DType dtype);
Result<DType> ParseDType(std::string_view name);

struct TensorView {
  DType dtype = DType::kF32;
  std::vector<int64_t> shape;
  const uint8_t* data = nullptr;  // points into the mapping
  size_t num_bytes = 0;
  int64_t NumElements() const;
};

class SafetensorsFile {
 public:
  // Validates the header completely: offsets in bounds and non-overlapping, sizes equal to
  // shape x dtype, known dtypes. Truncated or malformed files get Corruption naming the file.
  static Result<std::unique_ptr<SafetensorsFile>> Open(Env* env, const std::string& path);

  const std::string& path() const { return path_; }
  uint64_t size_bytes() const { return mapping_ ? mapping_->size() : 0; }
  // nullptr when absent.
  const TensorView* Find(std::string_view name) const;
  std::vector<std::string> Names() const;

 private:
  SafetensorsFile() = default;
  std::string path_;
  std::unique_ptr<MappedFile> mapping_;
  std::map<std::string, TensorView, std::less<>> tensors_;
};

// A tensor to write: data must hold exactly NumElements * DTypeBytes bytes.
struct TensorToWrite {
  std::string name;
  DType dtype = DType::kF32;
  std::vector<int64_t> shape;
  std::string data;
};

Status WriteSafetensors(Env* env, const std::string& path,
                        const std::vector<TensorToWrite>& tensors,
                        const std::map<std::string, std::string>& metadata = {});

// Streams a safetensors file to disk tensor by tensor, for files too big to hold in memory
// (the 16 GB synthetic model). The header is fixed by Create; Append then takes the
// tensors' bytes in the order of `specs`, in as many pieces as the caller likes. Finish
// checks that every declared byte arrived, fsyncs and renames a temporary file
// (path.tmp.XXXXXX) over path; a writer destroyed before Finish removes it.
// Not thread-safe. Writes through POSIX directly: Env has no streaming writer yet.
class SafetensorsWriter {
 public:
  struct TensorSpec {
    std::string name;
    DType dtype = DType::kF32;
    std::vector<int64_t> shape;
  };
  static Result<std::unique_ptr<SafetensorsWriter>> Create(
      const std::string& path, std::vector<TensorSpec> specs,
      const std::map<std::string, std::string>& metadata = {});
  ~SafetensorsWriter();
  SafetensorsWriter(const SafetensorsWriter&) = delete;
  SafetensorsWriter& operator=(const SafetensorsWriter&) = delete;

  Status Append(const void* data, size_t num_bytes);
  Status Finish();
  uint64_t total_data_bytes() const { return total_data_bytes_; }

 private:
  SafetensorsWriter() = default;
  Status WriteAll(const void* data, size_t n);
  std::string path_;
  std::string tmp_path_;
  int fd_ = -1;
  uint64_t total_data_bytes_ = 0;
  uint64_t written_data_bytes_ = 0;
};

}  // namespace kvkeep
