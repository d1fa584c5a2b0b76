#include "tools/replay_daemon_state.h"

#include "base/clock.h"
#include "base/file.h"
#include "daemon/store.h"
#include "policy/cost_model.h"
#include "policy/tool_key.h"
#include "tools/replay/trace.h"

namespace kvkeep::tools {
namespace {

Status AddToolHistory(const DaemonStateSeed& seed, const std::string& state_dir) {
  ASSIGN_OR_RETURN(std::vector<replay::Session> sessions,
                   replay::ReadTraceFile(seed.tool_history_trace));
  ASSIGN_OR_RETURN(std::unique_ptr<Store> store, Store::Open(JoinPath(state_dir, "kvkeep.db")));
  // Oldest first, one microsecond apart, all before now: the daemon's window keeps the
  // newest samples of each key.
  std::vector<ToolSample> samples;
  for (const replay::Session& s : sessions) {
    std::string key;
    for (const replay::Event& e : s.events) {
      // The replayer sends the recorded command as tool_begin's args: the key kvkeepd
      // learns it under.
      if (e.type == replay::EventType::kToolBegin) key = ToolKeyOfArgs(e.tool, e.command);
      if (e.type != replay::EventType::kToolEnd || key.empty()) continue;
      samples.push_back({key, static_cast<int64_t>(e.duration_s * seed.time_scale * 1e6), 0});
      key.clear();
    }
  }
  const int64_t now_us = SystemClock()->WallMicros();
  for (size_t i = 0; i < samples.size(); ++i) {
    samples[i].at_us = now_us - static_cast<int64_t>(samples.size() - i);
    RETURN_IF_ERROR(store->AddToolSample(samples[i]));
  }
  return Status::OK();
}

}  // namespace

Status SeedDaemonState(const DaemonStateSeed& seed, const std::string& state_dir) {
  Env* env = DefaultEnv();
  RETURN_IF_ERROR(env->CreateDirs(state_dir, 0700));
  if (!seed.cost_model_file.empty()) {
    ASSIGN_OR_RETURN(const CostModel model, LoadCostModel(env, seed.cost_model_file));
    RETURN_IF_ERROR(SaveCostModel(env, JoinPath(state_dir, "cost_model.json"), model));
  }
  if (!seed.tool_history_trace.empty()) {
    RETURN_IF_ERROR(
        AddToolHistory(seed, state_dir).WithContext("--tool-history " + seed.tool_history_trace));
  }
  return Status::OK();
}

}  // namespace kvkeep::tools
