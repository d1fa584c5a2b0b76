#include "engine/gguf_file.h"

#include <cstring>
#include <limits>

namespace kvkeep {
namespace {

constexpr uint32_t kGgufMagic = 0x46554747;  // "GGUF" little-endian
constexpr int kMaxArrayDepth = 4;
constexpr uint32_t kMaxDims = 4;  // GGML_MAX_DIMS

// Bytes of one scalar of `type` (0 for strings and arrays, which are variable).
uint64_t ScalarBytes(GgufValueType type) {
  switch (type) {
    case GgufValueType::kUint8:
    case GgufValueType::kInt8:
    case GgufValueType::kBool:
      return 1;
    case GgufValueType::kUint16:
    case GgufValueType::kInt16:
      return 2;
    case GgufValueType::kUint32:
    case GgufValueType::kInt32:
    case GgufValueType::kFloat32:
      return 4;
    case GgufValueType::kUint64:
    case GgufValueType::kInt64:
    case GgufValueType::kFloat64:
      return 8;
    case GgufValueType::kString:
    case GgufValueType::kArray:
      return 0;
  }
  return 0;
}

bool KnownValueType(uint32_t t) { return t <= static_cast<uint32_t>(GgufValueType::kFloat64); }

}  // namespace

std::string_view GgufValueTypeName(GgufValueType type) {
  static constexpr std::string_view kNames[] = {"uint8",  "int8",    "uint16", "int16",  "uint32",
                                                "int32",  "float32", "bool",   "string", "array",
                                                "uint64", "int64",   "float64"};
  auto i = static_cast<uint32_t>(type);
  return i < std::size(kNames) ? kNames[i] : "unknown";
}

bool GgufValue::IsInteger() const {
  switch (type) {
    case GgufValueType::kUint8:
    case GgufValueType::kInt8:
    case GgufValueType::kUint16:
    case GgufValueType::kInt16:
    case GgufValueType::kUint32:
    case GgufValueType::kInt32:
    case GgufValueType::kUint64:
    case GgufValueType::kInt64:
      return true;
    default:
      return false;
  }
}

int64_t GgufTensorInfo::NumElements() const {
  int64_t n = 1;
  for (int64_t d : dims) n *= d;
  return n;
}

// A bounds-checked cursor over the file. Every read names the field it reads, so a short
// file says which field ran past the end.
class GgufFile::Parser {
 public:
  Parser(std::string_view bytes, const std::string& name) : bytes_(bytes), name_(name) {}

  uint64_t pos() const { return pos_; }
  uint64_t remaining() const { return bytes_.size() - pos_; }

  Status Error(const std::string& field, const std::string& what) const {
    return Status::Corruption(name_ + ": GGUF " + field + " at byte " + std::to_string(pos_) +
                              ": " + what);
  }

  template <typename T>
  Result<T> Read(const std::string& field) {
    if (remaining() < sizeof(T)) {
      return Error(field, "truncated (file is " + std::to_string(bytes_.size()) + " bytes)");
    }
    T v;
    std::memcpy(&v, bytes_.data() + pos_, sizeof(T));
    pos_ += sizeof(T);
    return v;
  }

  Result<std::string_view> ReadString(const std::string& field) {
    ASSIGN_OR_RETURN(uint64_t len, Read<uint64_t>(field + " length"));
    if (len > remaining()) {
      return Error(field, "string length " + std::to_string(len) + " exceeds the " +
                              std::to_string(remaining()) + " bytes left in the file");
    }
    std::string_view s = bytes_.substr(pos_, len);
    pos_ += len;
    return s;
  }

