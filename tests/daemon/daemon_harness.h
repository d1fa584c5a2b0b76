// Test harness for the daemon's integration tests: starts the real kvkeepd binary on a
// temporary socket and state directory with the synthetic tiny model, and talks to it
// over a real Unix socket with a small blocking line client.
#pragma once

#include <fcntl.h>
#include <gtest/gtest.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "base/file.h"
#include "engine/synthetic_model.h"
#include "tests/testlib/test_util.h"

namespace kvkeep::testing {

using nlohmann::json;

// The tiny synthetic model, written once per test process.
inline const std::string& TinyModelDir() {
  static TempDir dir;  // removed at exit
  static const std::string path = [] {
    std::string p = dir.File("tiny");
    SyntheticModelOptions o;
    o.preset = "tiny";
    Status st = MakeSyntheticModel(DefaultEnv(), p, o);
    if (!st.ok()) ADD_FAILURE() << "MakeSyntheticModel: " << st.ToString();
    return p;
  }();
  return path;
}

// A connected client socket; blocking lines with a timeout.
class LineClient {
 public:
  LineClient() = default;
  explicit LineClient(const std::string& socket_path) { Connect(socket_path); }
  ~LineClient() { Close(); }
  LineClient(const LineClient&) = delete;
  LineClient& operator=(const LineClient&) = delete;

  bool Connect(const std::string& socket_path) {
    fd_ = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    std::strncpy(addr.sun_path, socket_path.c_str(), sizeof(addr.sun_path) - 1);
    if (::connect(fd_, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
      Close();
      return false;
    }
    return true;
  }
  bool connected() const { return fd_ >= 0; }
  void Close() {
    if (fd_ >= 0) ::close(fd_);
    fd_ = -1;
  }
  void ShutdownWrite() { ::shutdown(fd_, SHUT_WR); }
  int fd() const { return fd_; }

  bool SendRaw(std::string_view data) {
    while (!data.empty()) {
      ssize_t n = ::send(fd_, data.data(), data.size(), MSG_NOSIGNAL);
      if (n <= 0) return false;
      data.remove_prefix(static_cast<size_t>(n));
    }
    return true;
  }
  bool Send(const json& request) { return SendRaw(request.dump() + "\n"); }

  // The next line, or nullopt on EOF/timeout.
  std::optional<std::string> ReadLine(int timeout_ms = 60000) {
    auto deadline = std::chrono::steady_clock::now() +
                    std::chrono::milliseconds(testing::ScaledTimeoutMs(timeout_ms));
    while (true) {
      size_t nl = buf_.find('\n');
      if (nl != std::string::npos) {
        std::string line = buf_.substr(0, nl);
        buf_.erase(0, nl + 1);
        return line;
      }
      int left = static_cast<int>(std::chrono::duration_cast<std::chrono::milliseconds>(
                                      deadline - std::chrono::steady_clock::now())
                                      .count());
      if (left <= 0) return std::nullopt;
      pollfd p{fd_, POLLIN, 0};
      if (::poll(&p, 1, left) <= 0) continue;
      char chunk[65536];
      ssize_t n = ::recv(fd_, chunk, sizeof(chunk), 0);
      if (n <= 0) return std::nullopt;
      buf_.append(chunk, static_cast<size_t>(n));
    }
  }
  std::optional<json> ReadJson(int timeout_ms = 60000) {
    auto line = ReadLine(timeout_ms);
    if (!line) return std::nullopt;
    return json::parse(*line);
  }
  // Sends a request and returns every line for its id up to the terminal one (events
  // first). Lines of other ids are kept in `others`.
  std::vector<json> Call(const json& request, std::vector<json>* others = nullptr) {
    std::vector<json> out;
    if (!Send(request)) return out;
    while (auto line = ReadJson()) {
      if ((*line)["id"] != request["id"]) {
        if (others) others->push_back(*line);
        continue;
      }
      out.push_back(*line);
      if (line->contains("result") || line->contains("error")) break;
    }
    return out;
  }
  // The terminal line of a request.
  json Terminal(const json& request) {
    auto lines = Call(request);
    return lines.empty() ? json() : lines.back();
  }
  // The result of a request that must succeed.
  json Ok(const json& request) {
    json t = Terminal(request);
    EXPECT_TRUE(t.contains("result")) << request.dump() << " -> " << t.dump();
    return t.contains("result") ? t["result"] : json();
  }
  // The error code of a request that must fail.
  std::string ErrorCode(const json& request) {
    json t = Terminal(request);
    EXPECT_TRUE(t.contains("error")) << request.dump() << " -> " << t.dump();
    return t.contains("error") ? t["error"]["code"].get<std::string>() : "";
  }

 private:
  int fd_ = -1;
  std::string buf_;
};

// A kvkeepd child process.
class DaemonProcess {
 public:
  // state_dir is kept across restarts by the caller; extra flags append to the command.
  DaemonProcess(std::string socket_path, std::string state_dir, std::vector<std::string> extra = {})
      : socket_path_(std::move(socket_path)),
        state_dir_(std::move(state_dir)),
        extra_(std::move(extra)) {}
  ~DaemonProcess() { Kill(SIGKILL); }

