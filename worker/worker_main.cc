// effadam-worker: one worker of an Efficient-Adam cluster. Trains a built-in
// model on its shard of the data and exchanges compressed updates with
// effadam-server. With the same flags and seed, a cluster of N workers ends
// with the bits and byte counts of `effadam-sim --workers=N`. With
// --metrics_listen it serves Prometheus metrics (docs/metrics.md).

#include <cstdio>
#include <deque>
#include <limits>
#include <numeric>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/reflection.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "common/json_writer.h"
#include "common/traffic.h"
#include "core/checksum.h"
#include "daemon/client_security_flags.h"
#include "daemon/command_line.h"
#include "daemon/compression_flags.h"
#include "daemon/daemon.h"
#include "daemon/duration_flag.h"
#include "daemon/lifecycle.h"
#include "daemon/threads_flag.h"
#include "daemon/training_flags.h"
#include "metrics/worker_metrics.h"
#include "worker/launch_env.h"
#include "worker/model.h"
#include "worker/progress.h"
#include "worker/worker_client.h"
#include "worker/worker_observer.h"

ABSL_FLAG(std::string, server, "127.0.0.1:50051",
          "Parameter server, host:port; for a sharded model every shard's "
          "address in shard order, comma-separated, or one address with "
          "{shard} for the shard number (with --num_shards)");
ABSL_FLAG(int32_t, num_shards, 0,
          "Number of shards when --server has a {shard} pattern");
ABSL_FLAG(int32_t, rank, -1,
          "Rank to claim (selects the data shard); -1: the server assigns "
          "the lowest free rank");
ABSL_FLAG(effadam::DurationFlag, reconnect_timeout, absl::Minutes(5),
          "When the server goes away mid-training (a restart) or says this "
          "worker fell behind, keep trying this long to join again, fetch x "
          "and go on; also how long a --rank still held by a previous "
          "process of this worker is asked for again; 0 exits with the "
          "error instead");
ABSL_FLAG(effadam::DurationFlag, connect_timeout, absl::Seconds(60),
          "How long to wait for the server to listen and to have the initial "
          "parameters, for Join and again for the fetch of x");
ABSL_FLAG(std::string, metrics_listen, "",
          "Serve Prometheus metrics at http://ADDRESS/metrics, host:port; "
          "port 0 picks a free port, which is printed; empty (the default) "
          "disables");
ABSL_FLAG(effadam::DurationFlag, metrics_linger, absl::ZeroDuration(),
          "After training ends and --summary_json is written, keep serving "
          "/metrics this long (or until SIGTERM/SIGINT) so that Prometheus "
          "scrapes the final values");

