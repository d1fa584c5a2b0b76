#include "daemon/daemon.h"

#include "daemon/backend_factory.h"

#include <spdlog/spdlog.h>

#include <asio.hpp>
#include <map>
#include <thread>

#include "base/clock.h"
#include "base/logging.h"
#include "daemon/episode_index.h"
#include "daemon/episode_serve.h"
#include "daemon/http_server.h"
#include "daemon/metrics.h"
#include "daemon/openai_api.h"
#include "daemon/peer_cred.h"
#include "daemon/sd_notify.h"
#include "daemon/server.h"
#include "daemon/service.h"
#include "daemon/state_dir.h"
#include "daemon/store.h"
#include "daemon/turn_renderer.h"
#include "engine/cost_calibration.h"
#include "engine/default_model.h"
#include "engine/engine.h"
#include "engine/gguf_file.h"
#include "engine/layer_budget.h"
#include "engine/model_identity.h"
#include "engine/model_weights.h"
#include "engine/sim_backend.h"
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
  std::unique_ptr<StepLog> step_log;  // engine.step_log; outlives the engine
  std::unique_ptr<Engine> engine;
  CostModel cost_model = DefaultCostModel();  // prices a hit; calibrated or loaded at start
  std::unique_ptr<TurnRenderer> renderer;
  std::unique_ptr<Store> store;
  std::unique_ptr<EpisodeIndex> episodes;  // null when options.episodes.index is off
  DaemonMetrics metrics;
  std::string model_id;
  asio::io_context io;
  std::unique_ptr<Service> service;
  std::unique_ptr<Server> server;
  std::unique_ptr<OpenAiApi> openai;
  std::unique_ptr<HttpServer> http;
  // Handles the native socket's large lines (a large append) and the store write of each
  // generation's reply off the I/O threads; as many threads as io_threads. Run() joins it
  // once the I/O threads are done; a job queued after that is destroyed unrun with it
  // (first: its jobs use the service).
  std::unique_ptr<asio::thread_pool> bulk;
  asio::signal_set signals{io};
  asio::steady_timer watchdog{io};
  asio::steady_timer shutdown_timer{io};
  std::chrono::milliseconds watchdog_interval{0};
  int64_t last_steps = -1;
  int stalled_ticks = 0;
  bool shutting_down = false;
  int64_t shutdown_started_us = 0;

  Status Assemble();
  Status Calibrate(PolicyOptions policy, const std::string& path, const TierBandwidths& tiers);
  Status StartHttp(int activated_fd);
  void WaitSignal();
  void Reload();
  void BeginShutdown();
  void DrainTick();
  void WatchdogTick();
  std::string StatusLine() const;
  void WriteStepLog() const;
};

Daemon::Daemon(DaemonOptions options, std::vector<std::string> argv) : impl_(new Impl) {
  impl_->options = std::move(options);
  impl_->argv = std::move(argv);
}

Daemon::~Daemon() {
  if (impl_->engine) impl_->engine->Stop();
}

