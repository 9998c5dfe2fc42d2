// effadam-server: the Efficient-Adam parameter server daemon. Serves
// effadam.v1.ParameterServer (docs/protocol.md), gRPC health checking and
// server reflection, and Prometheus metrics on --metrics_listen
// (docs/metrics.md); runs --rounds synchronous rounds (or until SIGTERM),
// then writes --summary_json, serves the final metrics for
// --metrics_linger and exits 0.

#include <grpcpp/ext/proto_server_reflection_plugin.h>
#include <grpcpp/grpcpp.h>
#include <grpcpp/health_check_service_interface.h>
#include <malloc.h>
#include <signal.h>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <memory>
#include <optional>
#include <string>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "common/compression_flags.h"
#include "common/checksum.h"
#include "common/grpc_security.h"
#include "common/json_writer.h"
#include "common/logger.h"
#include "common/prometheus_util.h"
#include "server/call_guard.h"
#include "server/checkpoint.h"
#include "server/parameter_server_service.h"
#include "server/server_metrics.h"
#include "server/token_authenticator.h"
#include "server/token_gate.h"

// The compression flags (--worker_codec, --server_codec, --block_size,
// --min_compress_elements, --error_feedback) are common/compression_flags.cc.
ABSL_FLAG(std::string, listen, "127.0.0.1:50051",
          "Address to serve on, host:port; port 0 picks a free port, which "
          "is printed");
ABSL_FLAG(int32_t, workers, 4, "Expected number of workers (ranks 0..N-1)");
ABSL_FLAG(int32_t, shard, 0,
          "This server's shard of the model, in [0, --num_shards) "
          "(docs/sharding.md)");
ABSL_FLAG(int32_t, num_shards, 1,
          "Number of servers the model is split over; every worker connects "
          "to all of them");
ABSL_FLAG(int64_t, rounds, 0,
          "Stop after this many rounds; 0 runs until SIGTERM/SIGINT");
ABSL_FLAG(double, round_timeout, 60,
          "Seconds after a round's first update at which it closes with the "
          "updates present");
ABSL_FLAG(int64_t, max_chunk_bytes, 1 << 20,
          "Largest payload of one chunk of UploadParams, FetchParams and "
          "Train, in bytes");
ABSL_FLAG(absl::Duration, keepalive_time, absl::Seconds(30),
          "How often the server pings each worker's connection: a worker "
          "whose host hung or vanished is dropped after --keepalive_time + "
          "--keepalive_timeout and its round closes without it (instead of "
          "after --round_timeout)");
ABSL_FLAG(absl::Duration, keepalive_timeout, absl::Seconds(10),
          "How long the server waits for the answer to a ping before it "
          "drops the connection");
ABSL_FLAG(absl::Duration, min_ping_interval, absl::Seconds(10),
          "The shortest interval between a worker's keepalive pings that "
          "the server accepts; a connection that pings faster is closed. "
          "Keep it at most the workers' --keepalive_time");
ABSL_FLAG(int32_t, max_threads, 256,
          "Threads gRPC may use for calls, its pollers included; a call that "
          "finds all busy fails at once with RESOURCE_EXHAUSTED. At least "
          "2 x --workers + 4 (each worker holds a Train stream and at times "
          "a fetch); bounds what floods of calls can take "
          "(docs/security.md)");
ABSL_FLAG(int64_t, max_transport_memory_mb, 128,
          "MiB of buffers gRPC's transport may hold before it shrinks them "
          "and closes the connections that hold the most (also what bounds "
          "over-limit messages sent at once); at least 4 x "
          "(--max_chunk_bytes + 64 KiB)");
ABSL_FLAG(int32_t, max_streams_per_connection, 100,
          "Concurrent calls one connection may have open");
ABSL_FLAG(absl::Duration, max_connection_idle, absl::Minutes(5),
          "A connection without any call for this long is closed; clients "
          "reconnect when they next call");
