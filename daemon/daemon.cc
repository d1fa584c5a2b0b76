#include "daemon/daemon.h"

#include "daemon/backend_factory.h"

#include <spdlog/spdlog.h>

#include <asio.hpp>
#include <thread>

#include "base/clock.h"
#include "base/logging.h"
#include "daemon/cache_policy.h"
#include "daemon/metrics.h"
#include "daemon/peer_cred.h"
#include "daemon/sd_notify.h"
#include "daemon/server.h"
#include "daemon/service.h"
#include "daemon/state_dir.h"
#include "daemon/store.h"
#include "daemon/turn_renderer.h"
#include "engine/default_model.h"
#include "engine/engine.h"
#include "engine/gguf_file.h"
#include "engine/model_identity.h"
#include "engine/model_weights.h"
#include "engine/synthetic_model.h"

namespace kvkeep {

struct Daemon::Impl {
  DaemonOptions options;
  std::vector<std::string> argv;
  Env* env = DefaultEnv();
  Clock* clock = SystemClock();

  std::unique_ptr<StateDir> state_dir;  // locked and private for the daemon's life
  std::unique_ptr<ModelWeights> weights;
  std::unique_ptr<Tokenizer> tokenizer;
  std::unique_ptr<Engine> engine;
  std::unique_ptr<TurnRenderer> renderer;
  std::unique_ptr<Store> store;
  DaemonMetrics metrics;
  asio::io_context io;
  std::unique_ptr<Service> service;
  std::unique_ptr<Server> server;
  asio::signal_set signals{io};
  asio::steady_timer watchdog{io};
  asio::steady_timer shutdown_timer{io};
  std::chrono::milliseconds watchdog_interval{0};
  int64_t last_steps = -1;
  int stalled_ticks = 0;
  bool shutting_down = false;
  int64_t shutdown_started_us = 0;

