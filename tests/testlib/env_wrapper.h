// EnvWrapper: an Env that forwards every call to another Env (DefaultEnv() unless given),
// as LevelDB's EnvWrapper does. A test Env derives from it and overrides only the calls it
// changes (a fault, a fake environment variable).
//
// Thread-safety: as thread-safe as the wrapped Env. Ownership: the wrapped Env outlives it.
#pragma once

#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "base/file.h"

namespace kvkeep::testing {

class EnvWrapper : public Env {
 public:
  explicit EnvWrapper(Env* target = DefaultEnv()) : target_(target) {}
  Env* target() const { return target_; }

  Result<std::string> ReadFile(const std::string& p) override { return target_->ReadFile(p); }
  Status WriteFileAtomic(const std::string& p, std::string_view c) override {
    return target_->WriteFileAtomic(p, c);
  }
  Result<std::unique_ptr<MappedFile>> MapFile(const std::string& p) override {
    return target_->MapFile(p);
  }
  bool FileExists(const std::string& p) override { return target_->FileExists(p); }
  Status CreateDirs(const std::string& p, int mode) override {
    return target_->CreateDirs(p, mode);
  }
  Result<std::vector<std::string>> ListDir(const std::string& p) override {
    return target_->ListDir(p);
  }
  Status RemoveFile(const std::string& p) override { return target_->RemoveFile(p); }
  std::string GetEnvVar(const char* name) override { return target_->GetEnvVar(name); }
  Result<std::unique_ptr<RandomRWFile>> OpenRandomRWFile(const std::string& path,
                                                         bool create) override {
    return target_->OpenRandomRWFile(path, create);
  }
  Status RenameFile(const std::string& from, const std::string& to) override {
    return target_->RenameFile(from, to);
  }

 private:
  Env* const target_;
};

}  // namespace kvkeep::testing