namespace {

// A model's display name: its directory's or file's basename, without ".gguf". Its KV
// scope is ModelIdentity, never this name.
std::string ModelName(std::string path) {
  while (path.size() > 1 && path.back() == '/') path.pop_back();
  path = path.substr(path.find_last_of('/') + 1);
  if (IsGgufPath(path)) path.resize(path.size() - 5);
  return path;
}

EngineOptions MakeEngineOptions(const DaemonOptions& options, const std::string& identity) {
  const DaemonEngineOptions& e = options.engine;
  EngineOptions eo;
  eo.backend.num_kv_blocks = e.num_kv_blocks;
  eo.backend.kv_memory_bytes = static_cast<size_t>(e.kv_memory_bytes);
  eo.backend.block_size = e.block_size;
  eo.backend.num_threads = e.num_threads;
  eo.max_batch_tokens = e.max_batch_tokens;
  eo.prefill_chunk_tokens = e.prefill_chunk_tokens;
  eo.max_running = e.max_running;
  eo.max_device_blocks_per_tenant = options.limits.max_device_blocks_per_uid;  // salt = uid
  eo.max_host_blocks_per_tenant = options.limits.max_host_blocks_per_uid;
  eo.max_disk_blocks_per_tenant = options.limits.max_disk_blocks_per_uid;
  eo.num_host_blocks = e.host_blocks;
  eo.disk_bytes = static_cast<int64_t>(e.disk_gib * double(int64_t{1} << 30));
  eo.disk_dir = JoinPath(options.state_dir, "kv");
  eo.model_id = identity;
  return eo;
}

// The remote tier's options (none without cluster.remote_tier), the AUTH password read here.
Result<std::optional<RemoteTierOptions>> MakeRemoteTierOptions(Env* env,
                                                               const DaemonClusterOptions& c) {
  if (c.remote_tier.empty()) return std::optional<RemoteTierOptions>();
  RemoteTierOptions r;
  ASSIGN_OR_RETURN(r.address, ParseRemoteAddress(c.remote_tier));
  if (!c.remote_auth_file.empty()) {
    ASSIGN_OR_RETURN(r.password, env->ReadFile(c.remote_auth_file));
    if (r.password.ends_with('\n')) r.password.pop_back();
  }
  r.timeout_us = c.remote_timeout_ms * 1000;
  spdlog::info("remote tier {} (timeout {} ms{})", c.remote_tier, c.remote_timeout_ms,
               r.password.empty() ? "" : ", AUTH");
  return std::optional<RemoteTierOptions>(std::move(r));
}

}  // namespace

// --calibrate-cost-model: times this engine (before its thread starts), fits the cost
// model, saves it in the state directory and hands it to the policy.
Status Daemon::Impl::Calibrate(PolicyOptions policy, const std::string& path,
                               const TierBandwidths& tiers) {
  daemon::SdNotify("STATUS=calibrating the cost model", env);
  const int64_t max_context = engine->GetStats().blocks_total * options.engine.block_size;
  CalibrationOptions co;
  co.prefill_chunk_tokens = options.engine.prefill_chunk_tokens;
  co.base.kv_bytes_per_token = tiers.kv_bytes_per_token;
  if (options.engine.host_blocks > 0) {
    co.base.host_to_device_bytes_per_s = tiers.host_to_device_bytes_per_s;
    co.base.host_duplex_share = tiers.host_duplex_share;
  }
  if (options.engine.disk_gib > 0) {
    co.base.disk_to_device_bytes_per_s = tiers.disk_to_device_bytes_per_s;
  }
  ASSIGN_OR_RETURN(CostFit fit, CalibrateCostModel(engine.get(), max_context, co));
  spdlog::info(
      "cost model calibrated:\n{}host -> device {:.3g} GB/s (duplex share {:.2f}; swaps of {} "
      "bytes), disk -> device {:.3g} GB/s ({} bytes timed)",
      FormatCostFit(fit), tiers.host_to_device_bytes_per_s / 1e9, tiers.host_duplex_share,
      tiers.swap_bytes_timed, tiers.disk_to_device_bytes_per_s / 1e9, tiers.bytes_timed);
  cost_model = fit.model;
  RETURN_IF_ERROR(SaveCostModel(env, path, cost_model).WithContext("saving the cost model"));
  policy.cost_model = cost_model;
  return engine->SetPolicy(policy);
}

// REQUIRES: the engine stopped. A failure is logged: the daemon's state does not depend on it.
void Daemon::Impl::WriteStepLog() const {
  const std::string& path = options.engine.step_log;
  if (Status st = step_log->Write(env, path); !st.ok()) {
    spdlog::error("step log: {}", st.ToString());
    return;
  }
  spdlog::info("step log: {} steps written to {} ({} later steps not kept)",
               step_log->steps().size(), path, step_log->dropped());
}