ABSL_FLAG(absl::Duration, send_stall_timeout, absl::Seconds(60),
          "A call whose outgoing message waits this long for its client to "
          "read it (a FetchParams or Train client that stopped reading) is "
          "cancelled, freeing its thread and buffers");
ABSL_FLAG(uint64_t, seed, 1,
          "Seed of the server codec's stochastic rounding; use the workers' "
          "--seed to match effadam-sim");
ABSL_FLAG(std::string, checkpoint_dir, "",
          "Directory for checkpoints of x, the error memory and the round; "
          "at start the newest one that verifies is restored. Empty: no "
          "checkpoints");
ABSL_FLAG(int64_t, checkpoint_every, 100,
          "With --checkpoint_dir: write a checkpoint every this many rounds "
          "(and always at the end and on SIGTERM/SIGINT); 0: only then");
ABSL_FLAG(int32_t, checkpoint_keep, 3,
          "With --checkpoint_dir: how many of the newest checkpoints to keep");
ABSL_FLAG(std::string, summary_json, "",
          "Write a JSON summary of the run to this file at exit");
ABSL_FLAG(std::string, metrics_listen, "127.0.0.1:9464",
          "Serve Prometheus metrics at http://ADDRESS/metrics, host:port; "
          "port 0 picks a free port, which is printed; empty disables");
ABSL_FLAG(std::string, tls_cert_file, "",
          "PEM file of the server's certificate chain; with --tls_key_file "
          "turns TLS on for the gRPC port (docs/security.md). Empty: "
          "plaintext");
ABSL_FLAG(std::string, tls_key_file, "",
          "PEM file of the private key of --tls_cert_file (unencrypted)");
ABSL_FLAG(std::string, tls_client_ca_file, "",
          "PEM file of the CA certificate(s) that sign client certificates; "
          "turns mutual TLS on: every client must present a certificate it "
          "signed. Needs --tls_cert_file");
ABSL_FLAG(std::string, auth_token_file, "",
          "File holding a shared token (surrounding whitespace ignored; use "
          "at least 32 random characters, e.g. `openssl rand -hex 32`); "
          "every effadam.v1 call must then carry `authorization: Bearer "
          "<token>`. grpc.health.v1 stays open. Empty: no token");
ABSL_FLAG(absl::Duration, metrics_linger, absl::ZeroDuration(),
          "After training ends and --summary_json is written, keep serving "
          "/metrics this long (or until SIGTERM/SIGINT) so that Prometheus "
          "scrapes the final values");