namespace effadam {
namespace {

constexpr char kProgram[] = "effadam-worker";

// --server, --num_shards and --rank where set to other than their
// defaults; the others come from the environment (worker/launch_env.h).
// (This abseil keeps IsSpecifiedOnCommandLine private.)
absl::StatusOr<WorkerPlacement> PlacementFromFlagsAndEnvironment() {
  auto given = [](const char* name) {
    const absl::CommandLineFlag* flag = absl::FindCommandLineFlag(name);
    return flag->CurrentValue() != flag->DefaultValue();
  };
  GivenPlacement g;
  if (given("server")) g.server = absl::GetFlag(FLAGS_server);
  if (given("num_shards")) g.num_shards = absl::GetFlag(FLAGS_num_shards);
  if (given("rank")) g.rank = absl::GetFlag(FLAGS_rank);
  return ResolvePlacement(g, ProcessEnvironment());
}

// What the flags and the environment say this worker is.
struct WorkerSetup {
  WorkerPlacement placement;
  TrainingConfig training;
  WorkerClientOptions options;  // its logger is set by Run
};

absl::StatusOr<WorkerSetup> SetupFromFlags() {
  WorkerSetup w;
  absl::StatusOr<WorkerPlacement> placement =
      PlacementFromFlagsAndEnvironment();
  if (!placement.ok()) return placement.status();
  w.placement = *std::move(placement);
  absl::StatusOr<TrainingConfig> training = TrainingConfigFromFlags();
  if (!training.ok()) return training.status();
  w.training = *std::move(training);
  absl::StatusOr<CompressionConfig> compression = CompressionConfigFromFlags();
  if (!compression.ok()) return compression.status();
  // TLS and the token: daemon/client_security_flags.cc.
  absl::StatusOr<ClientSecurity> security = ClientSecurityFromFlags();
  if (!security.ok()) return security.status();
  absl::StatusOr<ClientKeepalive> keepalive = ClientKeepaliveFromFlags();
  if (!keepalive.ok()) return keepalive.status();
  WorkerClientOptions& o = w.options;
  o.server = w.placement.server;
  o.num_shards = w.placement.num_shards;
  o.rank = w.placement.rank;
  o.compression = *compression;
  o.adam = w.training.adam;
  o.seed = w.training.seed;
  if (absl::Status s = ThreadsFromFlag(&o.threads); !s.ok()) return s;
  o.connect_timeout = absl::GetFlag(FLAGS_connect_timeout).value;
  o.reconnect_timeout = absl::GetFlag(FLAGS_reconnect_timeout).value;
  o.security = *std::move(security);
  o.keepalive = *keepalive;
  return w;
}

// The exit of a run that `s` ended: 128 + N after signal N, else 1 with
// the error; a server never reached gets a hint at what to check (TLS
// flags look like a dead server).
int Stop(Daemon& daemon, const WorkerClient& client,
         const WorkerClientOptions& options, const absl::Status& s) {
  if (daemon.signal() != 0) {
    const char* name = SignalWatcher::Name(daemon.signal());
    daemon.log().Info(
        client.round() > 0
            ? absl::StrCat("stopped by ", name, " before round ",
                           client.round())
            : absl::StrCat("stopped by ", name, " while joining"));
    daemon.Exit(128 + daemon.signal());
  }
  if (s.code() == absl::StatusCode::kUnavailable && client.rank() < 0) {
    return daemon.Fail(absl::Status(
        s.code(), absl::StrCat(s.message(), " (",
                               ConnectionHint(options.security), ")")));
  }
  return daemon.Fail(s);
}

// Joins and makes this rank's model. The layout must go with Join, but
// the data shard depends on the rank Join assigns: a first model of one
// shard provides the layout, and `cache` lets the real one reuse the data
// it read.
absl::StatusOr<std::unique_ptr<Model>> JoinWithModel(const WorkerSetup& w,
                                                     DataCache* cache,
                                                     WorkerClient& client) {
  ModelConfig probe = w.training.model;
  probe.rank = 0;
  probe.num_workers = 1;
  probe.load_test_set = false;
  absl::StatusOr<std::unique_ptr<Model>> first = MakeModel(probe, cache);
  if (!first.ok()) return first.status();
  if (absl::Status s = client.Join((*first)->layout()); !s.ok()) return s;
  if (absl::Status s =
          CheckWorldSize(w.placement, client.num_workers(), w.options.server);
      !s.ok()) {
    return s;
  }
  ModelConfig mc = w.training.model;
  mc.rank = client.rank();
  mc.num_workers = client.num_workers();
  mc.load_test_set = client.rank() == 0;  // rank 0 evaluates, as effadam-sim
  return MakeModel(mc, cache);
}

// What a run of rounds leaves for the summary.
struct Trained {
  Evaluation eval;  // rank 0's, of the final x
  double train_loss = 0;
};

// Steps until --rounds or until the server ends training; rank 0
// evaluates every --eval_every rounds and at the end, printing progress.
absl::StatusOr<Trained> TrainRounds(WorkerClient& client, Model& model,
                                    const TrainingConfig& tc,
                                    WorkerObserver& observer,
                                    absl::Time start) {
  const int rank = client.rank();
  const int64_t rounds = tc.rounds;
  const int64_t every = tc.eval_every > 0 ? tc.eval_every : rounds;
  // Train loss: this worker's mean mini-batch loss over the last
  // kLossWindow rounds, the window effadam-sim uses for the mean over all
  // workers.
  constexpr size_t kLossWindow = 50;
  std::deque<double> losses;
  auto train_loss = [&] {
    return losses.empty() ? std::numeric_limits<double>::quiet_NaN()
                          : std::accumulate(losses.begin(), losses.end(), 0.0) /
                                static_cast<double>(losses.size());
  };
  Trained out;
  bool evaluated = false;  // out.eval is of the final params
  // Evaluates x after round r, and prints the progress line if `print`.
  auto evaluate = [&](int64_t r, bool print) {
    out.eval = model.Evaluate(client.params());
    evaluated = true;
    observer.RecordEvaluation(out.eval);
    if (!print) return;
    std::printf("%s\n", FormatProgress(
                            r, rounds, train_loss(), out.eval, client.traffic(),
                            absl::ToDoubleSeconds(absl::Now() - start))
                            .c_str());
    std::fflush(stdout);
  };
  std::vector<float> grad(client.params().size());
  int resyncs = 0;
  while (client.round() <= rounds) {
    const float loss = model.Gradient(client.params(), absl::MakeSpan(grad));
    const absl::Time step_start = absl::Now();
    if (absl::Status s = client.Step(grad, loss); !s.ok()) {
      observer.Sync(client);
      if (!client.server_finished()) return s;
      std::printf(
          "effadam-worker: rank %d: the server ended training "
          "after round %lld\n",
          rank, static_cast<long long>(client.round() - 1));
      break;
    }
    const double step_seconds = absl::ToDoubleSeconds(absl::Now() - step_start);
    if (client.resyncs() != resyncs) {
      // No round of this worker's went through; it has the server's x now.
      resyncs = client.resyncs();
      std::printf(
          "effadam-worker: rank %d resynchronized with the server "
          "(x fetched) at round %lld; resync %d\n",
          rank, static_cast<long long>(client.round()), resyncs);
      std::fflush(stdout);
      observer.Sync(client);
      continue;
    }
    losses.push_back(loss);
    if (losses.size() > kLossWindow) losses.pop_front();
    observer.RecordStep(client, step_seconds, train_loss());
    const int64_t r = client.round() - 1;  // just applied
    evaluated = false;
    // The last round's evaluation waits for Finish: a synchronous client
    // reads its sockets only while it waits in gRPC, so Train streams left
    // open through an evaluation (seconds on a loaded machine) leave the
    // server's keepalive acks unread; with 1 s keepalives the transport
    // gave up and a worker that had every round exited 1 ("keepalive
    // watchdog timeout" in Finish; docs/faults.md, "Chaos").
    if (rank == 0 && r % every == 0 && r < rounds) evaluate(r, true);
  }
  const absl::Status finished = client.Finish();
  observer.Sync(client);
  if (!finished.ok()) return finished;
  if (rank == 0 && !evaluated) {
    const int64_t r = client.round() - 1;
    evaluate(r, r == rounds);
  }
  out.train_loss = train_loss();
  return out;
}

// The last line and --summary_json.
absl::Status ReportSummary(const WorkerClient& client, const WorkerSetup& w,
                           const Trained& trained, absl::Time start) {
  const int rank = client.rank();
  const Evaluation& eval = trained.eval;
  const int64_t done_rounds = client.round() - 1;
  const TrafficCounts t = client.traffic();
  const std::string checksum = ParamsChecksum(client.params());
  const std::string result =
      rank == 0 ? absl::StrFormat(": %s %.4f", eval.metric_name, eval.metric)
                : "";
  std::printf(
      "effadam-worker: rank %d done after round %lld%s; this worker "
      "moved %s (fp32 Adam: %s, %.1fx fewer), join %s; "
      "params_checksum %s\n",
      rank, static_cast<long long>(done_rounds), result.c_str(),
      FormatBytes(t.round_payload()).c_str(),
      FormatBytes(t.fp32_equivalent()).c_str(), t.compression_ratio(),
      FormatBytes(t.join().payload).c_str(), checksum.c_str());
  std::fflush(stdout);  // now, not after --metrics_linger
  const CompressionConfig& c = w.options.compression;
  JsonObject json;
  json.Add("rounds", done_rounds)
      .Add("rank", rank)
      .Add("workers", client.num_workers())
      .Add("model", ModelLabel(w.training.model))
      .Add("worker_codec", c.worker_codec.ToString())
      .Add("server_codec", c.server_codec.ToString());
  if (rank == 0) {
    json.Add(eval.metric_name, eval.metric).Add("test_loss", eval.loss);
  }
  json.Add("train_loss", trained.train_loss);
  AddRoundTraffic(t, &json);
  AddJoinAndWireTraffic(t, &json);
  json.Add("params_checksum", checksum)
      .Add("resyncs", client.resyncs())
      .Add("seconds", absl::ToDoubleSeconds(absl::Now() - start));
  return Daemon::WriteSummary(w.training.summary_json, json);
}

int Run() {
  // First: every thread started later inherits its signal mask.
  Daemon daemon(kProgram);
  absl::StatusOr<WorkerSetup> setup = SetupFromFlags();
  if (!setup.ok()) return daemon.Fail(setup.status());
  const WorkerSetup& w = *setup;
  setup->options.logger = &daemon.log();  // connection attempts while it waits
  // Before Join, so that a taken port fails the start at once. The
  // worker's own metrics need the rank and are added after Join.
  if (absl::Status s = daemon.ServeMetrics(absl::GetFlag(FLAGS_metrics_listen));
      !s.ok()) {
    return daemon.Fail(s);
  }
  if (daemon.serving_metrics()) {
    daemon.log().Info(absl::StrCat("metrics on ", daemon.metrics_url()));
  }
  WorkerClient client(w.options);
  daemon.OnSignal([&client] { client.Cancel(); });
  DataCache cache;
  absl::StatusOr<std::unique_ptr<Model>> model =
      JoinWithModel(w, &cache, client);
  if (!model.ok()) return Stop(daemon, client, w.options, model.status());
  std::shared_ptr<WorkerMetrics> metrics;
  if (daemon.serving_metrics()) {
    metrics = std::make_shared<WorkerMetrics>(client.rank());
    daemon.AddMetrics(metrics->registry());
  }
  WorkerObserver& observer =
      metrics != nullptr ? *metrics : WorkerObserver::None();
  if (absl::Status s = client.Start((*model)->InitialParams(w.training.seed));
      !s.ok()) {
    return Stop(daemon, client, w.options, s);
  }
  observer.Sync(client);  // the join bytes
  const CompressionConfig& c = w.options.compression;
  std::printf(
      "effadam-worker: rank %d of %d, %s, %zu parameters, codecs "
      "%s/%s, server %s, starting at round %lld of %lld\n",
      client.rank(), client.num_workers(), w.training.model.name.c_str(),
      client.params().size(), c.worker_codec.ToString().c_str(),
      c.server_codec.ToString().c_str(), w.options.server.c_str(),
      static_cast<long long>(client.round()),
      static_cast<long long>(w.training.rounds));
  std::fflush(stdout);
  const absl::Time start = absl::Now();
  absl::StatusOr<Trained> trained =
      TrainRounds(client, **model, w.training, observer, start);
  if (!trained.ok()) return Stop(daemon, client, w.options, trained.status());
  if (absl::Status s = ReportSummary(client, w, *trained, start); !s.ok()) {
    return daemon.Fail(s);
  }
  // The counters no longer change; a scraper that comes by now reads
  // exactly the summary's numbers. A signal ends the wait; training is
  // complete, so the exit status stays 0.
  if (daemon.serving_metrics()) {
    daemon.Linger(absl::GetFlag(FLAGS_metrics_linger).value);
  }
  daemon.Exit(0);
}

}  // namespace
}  // namespace effadam

int main(int argc, char** argv) {
  effadam::ParseCommandLineOrExit(
      argc, argv,
      "One worker of an Efficient-Adam cluster: trains a built-in model on "
      "its shard and exchanges compressed updates with effadam-server.\n"
      "Example: effadam-worker --server=127.0.0.1:50051 --model=mlp "
      "--rounds=2000 --worker_codec=sign --server_codec=sign\n"
      "Flags other than --server, --rank and the TLS and token flags "
      "(docs/security.md) mean what they mean to effadam-sim; the "
      "compression flags must equal the server's.\n"
      "Exit status: 0 done, 1 error, 128+N stopped by signal N "
      "(SIGINT, SIGTERM).");
  return effadam::Run();
}
