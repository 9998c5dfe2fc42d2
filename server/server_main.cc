// effadam-server: the Efficient-Adam parameter server daemon. Serves
// effadam.v1.ParameterServer (docs/protocol.md), gRPC health checking and
// server reflection, and Prometheus metrics on --metrics_listen
// (docs/metrics.md); runs --rounds synchronous rounds (or until SIGTERM),
// then writes --summary_json and stays in the finished state (Status,
// health and /metrics still served) for --metrics_linger, and exits 0.
// Started on a --checkpoint_dir whose run is complete, it says so, keeps
// the summary and goes straight to the finished state (deploy/README.md,
// "Lifecycle").

#include <grpcpp/ext/proto_server_reflection_plugin.h>
#include <grpcpp/grpcpp.h>
#include <grpcpp/health_check_service_interface.h>
#include <malloc.h>

#include <algorithm>
#include <cstdio>
#include <memory>
#include <optional>
#include <string>

#include "absl/flags/flag.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "common/host_port.h"
#include "common/json_writer.h"
#include "common/logger.h"
#include "common/traffic.h"
#include "core/checksum.h"
#include "daemon/command_line.h"
#include "daemon/compression_flags.h"
#include "daemon/daemon.h"
#include "daemon/duration_flag.h"
#include "daemon/lifecycle.h"
#include "daemon/threads_flag.h"
#include "metrics/server_metrics.h"
#include "server/call_guard.h"
#include "server/checkpoint.h"
#include "server/parameter_server_service.h"
#include "server/token_authenticator.h"
#include "server/token_gate.h"
#include "transport/grpc_security.h"

// The compression flags (--worker_codec, --server_codec, --block_size,
// --min_compress_elements, --error_feedback) are daemon/compression_flags.cc.
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
ABSL_FLAG(effadam::DurationFlag, round_timeout, absl::Seconds(60),
          "How long after a round's first update it closes with the updates "
          "present");
ABSL_FLAG(int64_t, max_chunk_bytes,
          static_cast<int64_t>(effadam::ServerOptions{}.max_chunk_bytes),
          "Largest payload of one chunk of UploadParams, FetchParams and "
          "Train, in bytes");
ABSL_FLAG(effadam::DurationFlag, keepalive_time, absl::Seconds(30),
          "How often the server pings each worker's connection: a worker "
          "whose host hung or vanished is dropped after --keepalive_time + "
          "--keepalive_timeout and its round closes without it (instead of "
          "after --round_timeout)");
ABSL_FLAG(effadam::DurationFlag, keepalive_timeout, absl::Seconds(10),
          "How long the server waits for the answer to a ping before it "
          "drops the connection");