// The composition root: store, model, engine and service, each built from the options.
Status Daemon::Impl::Assemble() {
  daemon::SdNotify("STATUS=opening the store", env);
  ASSIGN_OR_RETURN(store, Store::Open(options.DatabasePath()));
  if (!options.testing_store_fault.empty()) {  // TESTING ONLY (daemon/config.h)
    ASSIGN_OR_RETURN(const StoreFault fault, ParseStoreFault(options.testing_store_fault));
    spdlog::warn("TESTING ONLY: the store's write {} fails ({})", fault.first_failing,
                 options.testing_store_fault);
    store->TEST_InjectFault(fault);
  }
  daemon::SdNotify("STATUS=loading the model", env);
  ASSIGN_OR_RETURN(const std::string dir,
                   ResolveModelPath(env, options.model_dir, options.DefaultModelDir()));
  model_id = ModelName(dir);
  ASSIGN_OR_RETURN(ModelConfig config, LoadModelConfig(env, dir));
  ASSIGN_OR_RETURN(weights, ModelWeights::Load(env, dir, config));
  ASSIGN_OR_RETURN(tokenizer, LoadTokenizer(env, dir));
  ASSIGN_OR_RETURN(renderer, TurnRenderer::Create(env, dir, tokenizer.get()));

  // The KV scope: the model's content, not its folder.
  EngineOptions eo = MakeEngineOptions(options, ModelIdentity(config, *weights));
  ASSIGN_OR_RETURN(eo.remote_tier, MakeRemoteTierOptions(env, options.cluster));
  TenantSalt tenant_salt;
  if (!options.cluster.cluster_secret_file.empty()) {
    ASSIGN_OR_RETURN(tenant_salt,
                     TenantSalt::FromSecretFile(env, options.cluster.cluster_secret_file));
  }
  ToPolicyOptions(options, &eo.policy);
  const std::string cost_path = JoinPath(options.state_dir, "cost_model.json");
  if (!options.ttl.calibrate && env->FileExists(cost_path)) {
    ASSIGN_OR_RETURN(cost_model, LoadCostModel(env, cost_path));
    spdlog::info("cost model from {} ({})", cost_path, cost_model.source);
  }
  eo.policy.cost_model = cost_model;
  ASSIGN_OR_RETURN(eo.tool_samples, store->ToolSamples(options.ttl.window_samples));
  ASSIGN_OR_RETURN(
      auto backend,
      options.testing_sim_cost_model.empty()
          ? CreateBackendForDevice(options.engine.device, *weights, eo.backend)
          : CreatePacedSimBackend(env, config, eo.backend, options.testing_sim_cost_model));
  const KvPoolShape shape = backend->kv_shape();
  TierBandwidths tiers;
  if (options.ttl.calibrate) {  // before the engine owns the pool: the probe overwrites it
    TierBandwidthOptions to;
    if (options.engine.disk_gib > 0) to.scratch_dir = options.state_dir;
    to.host_blocks = options.engine.host_blocks;
    ASSIGN_OR_RETURN(tiers, MeasureTierBandwidths(backend.get(), env, clock, to));
  }
  EpisodeServeOptions episode_serve{.budget_tokens = options.episodes.cache_budget_tokens,
                                    .block_tokens = options.episodes.cache_block_tokens};
  if (options.episodes.index && options.episodes.serve && options.episodes.cache_layer_alpha > 0) {
    // Before the engine owns the pool, like the tier probe: a measurement overwrites it.
    daemon::SdNotify("STATUS=measuring the layer profile", env);
    ASSIGN_OR_RETURN(LayerProfile profile,
                     LoadOrMeasureLayerProfileOfFile(
                         env, options.state_dir, ModelIdentity(config, *weights), backend.get(),
                         *tokenizer, options.episodes.calibration_file, /*max_tokens=*/0,
                         options.episodes.cache_block_tokens));
    episode_serve.layer_alpha = options.episodes.cache_layer_alpha;
    episode_serve.layer_similarity = std::move(profile.similarity);
  }
  if (!options.engine.step_log.empty()) {
    step_log = std::make_unique<StepLog>(StepLog::kDefaultCapacity);
    eo.step_log = step_log.get();
  }
  ASSIGN_OR_RETURN(engine, Engine::Create(eo, std::move(backend), tokenizer.get(), clock));
  if (options.ttl.calibrate) RETURN_IF_ERROR(Calibrate(eo.policy, cost_path, tiers));
  if (step_log) step_log->Clear();  // the served steps only (the engine thread starts next)
  RETURN_IF_ERROR(engine->Start());
  spdlog::info("model {} ({}, {} layers, vocab {}) on {}: {} KV blocks of {} tokens, policy {}",
               model_id, config.architecture, config.num_layers, config.vocab_size,
               options.engine.device, shape.num_blocks, shape.block_size, options.policy);

  ServiceOptions so;
  so.limits = options.limits;
  so.model_id = model_id;
  so.max_context_tokens = int64_t{shape.num_blocks} * shape.block_size;
  if (config.max_position_embeddings > 0) {
    so.max_context_tokens =
        std::min<int64_t>(so.max_context_tokens, config.max_position_embeddings);
  }
  so.block_size = shape.block_size;
  so.policy = options.policy;
  so.retain_quota_blocks = options.ttl.retain_quota_blocks;
  so.tenant_salt = tenant_salt;
  if (options.episodes.index) {
    ASSIGN_OR_RETURN(episodes, EpisodeIndex::Create(MakeEpisodeOptions(options.episodes), env,
                                                    store.get(), clock));
  }
  ServiceDeps deps{
      engine.get(), renderer.get(),
      store.get(),  clock,
      &metrics,     [this](std::function<void()> task) { asio::post(io, std::move(task)); }};
  // A generation's reply is stored on the bulk pool (made before the server accepts).
  deps.post_store = [this](std::function<void()> task) {
    if (bulk != nullptr) {
      asio::post(*bulk, std::move(task));
    } else {
      asio::post(io, std::move(task));
    }
  };
  deps.episodes = episodes.get();
  if (episodes != nullptr && options.episodes.serve) {  // routed turns decode from caches
    deps.serve_episode = MakeEpisodeServeFn(episode_serve);
  }
  service = std::make_unique<Service>(so, std::move(deps));
  return service->LoadSessions();
}