  Result<GgufValue> ReadValue(GgufValueType type, const std::string& field, int depth) {
    GgufValue v;
    v.type = type;
    switch (type) {
      case GgufValueType::kUint8: {
        ASSIGN_OR_RETURN(uint8_t x, Read<uint8_t>(field));
        v.integer = x;
        break;
      }
      case GgufValueType::kInt8: {
        ASSIGN_OR_RETURN(int8_t x, Read<int8_t>(field));
        v.integer = x;
        break;
      }
      case GgufValueType::kUint16: {
        ASSIGN_OR_RETURN(uint16_t x, Read<uint16_t>(field));
        v.integer = x;
        break;
      }
      case GgufValueType::kInt16: {
        ASSIGN_OR_RETURN(int16_t x, Read<int16_t>(field));
        v.integer = x;
        break;
      }
      case GgufValueType::kUint32: {
        ASSIGN_OR_RETURN(uint32_t x, Read<uint32_t>(field));
        v.integer = x;
        break;
      }
      case GgufValueType::kInt32: {
        ASSIGN_OR_RETURN(int32_t x, Read<int32_t>(field));
        v.integer = x;
        break;
      }
      case GgufValueType::kUint64: {
        ASSIGN_OR_RETURN(uint64_t x, Read<uint64_t>(field));
        v.integer = static_cast<int64_t>(x);
        break;
      }
      case GgufValueType::kInt64: {
        ASSIGN_OR_RETURN(v.integer, Read<int64_t>(field));
        break;
      }
      case GgufValueType::kFloat32: {
        ASSIGN_OR_RETURN(float x, Read<float>(field));
        v.real = x;
        break;
      }
      case GgufValueType::kFloat64: {
        ASSIGN_OR_RETURN(v.real, Read<double>(field));
        break;
      }
      case GgufValueType::kBool: {
        ASSIGN_OR_RETURN(uint8_t x, Read<uint8_t>(field));
        if (x > 1) return Error(field, "bool value " + std::to_string(x) + " is not 0 or 1");
        v.boolean = x != 0;
        break;
      }
      case GgufValueType::kString: {
        ASSIGN_OR_RETURN(v.string, ReadString(field));
        break;
      }
      case GgufValueType::kArray: {
        if (depth >= kMaxArrayDepth) return Error(field, "arrays nested too deeply");
        ASSIGN_OR_RETURN(uint32_t et, Read<uint32_t>(field + " element type"));
        if (!KnownValueType(et)) {
          return Error(field, "unknown array element type " + std::to_string(et));
        }
        v.array_type = static_cast<GgufValueType>(et);
        ASSIGN_OR_RETURN(uint64_t count, Read<uint64_t>(field + " count"));
        // Every element takes at least one byte (strings and arrays at least 8): a count
        // the rest of the file cannot hold is corrupt, and is refused before allocating.
        uint64_t min_bytes = std::max<uint64_t>(ScalarBytes(v.array_type), 1);
        if (ScalarBytes(v.array_type) == 0) min_bytes = 8;
        if (count > remaining() / min_bytes) {
          return Error(field, "array count " + std::to_string(count) + " of " +
                                  std::string(GgufValueTypeName(v.array_type)) +
                                  " cannot fit in the " + std::to_string(remaining()) +
                                  " bytes left in the file");
        }
        v.array.reserve(count);
        for (uint64_t i = 0; i < count; ++i) {
          ASSIGN_OR_RETURN(
              GgufValue e,
              ReadValue(v.array_type, field + "[" + std::to_string(i) + "]", depth + 1));
          v.array.push_back(std::move(e));
        }
        break;
      }
    }
    return v;
  }