ABSL_FLAG(effadam::DurationFlag, min_ping_interval, absl::Seconds(10),
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
ABSL_FLAG(effadam::DurationFlag, max_connection_idle, absl::Minutes(5),
          "A connection without any call for this long is closed; clients "
          "reconnect when they next call");
ABSL_FLAG(effadam::DurationFlag, send_stall_timeout, absl::Seconds(60),
          "A call whose outgoing message waits this long for its client to "
          "read it (a FetchParams or Train client that stopped reading) is "
          "cancelled, freeing its thread and buffers");
ABSL_FLAG(uint64_t, seed, 1,
          "Seed of the server codec's stochastic rounding; use the workers' "
          "--seed to match effadam-sim");
ABSL_FLAG(std::string, checkpoint_dir, "",
          "Directory for checkpoints of x, the error memory and the round; "
          "at start the newest one that verifies is restored; if it completes "
          "--rounds, the server does not train again and keeps "
          "--summary_json. A new run needs an empty directory. Empty: no "
          "checkpoints");
ABSL_FLAG(int64_t, checkpoint_every, 100,
          "With --checkpoint_dir: write a checkpoint every this many rounds "
          "(and always at the end and on SIGTERM/SIGINT); 0: only then");
ABSL_FLAG(int32_t, checkpoint_keep, 3,
          "With --checkpoint_dir: how many of the newest checkpoints to keep");
ABSL_FLAG(int32_t, delta_log_rounds, 4,
          "With --checkpoint_dir: keep the deltas of this many last closed "
          "rounds there (delta-<round>.effadam, written before any worker "
          "receives one), so a killed server goes on from the last round it "
          "closed; 0: none (a restart may compute the round in flight "
          "again)");
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
ABSL_FLAG(effadam::DurationFlag, metrics_linger, absl::ZeroDuration(),
          "After training ends and --summary_json is written, stay in the "
          "finished state this long (or until SIGTERM/SIGINT): Status, "
          "health and /metrics are served, so that Prometheus scrapes the "
          "final values; \"inf\" until a signal (Kubernetes: until the pod "
          "is deleted)");

namespace effadam {
namespace {

constexpr char kProgram[] = "effadam-server";
// How long calls still in flight at exit get to finish.
constexpr absl::Duration kFinalCallsBudget = absl::Milliseconds(500);
// How long calls still sending a delta get when training stops.
constexpr absl::Duration kDrainBudget = absl::Seconds(5);

absl::StatusOr<ServerOptions> OptionsFromFlags() {
  ServerOptions o;
  absl::StatusOr<CompressionConfig> compression = CompressionConfigFromFlags();
  if (!compression.ok()) return compression.status();
  o.compression = *compression;
  o.workers = absl::GetFlag(FLAGS_workers);
  o.shard = absl::GetFlag(FLAGS_shard);
  o.num_shards = absl::GetFlag(FLAGS_num_shards);
  o.rounds = absl::GetFlag(FLAGS_rounds);
  o.round_timeout = absl::GetFlag(FLAGS_round_timeout).value;
  if (o.round_timeout <= absl::ZeroDuration()) {
    return absl::InvalidArgumentError("--round_timeout must be > 0");
  }
  const int64_t chunk = absl::GetFlag(FLAGS_max_chunk_bytes);
  // gRPC's message size limits are ints; leave room for the envelope.
  if (chunk < 4 || chunk > (int64_t{1} << 30)) {
    return absl::InvalidArgumentError(
        absl::StrCat("--max_chunk_bytes must be in [4, 2^30], got ", chunk));
  }
  o.max_chunk_bytes = static_cast<size_t>(chunk);
  o.seed = absl::GetFlag(FLAGS_seed);
  if (absl::Status s = ThreadsFromFlag(&o.threads); !s.ok()) return s;
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

// What --checkpoint_dir held at start.
struct Restored {
  std::unique_ptr<CheckpointStore> store;  // null: checkpoints are off
  // The round of the restored checkpoint; 0 without one.
  int64_t round = 0;
  // The checkpoint completes --rounds: the run is over, nothing to train.
  bool run_complete = false;
};

// Opens --checkpoint_dir and restores its newest good checkpoint into
// `ps`.
absl::StatusOr<Restored> RestoreFromFlags(ParameterServer& ps, int64_t rounds,
                                          Logger& log) {
  Restored out;
  const std::string dir = absl::GetFlag(FLAGS_checkpoint_dir);
  if (dir.empty()) return out;
  absl::StatusOr<CheckpointStore> store =
      CheckpointStore::Open(dir, absl::GetFlag(FLAGS_checkpoint_keep));
  if (!store.ok()) return store.status();
  absl::StatusOr<std::optional<CheckpointStore::Loaded>> loaded =
      store->LoadNewest();
  if (!loaded.ok()) return loaded.status();
  out.store = std::make_unique<CheckpointStore>(*std::move(store));
  if (!loaded->has_value()) {
    log.Info(absl::StrCat("no checkpoint in ", dir, "; fresh start"));
    return out;
  }
  CheckpointStore::Loaded& l = **loaded;
  for (const std::string& why : l.skipped) {
    log.Warning(absl::StrCat("skipped checkpoint ", why));
  }
  out.round = l.checkpoint.state.round;
  out.run_complete = CompletesRun(l.checkpoint, rounds);
  const std::string checksum = ParamsChecksum(l.checkpoint.state.params);
  if (absl::Status s = ps.Restore(std::move(l.checkpoint)); !s.ok()) {
    return absl::Status(s.code(),
                        absl::StrCat("restoring ", l.path, ": ", s.message()));
  }
  if (out.run_complete) {
    log.Info(absl::StrCat(
        "the run in ", dir, " is complete: ", l.path, " follows round ",
        out.round - 1, " of ", rounds, " (--rounds), params_checksum ",
        checksum,
        "; not training again and keeping --summary_json. A new run needs "
        "an empty --checkpoint_dir; a larger --rounds trains on"));
  } else {
    log.Info(absl::StrCat("resumed from ", l.path, " at round ", out.round,
                          ", params_checksum ", checksum));
  }
  return out;
}

// Writes `checkpoint` and reports it; a failure is logged and counted, and
// training goes on (the previous checkpoint is still there).
void WriteCheckpoint(CheckpointStore& store, const Checkpoint& checkpoint,
                     ServerObserver& observer, Logger& log) {
  const absl::Time start = absl::Now();
  absl::StatusOr<CheckpointStore::Written> w = store.Write(checkpoint);
  if (!w.ok()) {
    log.Error(absl::StrCat("checkpoint failed: ", w.status().ToString()));
    observer.OnCheckpointFailed();
    return;
  }
  CheckpointStats stats;
  stats.round = checkpoint.state.round;
  stats.bytes = w->bytes;
  stats.seconds = absl::ToDoubleSeconds(absl::Now() - start);
  log.Info(absl::StrFormat(
      "checkpoint %s (round %d, %d B, %.2f s), "
      "params_checksum %s",
      w->path, stats.round, stats.bytes, stats.seconds, w->params_checksum));
  observer.OnCheckpointWritten(stats);
}

// The run's summary: the log line and --summary_json.
absl::Status ReportSummary(const ServerOptions& options, const ServerSummary& s,
                           double seconds, bool signalled, Logger& log) {
  log.Info(absl::StrFormat(
      "%s after %d rounds in %.1f s; moved %d B up, %d B down (%.1fx fewer "
      "than fp32), %d B join; params_checksum %s",
      signalled ? "stopped by signal" : "done", s.rounds_closed, seconds,
      s.traffic.up().payload, s.traffic.down().payload,
      s.traffic.compression_ratio(), s.traffic.join().payload,
      s.params_checksum.empty() ? "(no parameters)" : s.params_checksum));
  const CompressionConfig& c = options.compression;
  JsonObject json;
  json.Add("rounds", s.rounds_closed)
      .Add("short_rounds", s.short_rounds)
      .Add("dropped_rounds", s.dropped_rounds)
      .Add("resumed_at_round", s.resumed_at_round)
      .Add("workers", options.workers)
      .Add("shard", options.shard)
      .Add("num_shards", options.num_shards)
      .Add("worker_codec", c.worker_codec.ToString())
      .Add("server_codec", c.server_codec.ToString())
      .Add("error_feedback", ErrorFeedbackName(c))
      .Add("train_loss", s.train_loss);
  AddRoundTraffic(s.traffic, &json);
  AddJoinAndWireTraffic(s.traffic, &json);
  json.Add("params_checksum", s.params_checksum).Add("seconds", seconds);
  return Daemon::WriteSummary(absl::GetFlag(FLAGS_summary_json), json);
}

void LogStart(const ServerOptions& options, const ServerSecurity& security,
              Logger& log) {
  const CompressionConfig& c = options.compression;
  log.Info(DescribeServerSecurity(security));
  log.Info(absl::StrCat(
      options.num_shards > 1 ? absl::StrCat("shard ", options.shard, " of ",
                                            options.num_shards, ", ")
                             : "",
      options.workers, " workers, codecs ", c.worker_codec.ToString(), "/",
      c.server_codec.ToString(), ", error feedback ", ErrorFeedbackName(c),
      ", rounds ", options.rounds,
      options.rounds == 0 ? " (until SIGTERM)" : ""));
}

// Serves `service` (and health and reflection) on `listen`; *port is the
// port bound. Unavailable naming the address when gRPC cannot bind it.
// `gate` (may be null) refuses calls without the token before they take a
// thread (TLS only, server/token_gate.h); `guard` (outlives the server)
// turns unparseable requests into INVALID_ARGUMENT, bounds FetchParams
// calls, cancels stalled writes and counts the calls holding threads.
absl::StatusOr<std::unique_ptr<grpc::Server>> Serve(
    const std::string& listen, const ServerSecurity& security,
    const ServerTransport& transport, std::shared_ptr<TokenGate> gate,
    CallGuard& guard, ParameterServerService* service, int* port) {
  grpc::ServerBuilder builder;
  *port = 0;
  // TLS, message size limits (a chunk plus its envelope; gRPC refuses
  // anything larger before it reaches the service), keepalive, the
  // thread, memory, stream and idle-connection limits.
  ConfigureServer(listen, security, transport, &builder, port, std::move(gate));
  guard.Install(&builder);
  builder.RegisterService(service);
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  if (!server || *port == 0) {
    return absl::UnavailableError(
        absl::StrCat("cannot listen on ", listen,
                     ": gRPC could not bind it (its log line above says why)"));
  }
  return server;
}

// Trains until the run ends or a signal comes, writing checkpoints on the
// way (outside the server's lock: rounds go on while a file is written),
// then stops `ps` and drains `server`: when this returns no call is
// running and its state and counts are final. Returns the round
// of the last checkpoint written (-1: none). The main thread is the
// watcher; gRPC serves on its own threads.
// Health says NOT_SERVING while every call thread is taken (a flood, or
// too small a --max_threads): new calls would fail with RESOURCE_EXHAUSTED.
int64_t Train(ParameterServer& ps, grpc::Server& server, const CallGuard& guard,
              int call_threads, CheckpointStore* checkpoints,
              ServerObserver& observer, Daemon& daemon) {
  Logger& log = daemon.log();
  int64_t last_checkpoint_round = -1;
  bool serving = true;
  // A flood flips health up to 10 times a second: the log says so at
  // most a few times a minute.
  LogRateLimiter health_log(4, absl::Minutes(1));
  while (daemon.signal() == 0 && !ps.WaitUntilDone(absl::Milliseconds(100))) {
    if (const bool free_thread = guard.calls_in_flight() < call_threads;
        free_thread != serving) {
      serving = free_thread;
      server.GetHealthCheckService()->SetServingStatus(serving);
      int64_t suppressed = 0;
      if (health_log.Allow(absl::Now(), &suppressed)) {
        log.Warning(absl::StrCat(
            serving ? "call threads free again: SERVING"
                    : "every call thread is busy (--max_threads): "
                      "NOT_SERVING",
            suppressed > 0
                ? absl::StrCat(" (", suppressed, " changes not logged)")
                : ""));
      }
    }
    if (std::optional<Checkpoint> due = ps.TakeDueCheckpoint();
        due.has_value() && checkpoints != nullptr) {
      WriteCheckpoint(*checkpoints, *due, observer, log);
      last_checkpoint_round = due->state.round;
    }
  }
  // Waiting calls end now; calls still sending a delta get a few seconds.
  ps.Shutdown();
  server.Shutdown(absl::ToChronoTime(absl::Now() + kDrainBudget));
  server.Wait();
  return last_checkpoint_round;
}

// The finished state after a run that completed here: a service restored
// from the final state, which refuses Join ("training has ended") and
// answers Status, served on the same port. Null (logged) if it cannot be.
std::unique_ptr<ParameterServerService> FinishedService(
    ServerOptions options, Checkpoint final_state) {
  options.observer = nullptr;  // the metrics keep the run's final values
  absl::StatusOr<std::unique_ptr<ParameterServerService>> service =
      ParameterServerService::Create(options);
  if (!service.ok() ||
      !(*service)->server().Restore(std::move(final_state)).ok()) {
    return nullptr;
  }
  return *std::move(service);
}

// Everything the flags say, checked before anything listens or a
// checkpoint is read.
struct ServerSetup {
  ServerOptions options;
  ServerTransport transport;
  CallLimits limits;
  std::string listen;
  HostPort listen_address;
  ServerSecurity security;
  // options.authenticator and options.delta_log point here: a ServerSetup
  // does not move.
  std::optional<TokenAuthenticator> authenticator;
  DeltaLog delta_log;
};

absl::StatusOr<ServerTransport> TransportFromFlags(const ServerOptions& o) {
  ServerTransport t;
  t.max_chunk_bytes = o.max_chunk_bytes;
  t.keepalive_time = absl::GetFlag(FLAGS_keepalive_time).value;
  t.keepalive_timeout = absl::GetFlag(FLAGS_keepalive_timeout).value;
  t.min_client_ping_interval = absl::GetFlag(FLAGS_min_ping_interval).value;
  t.max_threads = absl::GetFlag(FLAGS_max_threads);
  t.max_transport_memory_bytes =
      static_cast<size_t>(std::clamp<int64_t>(
          absl::GetFlag(FLAGS_max_transport_memory_mb), 0, int64_t{1} << 30))
      << 20;
  t.max_streams_per_connection =
      absl::GetFlag(FLAGS_max_streams_per_connection);
  t.max_connection_idle = absl::GetFlag(FLAGS_max_connection_idle).value;
  if (absl::Status s = CheckServerTransport(t, o.workers); !s.ok()) return s;
  return t;
}

absl::StatusOr<CallLimits> LimitsFromFlags(const ServerOptions& o) {
  CallLimits limits;
  limits.max_concurrent_fetches = o.workers;
  limits.send_stall_timeout = absl::GetFlag(FLAGS_send_stall_timeout).value;
  if (limits.send_stall_timeout < absl::Seconds(1) ||
      limits.send_stall_timeout > absl::Hours(24)) {
    return absl::InvalidArgumentError(
        absl::StrCat("--send_stall_timeout must be in [1s, 24h], got ",
                     absl::FormatDuration(limits.send_stall_timeout)));
  }
  return limits;
}

// The delta log in --checkpoint_dir (--delta_log_rounds); none without
// checkpoints or for 0 rounds.
absl::Status OpenDeltaLogFromFlags(DeltaLog* delta_log) {
  const int32_t rounds = absl::GetFlag(FLAGS_delta_log_rounds);
  if (rounds < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("--delta_log_rounds must be >= 0, got ", rounds));
  }
  const std::string dir = absl::GetFlag(FLAGS_checkpoint_dir);
  if (dir.empty() || rounds == 0) return absl::OkStatus();
  absl::StatusOr<DeltaLog> opened = DeltaLog::Open(dir, rounds);
  if (!opened.ok()) return opened.status();
  *delta_log = *std::move(opened);
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<ServerSetup>> SetupFromFlags() {
  auto setup = std::make_unique<ServerSetup>();
  ServerSetup& w = *setup;
  absl::StatusOr<ServerOptions> options = OptionsFromFlags();
  if (!options.ok()) return options.status();
  w.options = *std::move(options);
  absl::StatusOr<ServerTransport> transport = TransportFromFlags(w.options);
  if (!transport.ok()) return transport.status();
  w.transport = *transport;
  absl::StatusOr<CallLimits> limits = LimitsFromFlags(w.options);
  if (!limits.ok()) return limits.status();
  w.limits = *limits;
  w.listen = absl::GetFlag(FLAGS_listen);
  absl::StatusOr<HostPort> address =
      ParseHostPort(w.listen, "--listen", /*min_port=*/0);
  if (!address.ok()) return address.status();
  w.listen_address = *address;
  // A taken port fails the start at once with the reason, before a
  // checkpoint is read (gRPC would only log its own line).
  if (absl::Status s = ProbeListen(w.listen_address); !s.ok()) return s;
  // Every file is read and checked before anything listens.
  absl::StatusOr<ServerSecurity> security = SecurityFromFlags();
  if (!security.ok()) return security.status();
  w.security = *std::move(security);
  if (!w.security.token.empty()) {
    absl::StatusOr<TokenAuthenticator> a =
        TokenAuthenticator::Create(w.security.token);
    if (!a.ok()) return a.status();
    w.authenticator = *std::move(a);
    w.options.authenticator = &*w.authenticator;
  }
  if (absl::Status s = OpenDeltaLogFromFlags(&w.delta_log); !s.ok()) return s;
  w.options.delta_log = &w.delta_log;
  return setup;
}

// Trains (Train), writes the last checkpoint and the summary, and, with
// --metrics_linger after a run that completed, serves the finished state
// on the same port: `*server` is then that server (null when it could not
// be), and `*finished` its service. Returns the run's error or the
// summary's.
absl::Status TrainAndFinish(ServerSetup& w, ParameterServer& ps,
                            CheckpointStore* checkpoints, CallGuard& guard,
                            std::shared_ptr<TokenGate> gate, int port,
                            ServerObserver& observer, Daemon& daemon,
                            std::unique_ptr<grpc::Server>* server,
                            std::unique_ptr<ParameterServerService>* finished) {
  const absl::Time start = absl::Now();
  const int64_t last_checkpoint_round =
      Train(ps, **server, guard, CallThreads(w.transport), checkpoints,
            observer, daemon);
  server->reset();
  std::optional<Checkpoint> last = ps.Snapshot();
  if (checkpoints != nullptr && last.has_value() &&
      last->state.round != last_checkpoint_round) {
    WriteCheckpoint(*checkpoints, *last, observer, daemon.log());
  }
  const ServerSummary s = ps.Summary();
  absl::Status result = s.error;
  if (absl::Status r = ReportSummary(w.options, s,
                                     absl::ToDoubleSeconds(absl::Now() - start),
                                     daemon.signal() != 0, daemon.log());
      !r.ok()) {
    result = r;
  }
  if (absl::GetFlag(FLAGS_metrics_linger).value <= absl::ZeroDuration() ||
      daemon.signal() != 0 || !last.has_value() ||
      !CompletesRun(*last, w.options.rounds)) {
    return result;
  }
  *finished = FinishedService(w.options, *std::move(last));
  int bound = 0;
  absl::StatusOr<std::unique_ptr<grpc::Server>> again =
      *finished == nullptr
          ? absl::InternalError("cannot restore the final state")
          : Serve(absl::StrCat(w.listen_address.host, ":", port), w.security,
                  w.transport, std::move(gate), guard, finished->get(), &bound);
  if (again.ok()) {
    *server = *std::move(again);
  } else {
    daemon.log().Warning(
        absl::StrCat("the finished state serves /metrics only: ",
                     again.status().ToString()));
  }
  return result;
}

int Run() {
  // First: every thread started later inherits its signal mask.
  Daemon daemon(kProgram);
  // Buffers of 1 MiB and more (a FetchParams call's copy of x, chunks) are
  // mapped for themselves and unmapped when freed. glibc's default raises
  // this threshold after the first such free, after which every thread's
  // arena keeps the largest buffer it ever held: a burst of calls on many
  // threads would keep the server's RSS that high for good.
  mallopt(M_MMAP_THRESHOLD, 1 << 20);
  absl::StatusOr<std::unique_ptr<ServerSetup>> setup = SetupFromFlags();
  if (!setup.ok()) return daemon.Fail(setup.status());
  ServerSetup& w = **setup;
  ServerOptions& options = w.options;
  // Metrics first: a port that is taken fails the start, before any worker
  // could join. The metrics outlive the service, which reports to them.
  if (absl::Status s = daemon.ServeMetrics(absl::GetFlag(FLAGS_metrics_listen));
      !s.ok()) {
    return daemon.Fail(s);
  }
  std::unique_ptr<ServerMetrics> metrics;
  if (daemon.serving_metrics()) {
    prometheus::Labels labels;
    if (options.num_shards > 1) labels["shard"] = std::to_string(options.shard);
    metrics = std::make_unique<ServerMetrics>(options.workers, labels);
    metrics->SetTargetRounds(options.rounds);
    daemon.AddMetrics(metrics->registry());
    options.observer = metrics.get();
  }
  ServerObserver& observer =
      metrics != nullptr ? *metrics : ServerObserver::None();
  options.logger = &daemon.log();  // rejected calls, joins and departures
  auto service = ParameterServerService::Create(options);
  if (!service.ok()) return daemon.Fail(service.status());
  absl::StatusOr<Restored> restored =
      RestoreFromFlags((*service)->server(), options.rounds, daemon.log());
  if (!restored.ok()) return daemon.Fail(restored.status());

  grpc::EnableDefaultHealthCheckService(true);
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  std::shared_ptr<TokenGate> gate;
  if (w.authenticator.has_value()) {
    gate = std::make_shared<TokenGate>(&*w.authenticator, options.observer);
  }
  CallGuard guard(options.observer, w.limits);  // outlives every server
  int port = 0;
  absl::StatusOr<std::unique_ptr<grpc::Server>> server = Serve(
      w.listen, w.security, w.transport, gate, guard, service->get(), &port);
  if (!server.ok()) return daemon.Fail(server.status());
  std::printf("%s listening on %s:%d\n", kProgram,
              w.listen_address.host.c_str(), port);
  if (daemon.serving_metrics()) {
    std::printf("%s metrics on %s\n", kProgram, daemon.metrics_url().c_str());
  }
  std::fflush(stdout);
  LogStart(options, w.security, daemon.log());

  absl::Status result;
  // Serves the finished state when training ended here (a run restored as
  // complete is served by `service` itself).
  std::unique_ptr<ParameterServerService> finished;
  if (!restored->run_complete) {
    result =
        TrainAndFinish(w, (*service)->server(), restored->store.get(), guard,
                       gate, port, observer, daemon, &*server, &finished);
  }
  // The finished state: Join is refused ("training has ended"); Status,
  // health and /metrics answer with the final values until the linger ends
  // or a signal comes.
  if (metrics != nullptr) metrics->SetFinished();
  if (*server != nullptr) {
    (*server)->GetHealthCheckService()->SetServingStatus(
        "effadam.v1.ParameterServer", false);
  }
  daemon.Linger(absl::GetFlag(FLAGS_metrics_linger).value);
  if (*server != nullptr) {
    (*server)->Shutdown(absl::ToChronoTime(absl::Now() + kFinalCallsBudget));
    (*server)->Wait();
  }
  daemon.Exit(result.ok() ? 0 : daemon.Fail(result));
}

}  // namespace
}  // namespace effadam

int main(int argc, char** argv) {
  effadam::ParseCommandLineOrExit(
      argc, argv,
      "The Efficient-Adam parameter server.\nExample: effadam-server "
      "--listen=127.0.0.1:50051 --workers=4 --rounds=2000 "
      "--worker_codec=sign --server_codec=sign");
  return effadam::Run();
}
