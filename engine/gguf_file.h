// GgufFile: a memory-mapped GGUF file (the format of llama.cpp and Ollama), versions 2
// and 3 (little-endian). Layout:
//   u32 magic "GGUF", u32 version, u64 tensor_count, u64 metadata_kv_count,
//   metadata_kv_count x (string key, u32 value_type, value),
//   tensor_count x (string name, u32 n_dims, u64 dims[n_dims], u32 ggml_type, u64 offset),
//   padding to general.alignment (default 32), then the tensor data; offsets are relative
//   to the start of the data and multiples of the alignment.
// A string is u64 length + bytes; an array is u32 element type + u64 count + elements.
//
// Open validates everything before returning: every length, count, dimension and offset is
// checked against the file's size (no allocation is sized by an unchecked count), tensor
// data lies inside the file, names are unique, and every tensor's type is one kvkeep knows.
// Errors are Corruption (or NotSupported for a known but unsupported version or type) and
// name the file and the field. Nothing reads outside the mapping.
//
// Thread-safety: immutable after Open; safe to share. Strings and tensor data point into
// the mapping, which lives as long as the GgufFile.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "base/file.h"
#include "base/status.h"
#include "engine/gguf_types.h"

namespace kvkeep {

enum class GgufValueType : uint32_t {
  kUint8 = 0,
  kInt8 = 1,
  kUint16 = 2,
  kInt16 = 3,
  kUint32 = 4,
  kInt32 = 5,
  kFloat32 = 6,
  kBool = 7,
  kString = 8,
  kArray = 9,
  kUint64 = 10,
  kInt64 = 11,
  kFloat64 = 12,
};
std::string_view GgufValueTypeName(GgufValueType type);  // "uint32", "array", ...

// One metadata value. Integers are widened into `integer` (u64 values above INT64_MAX are
// kept bit-for-bit; check `type`), floats into `real`; arrays hold their elements.
struct GgufValue {
  GgufValueType type = GgufValueType::kUint8;
  int64_t integer = 0;
  double real = 0;
  bool boolean = false;
  std::string_view string;  // into the mapping
  GgufValueType array_type = GgufValueType::kUint8;
  std::vector<GgufValue> array;

  bool IsInteger() const;
  bool IsFloat() const {
    return type == GgufValueType::kFloat32 || type == GgufValueType::kFloat64;
  }
};

struct GgufTensorInfo {
  std::string name;
  GgmlType type = GgmlType::kF32;
  std::vector<int64_t> dims;  // GGUF order: dims[0] is the fastest-varying (the row length)
  uint64_t offset = 0;        // relative to the data section
  const uint8_t* data = nullptr;
  size_t num_bytes = 0;
  int64_t NumElements() const;
  // The Hugging Face (row-major) shape: dims reversed.
  std::vector<int64_t> RowMajorShape() const { return {dims.rbegin(), dims.rend()}; }
};

class GgufFile {
 public:
  static Result<std::unique_ptr<GgufFile>> Open(Env* env, const std::string& path);
  // Parses a GGUF image already in memory (tests, fuzzing). `bytes` must outlive the result.
  static Result<std::unique_ptr<GgufFile>> Parse(std::string_view bytes, const std::string& name);

  const std::string& path() const { return path_; }
  uint32_t version() const { return version_; }
  uint64_t alignment() const { return alignment_; }
  uint64_t file_size_bytes() const { return size_; }

  // nullptr when absent.
  const GgufValue* Find(std::string_view key) const;
  const std::map<std::string, GgufValue, std::less<>>& metadata() const { return metadata_; }
  // Typed getters: NotFound when absent, InvalidArgument (naming the key) on a type mismatch.
  Result<std::string> GetString(std::string_view key) const;
  Result<int64_t> GetInt(std::string_view key) const;   // any integer type
  Result<double> GetFloat(std::string_view key) const;  // float32/float64 (or an integer)
  Result<const GgufValue*> GetArray(std::string_view key, GgufValueType element_type) const;

  // Tensors in file order.
  const std::vector<GgufTensorInfo>& tensors() const { return tensors_; }
  const GgufTensorInfo* FindTensor(std::string_view name) const;

 private:
  class Parser;
  GgufFile() = default;
  std::string path_;
  std::unique_ptr<MappedFile> mapping_;
  uint32_t version_ = 0;
  uint64_t alignment_ = 32;
  uint64_t size_ = 0;
  std::map<std::string, GgufValue, std::less<>> metadata_;
  std::vector<GgufTensorInfo> tensors_;
  std::map<std::string, size_t, std::less<>> tensor_index_;
};

// True when `path` names a GGUF file (by its .gguf suffix) rather than an HF directory.
bool IsGgufPath(std::string_view path);

}  // namespace kvkeep
