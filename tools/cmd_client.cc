// The client verbs of `kvkeep`, talking to a running kvkeepd over its socket:
//   kvkeep status     hello + a stats summary (--json: raw, --prometheus: exposition text)
//   kvkeep sessions   your sessions (--all: every uid's, for root / the admin group)
//   kvkeep chat       interactive: each stdin line is a user message, the reply streams
//                     to stdout; works under a pipe (`echo hi | kvkeep chat`)
// All take --socket (default: client::DefaultSocketPath()).
#include <unistd.h>

#include <cstdio>
#include <iostream>
#include <memory>
#include <string>
#include <vector>

#include <spdlog/spdlog.h>
#include <nlohmann/json.hpp>

#include "tools/commands.h"
#include "tools/replay/daemon_client.h"

namespace kvkeep::tools {
namespace {

using client::DaemonClient;
using nlohmann::json;

void AddSocketOption(CLI::App* cmd, std::string* socket_path) {
  *socket_path = client::DefaultSocketPath();
  cmd->add_option("--socket", *socket_path, "kvkeepd's Unix socket")->capture_default_str();
}

// Runs body with a connection; prints errors and sets the exit code (1 on error).
template <typename Body>
void WithClient(const std::string& socket_path, Body body) {
  Result<std::unique_ptr<DaemonClient>> conn = DaemonClient::Connect(socket_path);
  Status st = conn.ok() ? body(**conn) : conn.status();
  if (!st.ok()) {
    std::fprintf(stderr, "kvkeep: %s\n", st.ToString().c_str());
    SetExitCode(1);
  }
}

std::string Str(const json& obj, const char* key, const char* fallback = "?") {
  auto it = obj.find(key);
  if (it == obj.end() || it->is_null()) return fallback;
  return it->is_string() ? it->get<std::string>() : it->dump();
}

// The upper bound (ms) of the first bucket holding quantile q of a cumulative histogram
// {"count", "buckets": [[le, cumulative count], ...]}; "-" when empty.
std::string HistogramQuantile(const json& hist, double q) {
  int64_t count = hist.value("count", int64_t{0});
  if (count <= 0 || !hist.contains("buckets")) return "-";
  const double target = q * static_cast<double>(count);
  std::string previous_bound = "0";
  for (const json& bucket : hist["buckets"]) {
    if (!bucket.is_array() || bucket.size() != 2 || !bucket[1].is_number()) continue;
    if (!bucket[0].is_number()) return ">" + previous_bound;  // the +Inf bucket
    previous_bound = bucket[0].dump();
    if (bucket[1].get<double>() >= target) return "<=" + previous_bound;
  }
  return "-";
}

Status PrintStatus(DaemonClient& c, const std::string& format) {
  if (format == "prometheus") {
    ASSIGN_OR_RETURN(json r, c.Call("stats", {{"format", "prometheus"}}));
    std::fputs(Str(r, "text", "").c_str(), stdout);
    return Status::OK();
  }
  ASSIGN_OR_RETURN(json hello, c.Call("hello"));
  ASSIGN_OR_RETURN(json stats, c.Call("stats"));
  if (format == "json") {
    std::printf("%s\n", json{{"hello", hello}, {"stats", stats}}.dump(2).c_str());
    return Status::OK();
  }
  const json model = hello.value("model", json::object());
  std::printf("kvkeepd %s (protocol %s) on %s, up %.0f s, policy %s\n",
              Str(hello, "version").c_str(), Str(hello, "protocol").c_str(),
              c.socket_path().c_str(), stats.value("uptime_s", 0.0), Str(stats, "policy").c_str());
  std::printf("model      %s (%s, vocab %s, context %s tokens)\n", Str(model, "id").c_str(),
              Str(model, "architecture").c_str(), Str(model, "vocab_size").c_str(),
              Str(model, "max_context_tokens").c_str());
  std::printf("you        uid %s%s\n", Str(hello, "uid").c_str(),
              hello.value("admin", false) ? " (admin)" : "");
  const json server = stats.value("server", json::object());
  std::printf("server     %s connections, %s requests, %s errors\n",
              Str(server, "connections").c_str(), Str(server, "requests").c_str(),
              Str(server, "errors").c_str());
  const json sessions = stats.value("sessions", json::object());
  std::printf("sessions   %s open, %s generating\n", Str(sessions, "open").c_str(),
              Str(sessions, "generating").c_str());
  const json pools = stats.value("pools", json::object());
  for (const auto& [name, pool] : pools.items()) {
    std::printf("pool       %s: %s/%s blocks used, %s cached, %s shared (block %s tokens)\n",
                name.c_str(), Str(pool, "blocks_used").c_str(), Str(pool, "blocks_total").c_str(),
                Str(pool, "blocks_cached").c_str(), Str(pool, "blocks_shared").c_str(),
                Str(pool, "block_size").c_str());
  }
  const json tokens = stats.value("tokens", json::object());
  std::printf("tokens     %s prompt = %s cached + %s recomputed; %s generated; hit ratio %s\n",
              Str(tokens, "prompt").c_str(), Str(tokens, "cached").c_str(),
              Str(tokens, "recomputed").c_str(), Str(tokens, "generated").c_str(),
              Str(stats, "hit_ratio").c_str());
  const json latencies = stats.value("latency_ms", json::object());
  for (const auto& [name, hist] : latencies.items()) {
    std::printf("latency    %-17s n=%-8s p50 %s ms, p99 %s ms\n", name.c_str(),
                Str(hist, "count").c_str(), HistogramQuantile(hist, 0.5).c_str(),
                HistogramQuantile(hist, 0.99).c_str());
  }
  return Status::OK();
}

Status PrintSessions(DaemonClient& c, bool all, bool closed, bool as_json) {
  ASSIGN_OR_RETURN(json r, c.Call("sessions.list", {{"all", all}, {"closed", closed}}));
  const json sessions = r.value("sessions", json::array());
  if (as_json) {
    std::printf("%s\n", sessions.dump(2).c_str());
    return Status::OK();
  }
  std::printf("%-34s %7s %6s %8s %-6s %s\n", "SESSION", "OWNER", "MSGS", "TOKENS", "STATE",
              "UPDATED");
  for (const json& s : sessions) {
    std::printf("%-34s %7s %6s %8s %-6s %s\n", Str(s, "session").c_str(),
                Str(s, "owner_uid").c_str(), Str(s, "num_messages").c_str(),
                Str(s, "num_tokens").c_str(), s.value("closed", false) ? "closed" : "open",
                Str(s, "updated_at").c_str());
  }
  return Status::OK();
}

struct ChatArgs {
  std::string session;
  std::string system;
  int32_t max_tokens = 256;
  double temperature = 0.0;
  double top_p = 1.0;
  int64_t seed = 0;
  bool discard = false;
  bool usage = false;
};

// Opens args.session (reopening a kept one; an already open one is used as it is).
Result<std::string> OpenChatSession(DaemonClient& c, const ChatArgs& args) {
  json params = json::object();
  if (!args.session.empty()) params["session"] = args.session;
  if (!args.system.empty()) params["system"] = args.system;
  Result<json> opened = c.Call("session.open", params);
  if (opened.ok()) return Str(*opened, "session", "");
  if (opened.status().code() == StatusCode::kAlreadyExists) return args.session;
  return opened.status();
}

Status Chat(DaemonClient& c, const ChatArgs& args) {
  ASSIGN_OR_RETURN(std::string sid, OpenChatSession(c, args));
  const bool interactive = ::isatty(STDIN_FILENO) != 0;
  if (interactive) {
    std::fprintf(stderr, "session %s; type a message, /quit or Ctrl-D to end\n", sid.c_str());
  }
  std::string line;
  while (true) {
    if (interactive) std::fputs("> ", stderr);
    if (!std::getline(std::cin, line)) break;
    if (line == "/quit" || line == "/exit") break;
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    RETURN_IF_ERROR(c.Call("session.append",
                           {{"session", sid},
                            {"messages", json::array({{{"role", "user"}, {"content", line}}})}})
                        .status());
    json params = {{"session", sid},
                   {"stream", true},
                   {"max_tokens", args.max_tokens},
                   {"temperature", args.temperature},
                   {"top_p", args.top_p},
                   {"seed", args.seed}};
    ASSIGN_OR_RETURN(json result, c.Call("session.generate", params, [](const json& event) {
      std::fputs(Str(event, "text", "").c_str(), stdout);
      std::fflush(stdout);
    }));
    std::fputs("\n", stdout);
    std::fflush(stdout);
    if (args.usage) {
      const json u = result.value("usage", json::object());
      std::fprintf(stderr, "[prompt %s, cached %s, recomputed %s, generated %s, ttft %s ms]\n",
                   Str(u, "prompt_tokens").c_str(), Str(u, "cached_tokens").c_str(),
                   Str(u, "recomputed_tokens").c_str(), Str(u, "generated_tokens").c_str(),
                   Str(u, "ttft_ms").c_str());
    }
  }
  RETURN_IF_ERROR(c.Call("session.close", {{"session", sid}, {"keep", !args.discard}}).status());
  if (interactive && !args.discard) {
    std::fprintf(stderr, "session %s kept; resume with --session %s\n", sid.c_str(), sid.c_str());
  }
  return Status::OK();
}

}  // namespace

void AddStatusCommand(CLI::App& app) {
  auto socket_path = std::make_shared<std::string>();
  auto format = std::make_shared<std::string>("text");
  CLI::App* cmd = app.add_subcommand("status", "Show kvkeepd's model, sessions, pools and stats");
  AddSocketOption(cmd, socket_path.get());
  cmd->add_option("--format", *format, "text, json or prometheus")
      ->check(CLI::IsMember({"text", "json", "prometheus"}))
      ->capture_default_str();
  cmd->callback([socket_path, format] {
    WithClient(*socket_path, [&](DaemonClient& c) { return PrintStatus(c, *format); });
  });
}

void AddSessionsCommand(CLI::App& app) {
  struct Args {
    std::string socket_path;
    bool all = false;
    bool closed = false;
    bool json = false;
  };
  auto args = std::make_shared<Args>();
  CLI::App* cmd = app.add_subcommand("sessions", "List your sessions in kvkeepd");
  AddSocketOption(cmd, &args->socket_path);
  cmd->add_flag("--all", args->all, "every uid's sessions (root or the admin group)");
  cmd->add_flag("--closed", args->closed, "include closed (kept) sessions");
  cmd->add_flag("--json", args->json, "print JSON");
  cmd->callback([args] {
    WithClient(args->socket_path, [&](DaemonClient& c) {
      return PrintSessions(c, args->all, args->closed, args->json);
    });
  });
}

void AddChatCommand(CLI::App& app) {
  auto socket_path = std::make_shared<std::string>();
  auto args = std::make_shared<ChatArgs>();
  CLI::App* cmd =
      app.add_subcommand("chat", "Chat with kvkeepd's model: stdin lines in, streamed replies out");
  AddSocketOption(cmd, socket_path.get());
  cmd->add_option("--session", args->session, "session id (reopened if kept; default: new)");
  cmd->add_option("--system", args->system, "system prompt of a new session");
  cmd->add_option("--max-tokens", args->max_tokens, "per reply")->capture_default_str();
  cmd->add_option("--temperature", args->temperature, "0 = greedy")->capture_default_str();
  cmd->add_option("--top-p", args->top_p)->capture_default_str();
  cmd->add_option("--seed", args->seed)->capture_default_str();
  cmd->add_flag("--discard", args->discard, "delete the session at the end (default: keep)");
  cmd->add_flag("--usage", args->usage, "print token usage after each reply (stderr)");
  cmd->callback([socket_path, args] {
    WithClient(*socket_path, [&](DaemonClient& c) { return Chat(c, *args); });
  });
}

}  // namespace kvkeep::tools