namespace effadam {
namespace {

// Set by the signal handler, read by the main loop: the only thing a
// handler may safely do.
std::atomic<int> g_signal{0};

extern "C" void OnSignal(int signo) { g_signal.store(signo); }

int Fail(const absl::Status& s) {
  std::fprintf(stderr, "effadam-server: %s\n", s.ToString().c_str());
  return 1;
}

absl::StatusOr<ServerOptions> OptionsFromFlags() {
  ServerOptions o;
  absl::StatusOr<CompressionConfig> compression = CompressionConfigFromFlags();
  if (!compression.ok()) return compression.status();
  o.compression = *compression;
  o.workers = absl::GetFlag(FLAGS_workers);
  o.shard = absl::GetFlag(FLAGS_shard);
  o.num_shards = absl::GetFlag(FLAGS_num_shards);
  o.rounds = absl::GetFlag(FLAGS_rounds);
  const double timeout = absl::GetFlag(FLAGS_round_timeout);
  if (!(timeout > 0)) {
    return absl::InvalidArgumentError(
        absl::StrCat("--round_timeout must be > 0 seconds, got ", timeout));
  }
  o.round_timeout = absl::Seconds(timeout);
  const int64_t chunk = absl::GetFlag(FLAGS_max_chunk_bytes);
  // gRPC's message size limits are ints; leave room for the envelope.
  if (chunk < 4 || chunk > (int64_t{1} << 30)) {
    return absl::InvalidArgumentError(
        absl::StrCat("--max_chunk_bytes must be in [4, 2^30], got ", chunk));
  }
  o.max_chunk_bytes = static_cast<size_t>(chunk);
  o.seed = absl::GetFlag(FLAGS_seed);
  const int64_t every = absl::GetFlag(FLAGS_checkpoint_every);
  if (every < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("--checkpoint_every must be >= 0, got ", every));
  }
  if (!absl::GetFlag(FLAGS_checkpoint_dir).empty()) o.checkpoint_every = every;
  return o;
}

absl::StatusOr<ServerSecurity> SecurityFromFlags() {
  ServerSecurityFiles files;
  files.cert_file = absl::GetFlag(FLAGS_tls_cert_file);
  files.key_file = absl::GetFlag(FLAGS_tls_key_file);
  files.client_ca_file = absl::GetFlag(FLAGS_tls_client_ca_file);
  files.token_file = absl::GetFlag(FLAGS_auth_token_file);
  return LoadServerSecurity(files);
}

// Opens --checkpoint_dir and restores its newest good checkpoint into
// `service`; null store when checkpoints are off.
absl::StatusOr<std::unique_ptr<CheckpointStore>> RestoreFromFlags(
    ParameterServerService& service) {
  const std::string dir = absl::GetFlag(FLAGS_checkpoint_dir);
  if (dir.empty()) return nullptr;
  absl::StatusOr<CheckpointStore> store =
      CheckpointStore::Open(dir, absl::GetFlag(FLAGS_checkpoint_keep));
  if (!store.ok()) return store.status();
  absl::StatusOr<std::optional<CheckpointStore::Loaded>> loaded =
      store->LoadNewest();
  if (!loaded.ok()) return loaded.status();
  if (!loaded->has_value()) {
    std::fprintf(stderr, "effadam-server: no checkpoint in %s; fresh start\n",
                 dir.c_str());
    return std::make_unique<CheckpointStore>(*std::move(store));
  }
  CheckpointStore::Loaded& l = **loaded;
  for (const std::string& why : l.skipped) {
    std::fprintf(stderr, "effadam-server: skipped checkpoint %s\n",
                 why.c_str());
  }
  const int64_t round = l.checkpoint.state.round;
  const std::string checksum = ParamsChecksum(l.checkpoint.state.params);
  if (absl::Status s = service.Restore(std::move(l.checkpoint)); !s.ok()) {
    return absl::Status(s.code(), absl::StrCat("restoring ", l.path, ": ",
                                               s.message()));
  }
  std::fprintf(stderr,
               "effadam-server: resumed from %s at round %lld, "
               "params_checksum %s\n",
               l.path.c_str(), static_cast<long long>(round), checksum.c_str());
  return std::make_unique<CheckpointStore>(*std::move(store));
}

// Writes `checkpoint` and reports it; a failure is logged and counted, and
// training goes on (the previous checkpoint is still there).
void WriteCheckpoint(CheckpointStore& store, const Checkpoint& checkpoint,
                     ServerObserver* observer) {
  const absl::Time start = absl::Now();
  absl::StatusOr<CheckpointStore::Written> w = store.Write(checkpoint);
  if (!w.ok()) {
    std::fprintf(stderr, "effadam-server: checkpoint failed: %s\n",
                 w.status().ToString().c_str());
    if (observer != nullptr) observer->OnCheckpointFailed();
    return;
  }
  CheckpointStats stats;
  stats.round = checkpoint.state.round;
  stats.bytes = w->bytes;
  stats.seconds = absl::ToDoubleSeconds(absl::Now() - start);
  std::fprintf(stderr,
               "effadam-server: checkpoint %s (round %lld, %lld B, %.2f s), "
               "params_checksum %s\n",
               w->path.c_str(), static_cast<long long>(stats.round),
               static_cast<long long>(stats.bytes), stats.seconds,
               w->params_checksum.c_str());
  if (observer != nullptr) observer->OnCheckpointWritten(stats);
}

int Run() {
  // Buffers of 1 MiB and more (a FetchParams call's copy of x, chunks) are
  // mapped for themselves and unmapped when freed. glibc's default raises
  // this threshold after the first such free, after which every thread's
  // arena keeps the largest buffer it ever held: a burst of calls on many
  // threads would keep the server's RSS that high for good.
  mallopt(M_MMAP_THRESHOLD, 1 << 20);
  absl::StatusOr<ServerOptions> options = OptionsFromFlags();
  if (!options.ok()) return Fail(options.status());
  const absl::Duration linger = absl::GetFlag(FLAGS_metrics_linger);
  if (linger < absl::ZeroDuration()) {
    return Fail(absl::InvalidArgumentError(absl::StrCat(
        "--metrics_linger must be >= 0, got ", absl::FormatDuration(linger))));
  }
  // Checked with the other flags, before a checkpoint is restored.
  ServerTransport transport;
  transport.max_chunk_bytes = options->max_chunk_bytes;
  transport.keepalive_time = absl::GetFlag(FLAGS_keepalive_time);
  transport.keepalive_timeout = absl::GetFlag(FLAGS_keepalive_timeout);
  transport.min_client_ping_interval = absl::GetFlag(FLAGS_min_ping_interval);
  transport.max_threads = absl::GetFlag(FLAGS_max_threads);
  transport.max_transport_memory_bytes = static_cast<size_t>(
      std::clamp<int64_t>(absl::GetFlag(FLAGS_max_transport_memory_mb), 0,
                          int64_t{1} << 30)) << 20;
  transport.max_streams_per_connection =
      absl::GetFlag(FLAGS_max_streams_per_connection);
  transport.max_connection_idle = absl::GetFlag(FLAGS_max_connection_idle);
  if (absl::Status s = CheckServerTransport(transport, options->workers);
      !s.ok()) {
    return Fail(s);
  }

  // Every file is read and checked before anything listens.
  absl::StatusOr<ServerSecurity> security = SecurityFromFlags();
  if (!security.ok()) return Fail(security.status());
  std::optional<TokenAuthenticator> authenticator;
  if (!security->token.empty()) {
    absl::StatusOr<TokenAuthenticator> a =
        TokenAuthenticator::Create(security->token);
    if (!a.ok()) return Fail(a.status());
    authenticator = *std::move(a);
    options->authenticator = &*authenticator;
  }

  // Metrics first: a port that is taken fails the start, before any worker
  // could join. The metrics outlive the service, which reports to them.
  const std::string metrics_listen = absl::GetFlag(FLAGS_metrics_listen);
  std::unique_ptr<ServerMetrics> metrics;
  std::unique_ptr<prometheus::Exposer> exposer;
  if (!metrics_listen.empty()) {
    absl::StatusOr<std::unique_ptr<prometheus::Exposer>> e =
        StartMetricsExposer(metrics_listen);
    if (!e.ok()) return Fail(e.status());
    exposer = *std::move(e);
    prometheus::Labels labels;
    if (options->num_shards > 1) {
      labels["shard"] = std::to_string(options->shard);
    }
    metrics = std::make_unique<ServerMetrics>(options->workers, labels);
    exposer->RegisterCollectable(metrics->registry());
    options->observer = metrics.get();
  }

  StderrLogger logger("effadam-server");
  options->logger = &logger;
  auto service = ParameterServerService::Create(*options);
  if (!service.ok()) return Fail(service.status());
  absl::StatusOr<std::unique_ptr<CheckpointStore>> checkpoints =
      RestoreFromFlags(**service);
  if (!checkpoints.ok()) return Fail(checkpoints.status());

  grpc::EnableDefaultHealthCheckService(true);
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  grpc::ServerBuilder builder;
  const std::string listen = absl::GetFlag(FLAGS_listen);
  int port = 0;
  // TLS, message size limits (a chunk plus its envelope; gRPC refuses
  // anything larger before it reaches the service), keepalive.
  // With TLS and a token, calls without it are refused before they take a
  // thread (server/token_gate.h).
  std::shared_ptr<TokenGate> gate;
  if (authenticator.has_value()) {
    gate = std::make_shared<TokenGate>(&*authenticator, options->observer);
  }
  ConfigureServer(listen, *security, transport, &builder, &port, gate);
  // Unparseable requests get INVALID_ARGUMENT, FetchParams calls are
  // bounded, stalled writes cancelled; calls holding threads are counted
  // for the health status below.
  CallLimits limits;
  limits.max_concurrent_fetches = options->workers;
  limits.send_stall_timeout = absl::GetFlag(FLAGS_send_stall_timeout);
  if (limits.send_stall_timeout < absl::Seconds(1) ||
      limits.send_stall_timeout > absl::Hours(24)) {
    return Fail(absl::InvalidArgumentError(
        absl::StrCat("--send_stall_timeout must be in [1s, 24h], got ",
                     absl::FormatDuration(limits.send_stall_timeout))));
  }
  CallGuard guard(options->observer, limits);
  guard.Install(&builder);
  builder.RegisterService(service->get());
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  if (!server || port == 0) {
    return Fail(
        absl::UnavailableError(absl::StrCat("cannot listen on ", listen)));
  }

  struct sigaction action = {};
  action.sa_handler = OnSignal;
  sigemptyset(&action.sa_mask);
  sigaction(SIGTERM, &action, nullptr);
  sigaction(SIGINT, &action, nullptr);

  const CompressionConfig& c = options->compression;
  const std::string host = listen.substr(0, listen.rfind(':'));
  std::printf("effadam-server listening on %s:%d\n", host.c_str(), port);
  if (exposer != nullptr) {
    const std::string metrics_host =
        metrics_listen.substr(0, metrics_listen.rfind(':'));
    std::printf("effadam-server metrics on http://%s:%d/metrics\n",
                metrics_host.c_str(), BoundPort(*exposer));
  }
  std::fflush(stdout);
  std::fprintf(stderr, "effadam-server: %s\n",
               DescribeServerSecurity(*security).c_str());
  std::fprintf(stderr,
               "effadam-server: %s%d workers, codecs %s/%s, error feedback %s, "
               "rounds %lld%s\n",
               options->num_shards > 1
                   ? absl::StrCat("shard ", options->shard, " of ",
                                  options->num_shards, ", ")
                         .c_str()
                   : "",
               options->workers, c.worker_codec.ToString().c_str(),
               c.server_codec.ToString().c_str(), ErrorFeedbackName(c),
               static_cast<long long>(options->rounds),
               options->rounds == 0 ? " (until SIGTERM)" : "");
  const absl::Time start = absl::Now();

  // The main thread is the watcher: it polls the signal flag and waits for
  // training to end; gRPC serves on its own threads.
  // It also writes the checkpoints, outside the service's lock: rounds go on
  // while a file is written.
  int64_t last_checkpoint_round = -1;
  // Health says NOT_SERVING while every call thread is taken (a flood, or
  // too small a --max_threads): new calls would fail with
  // RESOURCE_EXHAUSTED.
  // A flood flips it up to 10 times a second: the log says so at most a
  // few times a minute.
  bool serving = true;
  LogRateLimiter health_log(4, absl::Minutes(1));
  while (g_signal.load() == 0 &&
         !(*service)->WaitUntilDone(absl::Milliseconds(100))) {
    if (const bool free_thread =
            guard.calls_in_flight() < CallThreads(transport);
        free_thread != serving) {
      serving = free_thread;
      server->GetHealthCheckService()->SetServingStatus(serving);
      int64_t suppressed = 0;
      if (health_log.Allow(absl::Now(), &suppressed)) {
        logger.Warning(absl::StrCat(
            serving ? "call threads free again: SERVING"
                    : "every call thread is busy (--max_threads): "
                      "NOT_SERVING",
            suppressed > 0
                ? absl::StrCat(" (", suppressed, " changes not logged)")
                : ""));
      }
    }
    if (std::optional<Checkpoint> due = (*service)->TakeDueCheckpoint();
        due.has_value() && *checkpoints != nullptr) {
      WriteCheckpoint(**checkpoints, *due, options->observer);
      last_checkpoint_round = due->state.round;
    }
  }
  server->GetHealthCheckService()->SetServingStatus(false);
  // Waiting calls end now; calls still sending a delta get a few seconds.
  (*service)->Shutdown();
  server->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(5));
  server->Wait();