namespace {

// TESTING ONLY: the forced replies of --testing-scripted-replies (a JSON array of strings).
Result<std::vector<std::string>> LoadScriptedReplies(Env* env, const std::string& path) {
  ASSIGN_OR_RETURN(std::string text, env->ReadFile(path));
  nlohmann::json doc = nlohmann::json::parse(text, nullptr, false);
  std::vector<std::string> replies;
  if (doc.is_array()) {
    for (const auto& r : doc) {
      if (r.is_string()) replies.push_back(r.get<std::string>());
    }
  }
  if (replies.empty() || replies.size() != doc.size()) {
    return Status::InvalidArgument(path + ": expected a non-empty JSON array of strings");
  }
  spdlog::warn("TESTING: replies are forced from {} ({} replies)", path, replies.size());
  return replies;
}

}  // namespace

// The OpenAI-compatible front end: the API over the service, on the HTTP listeners.
Status Daemon::Impl::StartHttp(int activated_fd) {
  const DaemonHttpOptions& h = options.http;
  OpenAiOptions oo;
  oo.model_id = model_id;
  oo.max_tokens = options.limits.max_tokens;
  oo.max_json_depth = options.limits.max_json_depth;
  oo.max_inflight = h.max_inflight;
  if (!h.testing_scripted_replies.empty()) {
    ASSIGN_OR_RETURN(oo.scripted_replies, LoadScriptedReplies(env, h.testing_scripted_replies));
  }
  openai = std::make_unique<OpenAiApi>(std::move(oo), service.get());

  HttpServerOptions ho;
  ho.unix_path = options.HttpSocketPath();
  ho.unix_mode = h.socket_mode;
  ho.tcp_listen = h.listen;
  if (!h.listen.empty()) {
    if (h.api_key_file.empty())
      return Status::InvalidArgument("--http-listen needs --api-key-file");
    ASSIGN_OR_RETURN(ho.api_keys, LoadApiKeys(h.api_key_file));
  }
  ho.public_paths = {"/health"};
  ho.max_body_bytes = h.max_body_bytes;
  ho.max_connections = h.max_connections;
  ho.idle_timeout_s = h.idle_timeout_s;
  ho.refusal = [](int status) {
    return status == 401
               ? OpenAiError(401, "a valid API key is required (Authorization: Bearer KEY)",
                             "invalid_api_key")
               : OpenAiError(413, "the request body is over the limit", "request_too_large");
  };
  http = std::make_unique<HttpServer>(std::move(ho), [this](const HttpRequest& r) {
    metrics.requests.fetch_add(1, std::memory_order_relaxed);
    HttpResponse resp = openai->Handle(r);
    if (resp.status >= 400) metrics.errors.fetch_add(1, std::memory_order_relaxed);
    return resp;
  });
  RETURN_IF_ERROR(http->Start(activated_fd));
  if (activated_fd >= 0 || !options.HttpSocketPath().empty()) {
    spdlog::info("HTTP (OpenAI API) on {}",
                 activated_fd >= 0 ? "the socket-activated fd " + std::to_string(activated_fd)
                                   : options.HttpSocketPath());
  }
  if (!h.listen.empty())
    spdlog::info("HTTP (OpenAI API) on tcp {} port {}", h.listen, http->tcp_port());
  return Status::OK();
}