  Status LoadModel();
  void WaitSignal();
  void Reload();
  void BeginShutdown();
  void DrainTick();
  void WatchdogTick();
  std::string StatusLine() const;
};

Daemon::Daemon(DaemonOptions options, std::vector<std::string> argv) : impl_(new Impl) {
  impl_->options = std::move(options);
  impl_->argv = std::move(argv);
}

Daemon::~Daemon() {
  if (impl_->engine) impl_->engine->Stop();
}

Status Daemon::Impl::LoadModel() {
  ASSIGN_OR_RETURN(std::string dir,
                   ResolveModelPath(env, options.model_dir, options.DefaultModelDir()));
  ASSIGN_OR_RETURN(ModelConfig config, LoadModelConfig(env, dir));
  ASSIGN_OR_RETURN(weights, ModelWeights::Load(env, dir, config));
  ASSIGN_OR_RETURN(tokenizer, LoadTokenizer(env, dir));
  ASSIGN_OR_RETURN(renderer, TurnRenderer::Create(env, dir, tokenizer.get()));

  EngineOptions eo;
  eo.backend.num_kv_blocks = options.engine.num_kv_blocks;
  eo.backend.kv_memory_bytes = static_cast<size_t>(options.engine.kv_memory_bytes);
  eo.backend.block_size = options.engine.block_size;
  eo.backend.num_threads = options.engine.num_threads;
  eo.max_batch_tokens = options.engine.max_batch_tokens;
  eo.prefill_chunk_tokens = options.engine.prefill_chunk_tokens;
  eo.max_running = options.engine.max_running;
  eo.num_host_blocks = options.engine.host_blocks;
  eo.disk_bytes = static_cast<int64_t>(options.engine.disk_gib * double(int64_t{1} << 30));
  eo.disk_dir = JoinPath(options.state_dir, "kv");
  std::string model_id = dir;
  while (model_id.size() > 1 && model_id.back() == '/') model_id.pop_back();
  model_id = model_id.substr(model_id.find_last_of('/') + 1);
  if (IsGgufPath(model_id)) model_id.resize(model_id.size() - 5);  // "name.gguf" -> "name"
  eo.model_id = ModelIdentity(config, *weights);  // the KV scope: content, not the folder
  ASSIGN_OR_RETURN(const CachePolicy* policy, FindCachePolicy(options.policy));
  policy->configure(&eo);

  ASSIGN_OR_RETURN(auto backend,
                   CreateBackendForDevice(options.engine.device, *weights, eo.backend));
  const KvPoolShape shape = backend->kv_shape();
  int64_t max_context = int64_t{shape.num_blocks} * shape.block_size;
  if (config.max_position_embeddings > 0) {
    max_context = std::min<int64_t>(max_context, config.max_position_embeddings);
  }
  ASSIGN_OR_RETURN(engine, Engine::Create(eo, std::move(backend), tokenizer.get(), clock));
  RETURN_IF_ERROR(engine->Start());
  spdlog::info("model {} ({}, {} layers, vocab {}) on {}: {} KV blocks of {} tokens, policy {}",
               model_id, config.architecture, config.num_layers, config.vocab_size,
               options.engine.device, shape.num_blocks, shape.block_size, policy->name);

  ServiceOptions so;
  so.limits = options.limits;
  so.model_id = model_id;
  so.max_context_tokens = max_context;
  so.block_size = shape.block_size;
  so.policy = policy->name;
  ServiceDeps deps;
  deps.engine = engine.get();
  deps.renderer = renderer.get();
  deps.store = store.get();
  deps.clock = clock;
  deps.metrics = &metrics;
  deps.post = [this](std::function<void()> task) { asio::post(io, std::move(task)); };
  service = std::make_unique<Service>(so, std::move(deps));
  return Status::OK();
}

Status Daemon::Init() {
  Impl& d = *impl_;
  // Socket activation first: it also unsets LISTEN_* before any thread starts.
  std::optional<int> activated_fd = daemon::SdListenUnixFd(d.env);
  ASSIGN_OR_RETURN(d.state_dir, StateDir::Open(d.options.state_dir));
  daemon::SdNotify("STATUS=opening the store", d.env);
  ASSIGN_OR_RETURN(d.store, Store::Open(d.options.DatabasePath()));
  daemon::SdNotify("STATUS=loading the model", d.env);
  RETURN_IF_ERROR(d.LoadModel());
  RETURN_IF_ERROR(d.service->LoadSessions());

  ServerOptions so;
  so.socket_path = d.options.socket_path;
  so.socket_mode = d.options.socket_mode;
  so.limits = d.options.limits;
  if (!d.options.socket_group.empty()) {
    ASSIGN_OR_RETURN(so.socket_gid, LookupGroup(d.options.socket_group));
  }
  if (!d.options.admin_group.empty()) {
    ASSIGN_OR_RETURN(so.admin_gid, LookupGroup(d.options.admin_group));
  }
  d.server = std::make_unique<Server>(d.io, so, d.service.get(), &d.metrics);
  if (activated_fd) {
    RETURN_IF_ERROR(d.server->Adopt(*activated_fd));
    spdlog::info("listening on the socket-activated fd {}", *activated_fd);
  } else {
    RETURN_IF_ERROR(d.server->Listen());
    spdlog::info("listening on {}", d.options.socket_path);
  }
  return Status::OK();
}

std::string Daemon::Impl::StatusLine() const {
  const EngineStats es = engine->GetStats();
  return "STATUS=" + std::to_string(metrics.connections.load()) + " connections, " +
         std::to_string(service->num_generating()) + " generating, " +
         std::to_string(es.blocks_used) + "/" + std::to_string(es.blocks_total) +
         " KV blocks in use";
}

void Daemon::Impl::WaitSignal() {
  signals.async_wait([this](std::error_code ec, int signo) {
    if (ec) return;
    if (signo == SIGHUP) {
      Reload();
      WaitSignal();
      return;
    }
    spdlog::info("signal {}: shutting down", signo);
    BeginShutdown();
  });
}

void Daemon::Impl::Reload() {
  daemon::SdNotify("RELOADING=1", env);
  std::vector<const char*> args;
  for (const std::string& a : argv) args.push_back(a.c_str());
  auto cl = ParseCommandLine(static_cast<int>(args.size()), args.data(), env);
  Status st = cl.ok() ? ValidateDaemonOptions(cl->options) : cl.status();
  if (!st.ok()) {
    spdlog::error("SIGHUP: configuration not reloaded: {}", st.message());
  } else {
    const DaemonOptions& n = cl->options;
    if (n.log_level != options.log_level) {
      if (SetLogLevel(n.log_level).ok()) {
        spdlog::info("SIGHUP: log level {} -> {}", options.log_level, n.log_level);
        options.log_level = n.log_level;
      }
    }
    if (n.policy != options.policy) {
      // The policies registered today fix EngineOptions at engine creation.
      spdlog::warn("SIGHUP: policy change {} -> {} needs a restart", options.policy, n.policy);
    }
    spdlog::info("SIGHUP: configuration reloaded");
  }
  daemon::SdNotify("READY=1\n" + StatusLine(), env);
}

void Daemon::Impl::BeginShutdown() {
  if (shutting_down) return;
  shutting_down = true;
  shutdown_started_us = clock->NowMicros();
  daemon::SdNotify("STOPPING=1\nSTATUS=shutting down", env);
  server->StopAccepting();
  service->BeginShutdown();
  watchdog.cancel();
  DrainTick();
}

void Daemon::Impl::DrainTick() {
  const bool grace_over = clock->NowMicros() - shutdown_started_us > kShutdownGraceMs * 1000;
  if (service->num_generating() > 0 && !grace_over) {
    shutdown_timer.expires_after(std::chrono::milliseconds(20));
    shutdown_timer.async_wait([this](std::error_code ec) {
      if (!ec) DrainTick();
    });
    return;
  }
  if (service->num_generating() > 0) {
    spdlog::warn("shutdown: cancelling {} generations", service->num_generating());
  }
  // Cancels what is left; their completions (errors `cancelled`) are posted to io.
  engine->Stop();
  shutdown_timer.expires_after(std::chrono::milliseconds(50));
  shutdown_timer.async_wait([this](std::error_code) {
    server->CloseAll();
    signals.cancel();
    shutdown_timer.expires_after(std::chrono::milliseconds(50));
    shutdown_timer.async_wait([this](std::error_code) { io.stop(); });
  });
}

void Daemon::Impl::WatchdogTick() {
  // Ping only while the engine makes progress: with work queued and no step for
  // three intervals, stop pinging and let systemd restart the daemon.
  const EngineStats es = engine->GetStats();
  const bool has_work = es.running + es.waiting > 0;
  stalled_ticks = (has_work && es.steps == last_steps) ? stalled_ticks + 1 : 0;
  last_steps = es.steps;
  if (stalled_ticks < 3) {
    daemon::SdNotify("WATCHDOG=1\n" + StatusLine(), env);
  } else {
    spdlog::error("watchdog: the engine made no step for {} intervals", stalled_ticks);
  }
  watchdog.expires_after(watchdog_interval);
  watchdog.async_wait([this](std::error_code ec) {
    if (!ec) WatchdogTick();
  });
}

Status Daemon::Run() {
  Impl& d = *impl_;
  d.signals.add(SIGTERM);
  d.signals.add(SIGINT);
  d.signals.add(SIGHUP);
  d.WaitSignal();
  d.server->StartAccepting();
  d.watchdog_interval = std::chrono::milliseconds(d.options.watchdog_interval_ms);
  if (d.watchdog_interval.count() == 0) {
    d.watchdog_interval = std::chrono::duration_cast<std::chrono::milliseconds>(
        daemon::SdWatchdogInterval(d.env) / 2);
  }
  if (d.watchdog_interval.count() > 0) d.WatchdogTick();
  daemon::SdNotify("READY=1\n" + d.StatusLine(), d.env);
  spdlog::info("kvkeepd ready");

  std::vector<std::thread> threads;
  for (int i = 1; i < d.options.io_threads; ++i) threads.emplace_back([&d] { d.io.run(); });
  d.io.run();
  for (std::thread& t : threads) t.join();
  d.engine->Stop();
  d.server.reset();
  d.service.reset();
  d.store.reset();  // closes SQLite (checkpoints the WAL)
  spdlog::info("kvkeepd stopped");
  return Status::OK();
}

}  // namespace kvkeep