 private:
  std::string_view bytes_;
  const std::string& name_;
  uint64_t pos_ = 0;
};

Result<std::unique_ptr<GgufFile>> GgufFile::Open(Env* env, const std::string& path) {
  ASSIGN_OR_RETURN(auto mapping, env->MapFile(path));
  std::string_view bytes(reinterpret_cast<const char*>(mapping->data()), mapping->size());
  ASSIGN_OR_RETURN(auto file, Parse(bytes, path));
  file->mapping_ = std::move(mapping);
  return file;
}

Result<std::unique_ptr<GgufFile>> GgufFile::Parse(std::string_view bytes, const std::string& name) {
  auto f = std::unique_ptr<GgufFile>(new GgufFile());
  f->path_ = name;
  f->size_ = bytes.size();
  Parser p(bytes, name);

  ASSIGN_OR_RETURN(uint32_t magic, p.Read<uint32_t>("magic"));
  if (magic != kGgufMagic) {
    return Status::Corruption(name + ": not a GGUF file (bad magic at byte 0)");
  }
  ASSIGN_OR_RETURN(f->version_, p.Read<uint32_t>("version"));
  if (f->version_ != 2 && f->version_ != 3) {
    return Status::NotSupported(name + ": GGUF version " + std::to_string(f->version_) +
                                " (supported: 2 and 3; a byte-swapped version means a "
                                "big-endian file, which is not supported)");
  }
  ASSIGN_OR_RETURN(uint64_t num_tensors, p.Read<uint64_t>("tensor_count"));
  ASSIGN_OR_RETURN(uint64_t num_kv, p.Read<uint64_t>("metadata_kv_count"));
  // A metadata entry takes at least 8 (key length) + 4 (type) + 1 bytes; a tensor info
  // at least 8 (name length) + 4 (n_dims) + 4 (type) + 8 (offset).
  if (num_kv > p.remaining() / 13) {
    return p.Error("metadata_kv_count", std::to_string(num_kv) + " entries cannot fit in a " +
                                            std::to_string(bytes.size()) + "-byte file");
  }
  if (num_tensors > p.remaining() / 24) {
    return p.Error("tensor_count", std::to_string(num_tensors) + " tensors cannot fit in a " +
                                       std::to_string(bytes.size()) + "-byte file");
  }

  for (uint64_t i = 0; i < num_kv; ++i) {
    const std::string field = "metadata[" + std::to_string(i) + "]";
    ASSIGN_OR_RETURN(std::string_view key, p.ReadString(field + " key"));
    const std::string kfield = "metadata '" + std::string(key) + "'";
    ASSIGN_OR_RETURN(uint32_t type, p.Read<uint32_t>(kfield + " type"));
    if (!KnownValueType(type)) {
      return p.Error(kfield, "unknown value type " + std::to_string(type));
    }
    ASSIGN_OR_RETURN(GgufValue value, p.ReadValue(static_cast<GgufValueType>(type), kfield, 0));
    if (!f->metadata_.emplace(std::string(key), std::move(value)).second) {
      return p.Error(kfield, "duplicate key");
    }
  }
  if (const GgufValue* a = f->Find("general.alignment")) {
    if (!a->IsInteger() || a->integer <= 0 || a->integer > (1 << 20) ||
        (a->integer & (a->integer - 1)) != 0) {
      return Status::Corruption(name + ": GGUF general.alignment must be a power of two " +
                                "integer up to 1 MiB");
    }
    f->alignment_ = static_cast<uint64_t>(a->integer);
  }

  f->tensors_.reserve(num_tensors);
  for (uint64_t i = 0; i < num_tensors; ++i) {
    const std::string field = "tensor[" + std::to_string(i) + "]";
    GgufTensorInfo t;
    ASSIGN_OR_RETURN(std::string_view tname, p.ReadString(field + " name"));
    t.name = std::string(tname);
    const std::string tfield = "tensor '" + t.name + "'";
    ASSIGN_OR_RETURN(uint32_t n_dims, p.Read<uint32_t>(tfield + " n_dims"));
    if (n_dims == 0 || n_dims > kMaxDims) {
      return p.Error(
          tfield, "n_dims " + std::to_string(n_dims) + " is not in 1.." + std::to_string(kMaxDims));
    }
    uint64_t num_elements = 1;
    for (uint32_t d = 0; d < n_dims; ++d) {
      ASSIGN_OR_RETURN(uint64_t dim, p.Read<uint64_t>(tfield + " dims"));
      if (dim == 0 || dim > static_cast<uint64_t>(std::numeric_limits<int64_t>::max()) ||
          num_elements > static_cast<uint64_t>(std::numeric_limits<int64_t>::max()) / dim) {
        return p.Error(tfield, "dimension " + std::to_string(d) + " = " + std::to_string(dim) +
                                   " is zero or overflows the element count");
      }
      num_elements *= dim;
      t.dims.push_back(static_cast<int64_t>(dim));
    }
    ASSIGN_OR_RETURN(uint32_t type_id, p.Read<uint32_t>(tfield + " type"));
    std::optional<GgmlTypeInfo> info = FindGgmlType(type_id);
    if (!info) {
      return Status::NotSupported(name + ": GGUF tensor '" + t.name + "' has ggml type " +
                                  std::to_string(type_id) +
                                  ", which kvkeep does not read (supported: F32, F16, BF16, "
                                  "Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4_K, Q5_K, Q6_K)");
    }
    t.type = info->type;
    if (t.dims[0] % info->block_elements != 0) {
      return p.Error(tfield, "row length " + std::to_string(t.dims[0]) +
                                 " is not a multiple of the " + std::string(info->name) +
                                 " block size " + std::to_string(info->block_elements));
    }
    ASSIGN_OR_RETURN(t.offset, p.Read<uint64_t>(tfield + " offset"));
    // num_elements < 2^63 and block_bytes / block_elements <= 2: no overflow below.
    const uint64_t num_bytes = num_elements / static_cast<uint64_t>(info->block_elements) *
                               static_cast<uint64_t>(info->block_bytes);
    if (num_bytes > bytes.size()) {
      return p.Error(tfield, std::to_string(num_bytes) + " bytes of data exceed the file size");
    }
    t.num_bytes = static_cast<size_t>(num_bytes);
    if (!f->tensor_index_.emplace(t.name, f->tensors_.size()).second) {
      return p.Error(tfield, "duplicate tensor name");
    }
    f->tensors_.push_back(std::move(t));
  }

  const uint64_t data_start = (p.pos() + f->alignment_ - 1) / f->alignment_ * f->alignment_;
  for (GgufTensorInfo& t : f->tensors_) {
    const std::string where =
        name + ": GGUF tensor '" + t.name + "' offset " + std::to_string(t.offset);
    if (t.offset % f->alignment_ != 0) {
      return Status::Corruption(where + " is not a multiple of the alignment " +
                                std::to_string(f->alignment_));
    }
    if (data_start > bytes.size() || t.offset > bytes.size() - data_start ||
        t.num_bytes > bytes.size() - data_start - t.offset) {
      return Status::Corruption(where + " + " + std::to_string(t.num_bytes) +
                                " bytes runs past the end of the file (data starts at byte " +
                                std::to_string(data_start) + " of " + std::to_string(bytes.size()) +
                                ")");
    }
    t.data = reinterpret_cast<const uint8_t*>(bytes.data()) + data_start + t.offset;
  }
  return f;
}

const GgufValue* GgufFile::Find(std::string_view key) const {
  auto it = metadata_.find(key);
  return it == metadata_.end() ? nullptr : &it->second;
}

Result<std::string> GgufFile::GetString(std::string_view key) const {
  const GgufValue* v = Find(key);
  if (v == nullptr) return Status::NotFound(path_ + ": GGUF metadata has no " + std::string(key));
  if (v->type != GgufValueType::kString) {
    return Status::InvalidArgument(path_ + ": GGUF " + std::string(key) + " is " +
                                   std::string(GgufValueTypeName(v->type)) + ", not a string");
  }
  return std::string(v->string);
}

Result<int64_t> GgufFile::GetInt(std::string_view key) const {
  const GgufValue* v = Find(key);
  if (v == nullptr) return Status::NotFound(path_ + ": GGUF metadata has no " + std::string(key));
  if (!v->IsInteger()) {
    return Status::InvalidArgument(path_ + ": GGUF " + std::string(key) + " is " +
                                   std::string(GgufValueTypeName(v->type)) + ", not an integer");
  }
  return v->integer;
}

Result<double> GgufFile::GetFloat(std::string_view key) const {
  const GgufValue* v = Find(key);
  if (v == nullptr) return Status::NotFound(path_ + ": GGUF metadata has no " + std::string(key));
  if (v->IsFloat()) return v->real;
  if (v->IsInteger()) return static_cast<double>(v->integer);
  return Status::InvalidArgument(path_ + ": GGUF " + std::string(key) + " is " +
                                 std::string(GgufValueTypeName(v->type)) + ", not a number");
}

Result<const GgufValue*> GgufFile::GetArray(std::string_view key,
                                            GgufValueType element_type) const {
  const GgufValue* v = Find(key);
  if (v == nullptr) return Status::NotFound(path_ + ": GGUF metadata has no " + std::string(key));
  if (v->type != GgufValueType::kArray || v->array_type != element_type) {
    return Status::InvalidArgument(path_ + ": GGUF " + std::string(key) + " is not an array of " +
                                   std::string(GgufValueTypeName(element_type)));
  }
  return v;
}

const GgufTensorInfo* GgufFile::FindTensor(std::string_view name) const {
  auto it = tensor_index_.find(name);
  return it == tensor_index_.end() ? nullptr : &tensors_[it->second];
}

bool IsGgufPath(std::string_view path) { return path.ends_with(".gguf"); }

}  // namespace kvkeep