Status Daemon::Init() {
  Impl& d = *impl_;
  // Socket activation first: it also unsets LISTEN_* before any thread starts.
  // kvkeepd.socket passes the native socket ("kvkeep"), kvkeepd-http.socket the HTTP one.
  std::map<std::string, int> passed;
  if (auto fds = daemon::SdListenUnixFdsOrError(d.env); fds.ok()) {
    passed = std::move(*fds);
  } else {
    spdlog::error("ignoring socket activation: {}", fds.status().ToString());
  }
  std::optional<int> activated_fd;
  for (const char* name : {"kvkeep", "unknown"}) {
    if (passed.count(name)) activated_fd = passed[name];
  }
  const int activated_http_fd = passed.count("kvkeep-http") ? passed["kvkeep-http"] : -1;
  ASSIGN_OR_RETURN(d.state_dir, StateDir::Open(d.options.state_dir));
  RETURN_IF_ERROR(d.Assemble());

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
  d.bulk = std::make_unique<asio::thread_pool>(static_cast<size_t>(d.options.io_threads));
  d.server =
      std::make_unique<Server>(d.io, so, d.service.get(), &d.metrics, d.bulk->get_executor());
  if (activated_fd) {
    RETURN_IF_ERROR(d.server->Adopt(*activated_fd));
    spdlog::info("listening on the socket-activated fd {}", *activated_fd);
  } else {
    RETURN_IF_ERROR(d.server->Listen());
    spdlog::info("listening on {}", d.options.socket_path);
  }
  return d.StartHttp(activated_http_fd);
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
    PolicyOptions now, next;
    ToPolicyOptions(options, &now);
    ToPolicyOptions(n, &next);
    if (n.policy != options.policy || n.ttl.max_ttl_s != options.ttl.max_ttl_s ||
        n.ttl.fixed_ttl_s != options.ttl.fixed_ttl_s ||
        n.ttl.fixed_ttl_mean_threshold_s != options.ttl.fixed_ttl_mean_threshold_s ||
        n.ttl.starvation_bound_s != options.ttl.starvation_bound_s ||
        n.ttl.prior_mean_s != options.ttl.prior_mean_s ||
        n.ttl.cost_s_per_block_s != options.ttl.cost_s_per_block_s ||
        n.ttl.turn_end_grace_s != options.ttl.turn_end_grace_s ||
        n.ttl.min_samples != options.ttl.min_samples ||
        n.ttl.window_samples != options.ttl.window_samples) {
      next.cost_model = cost_model;
      if (Status ps = engine->SetPolicy(next); ps.ok()) {
        spdlog::info("SIGHUP: policy {} -> {}", options.policy, n.policy);
        options.policy = n.policy;
        options.ttl = n.ttl;
      } else {
        spdlog::warn("SIGHUP: policy {} not applied: {}", n.policy, ps.message());
      }
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
  if (http) http->StopAccepting();
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
  d.bulk->join();  // the large lines in hand finish (their replies go nowhere now)
  d.engine->Stop();
  if (d.step_log) d.WriteStepLog();
  d.http.reset();  // joins the connection threads (their waits end: peers read as gone)
  d.openai.reset();
  d.server.reset();
  d.service.reset();
  d.episodes.reset();  // finishes its job in hand and saves what is unsaved
  d.store.reset();     // closes SQLite (checkpoints the WAL)
  spdlog::info("kvkeepd stopped");
  return Status::OK();
}

}  // namespace kvkeep