  // Starts kvkeepd and waits until its socket answers.
  bool Start() {
    std::vector<std::string> args = {BinaryDir() + "/kvkeepd",
                                     "--model",
                                     TinyModelDir(),
                                     "--socket",
                                     socket_path_,
                                     "--state-dir",
                                     state_dir_};
    // A test that sizes the KV pool itself passes --kv-blocks.
    if (std::find(extra_.begin(), extra_.end(), "--kv-blocks") == extra_.end()) {
      args.insert(args.end(), {"--num-kv-blocks", "2048"});
    }
    // With a configuration file the file sets the log level (SIGHUP tests change it).
    if (std::find(extra_.begin(), extra_.end(), "--config") == extra_.end()) {
      args.insert(args.end(), {"--log-level", "warn"});
    }
    args.insert(args.end(), extra_.begin(), extra_.end());
    log_path_ = state_dir_ + ".log";
    pid_ = fork();
    if (pid_ == 0) {
      int log = ::open(log_path_.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0644);
      if (log >= 0) ::dup2(log, 2);
      std::vector<char*> argv;
      for (auto& a : args) argv.push_back(a.data());
      argv.push_back(nullptr);
      ::execv(argv[0], argv.data());
      _exit(127);
    }
    // 30 s, times KVKEEP_TEST_TIMEOUT_SCALE: a start that calibrates the cost model takes
    // about 10 s under ASan on an idle 2-core machine, over 30 s beside other tests.
    const int polls = testing::ScaledTimeoutMs(30000) / 50;
    for (int i = 0; i < polls; ++i) {
      LineClient probe;
      if (probe.Connect(socket_path_)) return true;
      int status;
      if (waitpid(pid_, &status, WNOHANG) == pid_) {
        pid_ = -1;
        return false;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    return false;
  }
  // Sends a signal and waits for the exit; returns the wait status.
  int Kill(int sig) {
    if (pid_ <= 0) return -1;
    ::kill(pid_, sig);
    int status = 0;
    waitpid(pid_, &status, 0);
    pid_ = -1;
    return status;
  }
  void Signal(int sig) {
    if (pid_ > 0) ::kill(pid_, sig);
  }
  // Waits for the process to exit by itself; returns its wait status, or -1 on timeout.
  int WaitExit(int timeout_ms) {
    for (int i = 0; i < timeout_ms / 10 && pid_ > 0; ++i) {
      int status = 0;
      if (waitpid(pid_, &status, WNOHANG) == pid_) {
        pid_ = -1;
        return status;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    return -1;
  }
  bool Alive() const { return pid_ > 0 && ::kill(pid_, 0) == 0; }
  pid_t pid() const { return pid_; }
  std::string Log() const {
    auto text = DefaultEnv()->ReadFile(log_path_);
    return text.ok() ? *text : "";
  }
  const std::string& socket_path() const { return socket_path_; }

 private:
  std::string socket_path_;
  std::string state_dir_;
  std::vector<std::string> extra_;
  std::string log_path_;
  pid_t pid_ = -1;
};

// A TempDir with a daemon in it.
struct DaemonFixture {
  explicit DaemonFixture(std::vector<std::string> extra = {})
      : daemon(dir.File("s.sock"), dir.File("state"), std::move(extra)) {}
  TempDir dir;
  DaemonProcess daemon;
};

// Sixteen alternating user/assistant messages on four unrelated topics (sourdough, a
// compiler crash, a glacier hike, a tax return), four messages each: a conversation the
// episode tests cluster into four clear episodes.
inline const std::vector<std::string>& FourTopicConversation() {
  static const std::vector<std::string> texts = {"My sourdough starter smells of acetone.",
                                                 "Feed it twice a day with rye flour.",
                                                 "The dough did not rise overnight.",
                                                 "Proof it longer somewhere warm, near the oven.",
                                                 "The tomcat compiler crashed with a segfault.",
                                                 "Run it under gdb and print the backtrace.",
                                                 "The backtrace points into the linker.",
                                                 "Try linking with lld instead of gold.",
                                                 "We hiked the glacier trail in Iceland.",
                                                 "Did you need crampons on the ice?",
                                                 "Yes, and a guide for the crevasses.",
                                                 "The glacier lagoon had floating icebergs.",
                                                 "My tax return shows a refund this year.",
                                                 "Did you claim the home office deduction?",
                                                 "Yes, and the pension contributions too.",
                                                 "The refund arrives in six weeks."};
  return texts;
}

}  // namespace kvkeep::testing