  if (*checkpoints != nullptr) {
    std::optional<Checkpoint> last = (*service)->Snapshot();
    if (last.has_value() && last->state.round != last_checkpoint_round) {
      WriteCheckpoint(**checkpoints, *last, options->observer);
    }
  }

  const ServerSummary s = (*service)->Summary();
  const double seconds = absl::ToDoubleSeconds(absl::Now() - start);
  std::fprintf(stderr,
               "effadam-server: %s after %lld rounds in %.1f s; moved %lld B "
               "up, %lld B down (%.1fx fewer than fp32), %lld B join; "
               "params_checksum %s\n",
               g_signal.load() != 0 ? "stopped by signal" : "done",
               static_cast<long long>(s.rounds_closed), seconds,
               static_cast<long long>(s.traffic.up().payload),
               static_cast<long long>(s.traffic.down().payload),
               s.traffic.compression_ratio(),
               static_cast<long long>(s.traffic.join().payload),
               s.params_checksum.empty() ? "(no parameters)"
                                         : s.params_checksum.c_str());
  const std::string summary_path = absl::GetFlag(FLAGS_summary_json);
  if (!summary_path.empty()) {
    JsonObject json;
    json.Add("rounds", s.rounds_closed)
        .Add("short_rounds", s.short_rounds)
        .Add("dropped_rounds", s.dropped_rounds)
        .Add("resumed_at_round", s.resumed_at_round)
        .Add("workers", options->workers)
        .Add("shard", options->shard)
        .Add("num_shards", options->num_shards)
        .Add("worker_codec", c.worker_codec.ToString())
        .Add("server_codec", c.server_codec.ToString())
        .Add("error_feedback", ErrorFeedbackName(c))
        .Add("train_loss", s.train_loss)
        .Add("bytes_worker_to_server", s.traffic.up().payload)
        .Add("bytes_server_to_worker", s.traffic.down().payload)
        .Add("bytes_join", s.traffic.join().payload)
        .Add("wire_bytes_worker_to_server", s.traffic.up().wire)
        .Add("wire_bytes_server_to_worker", s.traffic.down().wire)
        .Add("wire_bytes_join", s.traffic.join().wire)
        .Add("fp32_equivalent_bytes", s.traffic.fp32_equivalent())
        .Add("compression_ratio", s.traffic.compression_ratio())
        .Add("params_checksum", s.params_checksum)
        .Add("seconds", seconds);
    if (absl::Status st = json.WriteFile(summary_path); !st.ok()) {
      return Fail(st);
    }
  }
  // The counters no longer change; a scraper that comes by now reads
  // exactly the summary's numbers. A signal ends the wait (and a run that
  // a signal stopped does not wait at all).
  if (exposer != nullptr) {
    LingerForScrape("effadam-server", linger,
                    [] { return g_signal.load() != 0; });
  }
  if (!s.error.ok()) return Fail(s.error);
  return 0;
}

}  // namespace
}  // namespace effadam

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage(
      "The Efficient-Adam parameter server.\nExample: effadam-server "
      "--listen=127.0.0.1:50051 --workers=4 --rounds=2000 "
      "--worker_codec=sign --server_codec=sign");
  absl::ParseCommandLine(argc, argv);
  return effadam::Run();
}
