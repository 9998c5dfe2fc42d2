// effadam-worker: one worker of an Efficient-Adam cluster. Trains a built-in
// model on its shard of the data and exchanges compressed updates with
// effadam-server. With the same flags and seed, a cluster of N workers ends
// with the bits and byte counts of `effadam-sim --workers=N`. With
// --metrics_listen it serves Prometheus metrics (docs/metrics.md).

#include <signal.h>

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
#include "common/checksum.h"
#include "common/client_security_flags.h"
#include "common/compression_flags.h"
#include "common/json_writer.h"
#include "common/logger.h"
#include "common/prometheus_util.h"
#include "daemon/command_line.h"
#include "daemon/duration_flag.h"
#include "daemon/lifecycle.h"
#include "daemon/process_metrics.h"
#include "worker/launch_env.h"
#include "worker/model.h"
#include "worker/progress.h"
#include "worker/training_flags.h"
#include "worker/worker_client.h"
#include "worker/worker_metrics.h"

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

int Fail(Logger& log, const absl::Status& s) {
  log.Error(s.ToString());
  return 1;
}

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

int Run() {
  // First: every thread started later inherits its signal mask.
  SignalWatcher signals;
  StderrLogger log(kProgram);
  auto placement = PlacementFromFlagsAndEnvironment();
  if (!placement.ok()) return Fail(log, placement.status());
  auto training = TrainingConfigFromFlags();
  if (!training.ok()) return Fail(log, training.status());
  auto compression = CompressionConfigFromFlags();
  if (!compression.ok()) return Fail(log, compression.status());
  // TLS and the token: common/client_security_flags.cc.
  auto security = ClientSecurityFromFlags();
  if (!security.ok()) return Fail(log, security.status());
  auto keepalive = ClientKeepaliveFromFlags();
  if (!keepalive.ok()) return Fail(log, keepalive.status());
  const TrainingConfig& tc = *training;
  const absl::Duration linger = absl::GetFlag(FLAGS_metrics_linger).value;

  // After the watcher, so that the exposer's threads inherit its signal
  // mask; before Join, so that a taken port fails the start at once. The
  // metrics need the rank and are registered after Join.
  const std::string metrics_listen = absl::GetFlag(FLAGS_metrics_listen);
  std::unique_ptr<prometheus::Exposer> exposer;
  const auto process_metrics = std::make_shared<ProcessCollector>();
  if (!metrics_listen.empty()) {
    absl::StatusOr<std::unique_ptr<prometheus::Exposer>> e =
        StartMetricsExposer(metrics_listen);
    if (!e.ok()) return Fail(log, e.status());
    exposer = *std::move(e);
    exposer->RegisterCollectable(process_metrics);
    log.Info(absl::StrCat(
        "metrics on http://", metrics_listen.substr(0, metrics_listen.rfind(':')),
        ":", BoundPort(*exposer), "/metrics"));
  }
  WorkerClientOptions options;
  options.server = placement->server;
  options.num_shards = placement->num_shards;
  options.rank = placement->rank;
  options.compression = *compression;
  options.adam = tc.adam;
  options.seed = tc.seed;
  options.connect_timeout = absl::GetFlag(FLAGS_connect_timeout).value;
  options.reconnect_timeout = absl::GetFlag(FLAGS_reconnect_timeout).value;
  options.logger = &log;  // connection attempts while it waits
  options.security = *std::move(security);
  options.keepalive = *keepalive;
  WorkerClient client(options);
  signals.Watch([&client](int) { client.Cancel(); });
  auto fail = [&](const absl::Status& s) {
    if (signals.signal() != 0) {
      const char* name = SignalWatcher::Name(signals.signal());
      log.Info(client.round() > 0
                   ? absl::StrCat("stopped by ", name, " before round ",
                                  client.round())
                   : absl::StrCat("stopped by ", name, " while joining"));
      ExitNow(128 + signals.signal());
    }
    // Never connected: say what to check (TLS flags look like a dead server).
    if (s.code() == absl::StatusCode::kUnavailable && client.rank() < 0) {
      return Fail(log, absl::Status(
          s.code(), absl::StrCat(s.message(), " (",
                                 ConnectionHint(options.security), ")")));
    }
    return Fail(log, s);
  };

  // The layout must go with Join, but the data shard depends on the rank
  // Join assigns: a first model of one shard provides the layout, and the
  // cache lets the real model reuse the data it read.
  DataCache cache;
  std::unique_ptr<Model> model;
  {
    ModelConfig probe = tc.model;
    probe.rank = 0;
    probe.num_workers = 1;
    probe.load_test_set = false;
    auto m = MakeModel(probe, &cache);
    if (!m.ok()) return fail(m.status());
    if (absl::Status s = client.Join((*m)->layout()); !s.ok()) return fail(s);
    if (absl::Status s = CheckWorldSize(*placement, client.num_workers(),
                                        options.server);
        !s.ok()) {
      return fail(s);
    }
  }
  const int rank = client.rank();
  std::unique_ptr<WorkerMetrics> metrics;
  if (exposer != nullptr) {
    metrics = std::make_unique<WorkerMetrics>(rank);
    exposer->RegisterCollectable(metrics->registry());
  }
  {
    ModelConfig mc = tc.model;
    mc.rank = rank;
    mc.num_workers = client.num_workers();
    mc.load_test_set = rank == 0;  // rank 0 evaluates, as in effadam-sim
    auto m = MakeModel(mc, &cache);
    if (!m.ok()) return fail(m.status());
    model = *std::move(m);
  }
  if (absl::Status s = client.Start(model->InitialParams(tc.seed)); !s.ok()) {
    return fail(s);
  }
  if (metrics != nullptr) metrics->Sync(client);  // the join bytes

  const int64_t rounds = tc.rounds;
  const int64_t every = tc.eval_every > 0 ? tc.eval_every : rounds;
  std::printf("effadam-worker: rank %d of %d, %s, %zu parameters, codecs "
              "%s/%s, server %s, starting at round %lld of %lld\n",
              rank, client.num_workers(), tc.model.name.c_str(),
              client.params().size(),
              options.compression.worker_codec.ToString().c_str(),
              options.compression.server_codec.ToString().c_str(),
              options.server.c_str(), static_cast<long long>(client.round()),
              static_cast<long long>(rounds));
  std::fflush(stdout);

  const absl::Time start = absl::Now();
  // Train loss: this worker's mean mini-batch loss over the last kLossWindow
  // rounds, the window effadam-sim uses for the mean over all workers.
  constexpr size_t kLossWindow = 50;
  std::deque<double> losses;
  auto train_loss = [&] {
    return losses.empty() ? std::numeric_limits<double>::quiet_NaN()
                          : std::accumulate(losses.begin(), losses.end(), 0.0) /
                                static_cast<double>(losses.size());
  };
  Evaluation eval;
  bool evaluated = false;  // eval holds the evaluation of the final params
  std::vector<float> grad(client.params().size());
  int resyncs = 0;
  while (client.round() <= rounds) {
    const float loss = model->Gradient(client.params(), absl::MakeSpan(grad));
    const absl::Time step_start = absl::Now();
    if (absl::Status s = client.Step(grad, loss); !s.ok()) {
      if (metrics != nullptr) metrics->Sync(client);
      if (client.server_finished()) {
        std::printf("effadam-worker: rank %d: the server ended training "
                    "after round %lld\n",
                    rank, static_cast<long long>(client.round() - 1));
        break;
      }
      return fail(s);
    }
    const double step_seconds = absl::ToDoubleSeconds(absl::Now() - step_start);
    if (client.resyncs() != resyncs) {
      // No round of this worker's went through; it has the server's x now.
      resyncs = client.resyncs();
      std::printf("effadam-worker: rank %d resynchronized with the server "
                  "(x fetched) at round %lld; resync %d\n",
                  rank, static_cast<long long>(client.round()), resyncs);
      std::fflush(stdout);
      if (metrics != nullptr) metrics->Sync(client);
      continue;
    }
    losses.push_back(loss);
    if (losses.size() > kLossWindow) losses.pop_front();
    if (metrics != nullptr) {
      metrics->RecordStep(client, step_seconds, train_loss());
    }
    const int64_t r = client.round() - 1;  // just applied
    evaluated = false;
    if (rank == 0 && (r % every == 0 || r == rounds)) {
      eval = model->Evaluate(client.params());
      evaluated = true;
      if (metrics != nullptr) metrics->RecordEvaluation(eval);
      std::printf("%s\n",
                  FormatProgress(r, rounds, train_loss(), eval,
                                 client.traffic(),
                                 absl::ToDoubleSeconds(absl::Now() - start))
                      .c_str());
      std::fflush(stdout);
    }
  }
  const absl::Status finished = client.Finish();
  if (metrics != nullptr) metrics->Sync(client);
  if (!finished.ok()) return fail(finished);
  if (rank == 0 && !evaluated) {
    eval = model->Evaluate(client.params());
    if (metrics != nullptr) metrics->RecordEvaluation(eval);
  }

  const int64_t done_rounds = client.round() - 1;
  const TrafficCounts t = client.traffic();
  const std::string checksum = ParamsChecksum(client.params());
  const std::string result =
      rank == 0 ? absl::StrFormat(": %s %.4f", eval.metric_name, eval.metric)
                : "";
  std::printf("effadam-worker: rank %d done after round %lld%s; this worker "
              "moved %s (fp32 Adam: %s, %.1fx fewer), join %s; "
              "params_checksum %s\n",
              rank, static_cast<long long>(done_rounds), result.c_str(),
              FormatBytes(t.round_payload()).c_str(),
              FormatBytes(t.fp32_equivalent()).c_str(), t.compression_ratio(),
              FormatBytes(t.join().payload).c_str(), checksum.c_str());
  std::fflush(stdout);  // now, not after --metrics_linger
  if (!tc.summary_json.empty()) {
    JsonObject json;
    json.Add("rounds", done_rounds)
        .Add("rank", rank)
        .Add("workers", client.num_workers())
        .Add("model", ModelLabel(tc.model))
        .Add("worker_codec", options.compression.worker_codec.ToString())
        .Add("server_codec", options.compression.server_codec.ToString());
    if (rank == 0) {
      json.Add(eval.metric_name, eval.metric).Add("test_loss", eval.loss);
    }
    json.Add("train_loss", train_loss());
    AddRoundTraffic(t, &json);
    AddJoinAndWireTraffic(t, &json);
    json.Add("params_checksum", checksum)
        .Add("resyncs", client.resyncs())
        .Add("seconds", absl::ToDoubleSeconds(absl::Now() - start));
    if (absl::Status s = json.WriteFile(tc.summary_json); !s.ok()) {
      return Fail(log, s);
    }
  }
  // The counters no longer change; a scraper that comes by now reads
  // exactly the summary's numbers. A signal ends the wait; training is
  // complete, so the exit status stays 0.
  if (exposer != nullptr) {
    LingerForScrape(log, linger, [&] { return signals.signal() != 0; });
  }
  ExitNow(0);
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
