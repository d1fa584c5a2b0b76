// Thread-safety annotations for clang's -Wthread-safety (LevelDB's
// port/thread_annotations.h), and Mutex/MutexLock, a std::mutex that clang can reason
// about (libstdc++'s std::mutex carries no capability attribute, so GUARDED_BY on a member
// guarded by a std::mutex checks nothing). Other compilers see plain code.
//
// Use: `Mutex mu_; int n_ GUARDED_BY(mu_);`, `MutexLock lock(&mu_);`, and
// `void FooLocked() REQUIRES(mu_);` for helpers called with the lock held. `make
// thread-safety` builds the annotated modules with clang and fails on a finding.
//
// Thread-safety: Mutex is a mutex; MutexLock is a scoped lock on one.
#pragma once

#include <mutex>

#if defined(__clang__)
#define KVKEEP_THREAD_ANNOTATION(x) __attribute__((x))
#else
#define KVKEEP_THREAD_ANNOTATION(x)
#endif

#define CAPABILITY(x) KVKEEP_THREAD_ANNOTATION(capability(x))
#define SCOPED_CAPABILITY KVKEEP_THREAD_ANNOTATION(scoped_lockable)
#define GUARDED_BY(x) KVKEEP_THREAD_ANNOTATION(guarded_by(x))
#define PT_GUARDED_BY(x) KVKEEP_THREAD_ANNOTATION(pt_guarded_by(x))
#define REQUIRES(...) KVKEEP_THREAD_ANNOTATION(requires_capability(__VA_ARGS__))
#define EXCLUDES(...) KVKEEP_THREAD_ANNOTATION(locks_excluded(__VA_ARGS__))
#define ACQUIRE(...) KVKEEP_THREAD_ANNOTATION(acquire_capability(__VA_ARGS__))
#define RELEASE(...) KVKEEP_THREAD_ANNOTATION(release_capability(__VA_ARGS__))
#define NO_THREAD_SAFETY_ANALYSIS KVKEEP_THREAD_ANNOTATION(no_thread_safety_analysis)

namespace kvkeep {

class CAPABILITY("mutex") Mutex {
 public:
  void Lock() ACQUIRE() { mu_.lock(); }
  void Unlock() RELEASE() { mu_.unlock(); }
  // BasicLockable, for std::condition_variable_any (the wait is not analysed).
  void lock() ACQUIRE() { mu_.lock(); }
  void unlock() RELEASE() { mu_.unlock(); }

 private:
  std::mutex mu_;
};

class SCOPED_CAPABILITY MutexLock {
 public:
  explicit MutexLock(Mutex* mu) ACQUIRE(mu) : mu_(mu) { mu_->Lock(); }
  ~MutexLock() RELEASE() { mu_->Unlock(); }
  MutexLock(const MutexLock&) = delete;
  MutexLock& operator=(const MutexLock&) = delete;

 private:
  Mutex* const mu_;
};

}  // namespace kvkeep
