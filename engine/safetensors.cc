#include "engine/safetensors.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <optional>

#include <nlohmann/json.hpp>

namespace kvkeep {
namespace {

using json = nlohmann::json;

// The safetensors reference implementation refuses headers above 100 MB.
constexpr uint64_t kMaxHeaderBytes = 100ull << 20;

struct DTypeInfo {
  DType dtype;
  const char* name;
  int bytes;
};
constexpr DTypeInfo kDTypes[] = {
    {DType::kF32, "F32", 4}, {DType::kBF16, "BF16", 2}, {DType::kF16, "F16", 2},
    {DType::kI32, "I32", 4}, {DType::kI64, "I64", 8},   {DType::kU8, "U8", 1},
};
// Valid safetensors dtypes that kvkeep does not read.
constexpr const char* kUnsupportedDTypes[] = {"F64", "I8",      "I16",     "U16",     "U32",
                                              "U64", "BOOL",    "F8_E4M3", "F8_E5M2", "F8_E8M0",
                                              "F4",  "F6_E2M3", "F6_E3M2", "C64"};

void AppendU64(std::string* out, uint64_t v) {
  for (int i = 0; i < 8; ++i) out->push_back(static_cast<char>((v >> (8 * i)) & 0xff));
}

// Shape x dtype in bytes, or nullopt on overflow / negative dims.
std::optional<uint64_t> ShapeBytes(const std::vector<int64_t>& shape, DType dtype) {
  uint64_t n = static_cast<uint64_t>(DTypeBytes(dtype));
  for (int64_t d : shape) {
    if (d < 0) return std::nullopt;
    if (d != 0 && n > UINT64_MAX / static_cast<uint64_t>(d)) return std::nullopt;
    n *= static_cast<uint64_t>(d);
  }
  return n;
}

// Builds the JSON header for tensors laid out back to back in the given order, padded with
// spaces to a multiple of 8 bytes as the reference writer does.
Result<std::string> BuildHeader(const std::vector<SafetensorsWriter::TensorSpec>& specs,
                                const std::map<std::string, std::string>& metadata,
                                uint64_t* data_bytes) {
  json header = json::object();
  if (!metadata.empty()) header["__metadata__"] = metadata;
  uint64_t offset = 0;
  for (const auto& s : specs) {
    if (s.name.empty() || s.name == "__metadata__" || header.contains(s.name)) {
      return Status::InvalidArgument("safetensors: bad or duplicate tensor name \"" + s.name +
                                     "\"");
    }
    std::optional<uint64_t> n = ShapeBytes(s.shape, s.dtype);
    if (!n) return Status::InvalidArgument("safetensors: bad shape for tensor " + s.name);
    header[s.name] = {
        {"dtype", DTypeName(s.dtype)}, {"shape", s.shape}, {"data_offsets", {offset, offset + *n}}};
    offset += *n;
  }
  *data_bytes = offset;
  std::string text = header.dump();
  text.append((8 - text.size() % 8) % 8, ' ');
  std::string out;
  AppendU64(&out, text.size());
  out += text;
  return out;
}

Status Corrupt(const std::string& path, const std::string& what) {
  return Status::Corruption("safetensors " + path + ": " + what);
}

Result<TensorView> ParseEntry(const std::string& path, const std::string& name, const json& e,
                              uint64_t data_bytes, const uint8_t* data,
                              std::pair<uint64_t, uint64_t>* range) {
  std::string where = "tensor \"" + name + "\": ";
  if (!e.is_object()) return Corrupt(path, where + "entry is not an object");
  if (!e.contains("dtype") || !e["dtype"].is_string()) {
    return Corrupt(path, where + "missing or non-string dtype");
  }
  std::string dtype_name = e["dtype"].get<std::string>();
  Result<DType> dtype = ParseDType(dtype_name);
  if (!dtype.ok()) {
    for (const char* u : kUnsupportedDTypes) {
      if (dtype_name == u) {
        return Status::NotSupported("safetensors " + path + ": " + where + "dtype " + dtype_name +
                                    " is not supported");
      }
    }
    return Corrupt(path, where + "unknown dtype \"" + dtype_name + "\"");
  }
  TensorView view;
  view.dtype = *dtype;
  if (!e.contains("shape") || !e["shape"].is_array()) return Corrupt(path, where + "missing shape");
  for (const json& d : e["shape"]) {
    if (!d.is_number_unsigned()) return Corrupt(path, where + "shape has a non-natural dimension");
    view.shape.push_back(d.get<int64_t>());
  }
  const json* offs = e.contains("data_offsets") ? &e["data_offsets"] : nullptr;
  if (offs == nullptr || !offs->is_array() || offs->size() != 2 ||
      !(*offs)[0].is_number_unsigned() || !(*offs)[1].is_number_unsigned()) {
    return Corrupt(path, where + "data_offsets must be two non-negative integers");
  }
  uint64_t begin = (*offs)[0].get<uint64_t>();
  uint64_t end = (*offs)[1].get<uint64_t>();
  if (begin > end) return Corrupt(path, where + "data_offsets begin > end");
  if (end > data_bytes) {
    return Corrupt(path, where + "data_offsets [" + std::to_string(begin) + ", " +
                             std::to_string(end) + ") run past the end of the file (" +
                             std::to_string(data_bytes) + " data bytes); truncated?");
  }
  std::optional<uint64_t> want = ShapeBytes(view.shape, view.dtype);
  if (!want || *want != end - begin) {
    return Corrupt(path, where + "holds " + std::to_string(end - begin) +
                             " bytes but shape x dtype needs " +
                             (want ? std::to_string(*want) : std::string("an overflowing count")));
  }
  view.data = data + begin;
  view.num_bytes = static_cast<size_t>(end - begin);
  *range = {begin, end};
  return view;
}

}  // namespace

std::string_view DTypeName(DType dtype) {
  for (const DTypeInfo& d : kDTypes) {
    if (d.dtype == dtype) return d.name;
  }
  return "?";
}

int DTypeBytes(DType dtype) {
  for (const DTypeInfo& d : kDTypes) {
    if (d.dtype == dtype) return d.bytes;
  }
  return 0;
}

Result<DType> ParseDType(std::string_view name) {
  for (const DTypeInfo& d : kDTypes) {
    if (name == d.name) return d.dtype;
  }
  return Status::InvalidArgument("unknown dtype \"" + std::string(name) + "\"");
}

int64_t TensorView::NumElements() const {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

Result<std::unique_ptr<SafetensorsFile>> SafetensorsFile::Open(Env* env, const std::string& path) {
  ASSIGN_OR_RETURN(std::unique_ptr<MappedFile> mapping, env->MapFile(path));
  const uint8_t* base = mapping->data();
  const uint64_t size = mapping->size();
  if (size < 8) return Corrupt(path, "file of " + std::to_string(size) + " bytes has no header");
  uint64_t header_len = 0;
  for (int i = 0; i < 8; ++i) header_len |= uint64_t{base[i]} << (8 * i);
  if (header_len > size - 8) {
    return Corrupt(path, "header length " + std::to_string(header_len) + " runs beyond the file (" +
                             std::to_string(size) + " bytes)");
  }
  if (header_len > kMaxHeaderBytes) {
    return Corrupt(path, "header length " + std::to_string(header_len) + " exceeds 100 MB");
  }
  json header = json::parse(base + 8, base + 8 + header_len, nullptr, /*allow_exceptions=*/false);
  if (header.is_discarded()) return Corrupt(path, "header is not valid JSON");
  if (!header.is_object()) return Corrupt(path, "header is not a JSON object");

  auto file = std::unique_ptr<SafetensorsFile>(new SafetensorsFile());
  file->path_ = path;
  const uint8_t* data = base + 8 + header_len;
  const uint64_t data_bytes = size - 8 - header_len;
  std::vector<std::pair<std::pair<uint64_t, uint64_t>, std::string>> ranges;
  try {
    for (const auto& [name, entry] : header.items()) {
      if (name == "__metadata__") continue;
      std::pair<uint64_t, uint64_t> range;
      ASSIGN_OR_RETURN(TensorView view, ParseEntry(path, name, entry, data_bytes, data, &range));
      file->tensors_.emplace(name, std::move(view));
      ranges.push_back({range, name});
    }
  } catch (const std::exception& e) {
    return Corrupt(path, std::string("bad header: ") + e.what());
  }
  std::sort(ranges.begin(), ranges.end());
  for (size_t i = 1; i < ranges.size(); ++i) {
    const auto& prev = ranges[i - 1];
    const auto& cur = ranges[i];
    // Empty tensors occupy no bytes and cannot overlap anything.
    if (cur.first.first < prev.first.second && cur.first.first != cur.first.second) {
      return Corrupt(path, "tensor \"" + cur.second + "\" overlaps tensor \"" + prev.second + "\"");
    }
  }
  file->mapping_ = std::move(mapping);
  return file;
}

const TensorView* SafetensorsFile::Find(std::string_view name) const {
  auto it = tensors_.find(name);
  return it == tensors_.end() ? nullptr : &it->second;
}

std::vector<std::string> SafetensorsFile::Names() const {
  std::vector<std::string> names;
  names.reserve(tensors_.size());
  for (const auto& [name, view] : tensors_) names.push_back(name);
  return names;
}

Status WriteSafetensors(Env* env, const std::string& path,
                        const std::vector<TensorToWrite>& tensors,
                        const std::map<std::string, std::string>& metadata) {
  std::vector<SafetensorsWriter::TensorSpec> specs;
  for (const TensorToWrite& t : tensors) specs.push_back({t.name, t.dtype, t.shape});
  uint64_t data_bytes = 0;
  ASSIGN_OR_RETURN(std::string out, BuildHeader(specs, metadata, &data_bytes));
  out.reserve(out.size() + data_bytes);
  for (const TensorToWrite& t : tensors) {
    if (t.data.size() != *ShapeBytes(t.shape, t.dtype)) {
      return Status::InvalidArgument(
          "safetensors: tensor " + t.name + " has " + std::to_string(t.data.size()) +
          " bytes of data, its shape needs " + std::to_string(*ShapeBytes(t.shape, t.dtype)));
    }
    out += t.data;
  }
  return env->WriteFileAtomic(path, out);
}

// ---- SafetensorsWriter ------------------------------------------------------------------

Result<std::unique_ptr<SafetensorsWriter>> SafetensorsWriter::Create(
    const std::string& path, std::vector<TensorSpec> specs,
    const std::map<std::string, std::string>& metadata) {
  auto w = std::unique_ptr<SafetensorsWriter>(new SafetensorsWriter());
  ASSIGN_OR_RETURN(std::string header, BuildHeader(specs, metadata, &w->total_data_bytes_));
  w->path_ = path;
  // A unique temporary name, so concurrent or abandoned writers never share one.
  w->tmp_path_ = path + ".tmp.XXXXXX";
  w->fd_ = mkostemp(w->tmp_path_.data(), O_CLOEXEC);
  if (w->fd_ >= 0) fchmod(w->fd_, 0644);
  if (w->fd_ < 0) {
    return Status::IOError("open " + w->tmp_path_ + ": " + std::strerror(errno));
  }
  RETURN_IF_ERROR(w->WriteAll(header.data(), header.size()));
  return w;
}

SafetensorsWriter::~SafetensorsWriter() {
  if (fd_ >= 0) {
    close(fd_);
    unlink(tmp_path_.c_str());
  }
}

Status SafetensorsWriter::WriteAll(const void* data, size_t n) {
  const char* p = static_cast<const char*>(data);
  while (n > 0) {
    ssize_t k = write(fd_, p, n);
    if (k < 0) {
      if (errno == EINTR) continue;
      return Status::IOError("write " + tmp_path_ + ": " + std::strerror(errno));
    }
    p += k;
    n -= static_cast<size_t>(k);
  }
  return Status::OK();
}

Status SafetensorsWriter::Append(const void* data, size_t num_bytes) {
  if (fd_ < 0) return Status::Internal("safetensors writer already finished");
  if (written_data_bytes_ + num_bytes > total_data_bytes_) {
    return Status::InvalidArgument("safetensors: more data than the declared tensors hold");
  }
  RETURN_IF_ERROR(WriteAll(data, num_bytes));
  written_data_bytes_ += num_bytes;
  return Status::OK();
}

Status SafetensorsWriter::Finish() {
  if (fd_ < 0) return Status::Internal("safetensors writer already finished");
  if (written_data_bytes_ != total_data_bytes_) {
    return Status::InvalidArgument("safetensors: " + std::to_string(written_data_bytes_) +
                                   " data bytes written, the tensors declare " +
                                   std::to_string(total_data_bytes_));
  }
  int fd = fd_;
  fd_ = -1;
  bool synced = fsync(fd) == 0;
  int sync_errno = errno;
  if (close(fd) != 0 || !synced) {
    unlink(tmp_path_.c_str());
    return Status::IOError("fsync/close " + tmp_path_ + ": " +
                           std::strerror(synced ? errno : sync_errno));
  }
  if (rename(tmp_path_.c_str(), path_.c_str()) != 0) {
    unlink(tmp_path_.c_str());
    return Status::IOError("rename " + path_ + ": " + std::strerror(errno));
  }
  return Status::OK();
}

}  // namespace kvkeep
