#include "metrics/server_metrics.h"

#include <limits>

#include "metrics/prometheus_util.h"

namespace effadam {
namespace {

prometheus::Family<prometheus::Counter>& CounterFamily(
    prometheus::Registry& registry, const prometheus::Labels& labels,
    const char* name, const char* help) {
  return prometheus::BuildCounter()
      .Name(name)
      .Help(help)
      .Labels(labels)
      .Register(registry);
}

prometheus::Gauge* Gauge(prometheus::Registry& registry,
                         const prometheus::Labels& labels, const char* name,
                         const char* help) {
  return &prometheus::BuildGauge()
              .Name(name)
              .Help(help)
              .Labels(labels)
              .Register(registry)
              .Add({});
}

int Index(TrafficDirection d) { return static_cast<int>(d); }

}  // namespace

ServerMetrics::ServerMetrics(int expected_workers,
                             const prometheus::Labels& labels)
    : registry_(std::make_shared<prometheus::Registry>()) {
  prometheus::Registry& r = *registry_;
  auto& wire = CounterFamily(
      r, labels, "effadam_server_wire_bytes_total",
      "Serialized size of the protobuf messages the server read and wrote "
      "(WorkerMessage, ServerMessage, ParamsChunk), by direction");
  auto& payload = CounterFamily(
      r, labels, "effadam_server_payload_bytes_total",
      "Codec payload bytes of the traffic, counted as effadam-sim counts "
      "them, by direction");
  auto& fp32 = CounterFamily(
      r, labels, "effadam_server_fp32_equivalent_bytes_total",
      "Bytes fp32 Adam would have moved for the same rounds, by direction");
  for (TrafficDirection d :
       {TrafficDirection::kWorkerToServer, TrafficDirection::kServerToWorker,
        TrafficDirection::kJoin}) {
    const prometheus::Labels direction = {
        {"direction", TrafficDirectionName(d)}};
    wire_bytes_[Index(d)] = &wire.Add(direction);
    payload_bytes_[Index(d)] = &payload.Add(direction);
    fp32_bytes_[Index(d)] =
        d == TrafficDirection::kJoin ? nullptr : &fp32.Add(direction);
  }

  auto& rejected = CounterFamily(
      r, labels, "effadam_server_rejected_messages_total",
      "Messages and calls the server refused, by reason (docs/metrics.md)");
  for (int i = 0; i < kNumRejections; ++i) {
    rejected_[i] =
        &rejected.Add({{"reason", RejectionName(static_cast<Rejection>(i))}});
  }

  rounds_ = &CounterFamily(r, labels, "effadam_server_rounds_total",
                           "Rounds closed (their delta computed)")
                 .Add({});
  round_ =
      Gauge(r, labels, "effadam_server_round", "The round being collected");
  round_duration_ =
      &prometheus::BuildHistogram()
           .Labels(labels)
           .Name("effadam_server_round_duration_seconds")
           .Help(
               "From a round's first update arriving to its delta being "
               "computed")
           .Register(r)
           .Add({}, RoundDurationBuckets());
  live_workers_ = Gauge(r, labels, "effadam_server_live_workers",
                        "Workers joined and not departed");
  expected_workers_ = Gauge(r, labels, "effadam_server_expected_workers",
                            "Workers the server expects (--workers)");
  target_rounds_ = Gauge(r, labels, "effadam_server_target_rounds",
                         "Rounds the run trains (--rounds); 0 until SIGTERM");
  finished_ = Gauge(r, labels, "effadam_server_finished",
                    "1 once training has ended (the final summary is "
                    "written or kept): the server only serves Status, "
                    "health and metrics until it exits");
  round_contributors_ =
      Gauge(r, labels, "effadam_server_round_contributors",
            "Workers averaged into the last closed round's delta");
  lagging_workers_ =
      Gauge(r, labels, "effadam_server_lagging_workers",
            "Live workers that did not contribute to the last closed round");
  dropped_workers_ =
      &CounterFamily(r, labels, "effadam_server_dropped_workers_total",
                     "Train streams that ended with an error or a "
                     "cancellation while the server was healthy")
           .Add({});
  short_rounds_ =
      &CounterFamily(r, labels, "effadam_server_short_rounds_total",
                     "Rounds closed with fewer contributors than "
                     "--workers (on the timeout or after departures)")
           .Add({});
  dropped_rounds_ =
      &CounterFamily(r, labels, "effadam_server_dropped_rounds_total",
                     "Rounds whose average overflowed float; their delta "
                     "was zero and x and E were left as they were")
           .Add({});
  auto& checkpoints =
      CounterFamily(r, labels, "effadam_server_checkpoints_total",
                    "Checkpoint writes, by result");
  checkpoints_written_ = &checkpoints.Add({{"result", "written"}});
  checkpoints_failed_ = &checkpoints.Add({{"result", "failed"}});
  checkpoint_duration_ =
      &prometheus::BuildHistogram()
           .Labels(labels)
           .Name("effadam_server_checkpoint_duration_seconds")
           .Help("Time to write and fsync one checkpoint file")
           .Register(r)
           .Add({}, RoundDurationBuckets());
  checkpoint_bytes_ = Gauge(r, labels, "effadam_server_checkpoint_bytes",
                            "Size of the last checkpoint file written");
  checkpoint_round_ =
      Gauge(r, labels, "effadam_server_checkpoint_round",
            "The round the last checkpoint written resumes at; 0 before one");
  train_loss_ = Gauge(r, labels, "effadam_server_train_loss",
                      "Mean mini-batch loss the last closed round's "
                      "contributors reported; NaN before the first round");
  error_memory_norm_ =
      Gauge(r, labels, "effadam_server_error_memory_norm",
            "L2 norm of the server's error memory E after the last round");

  round_->Set(1);
  expected_workers_->Set(expected_workers);
  expected_workers_count_ = expected_workers;
  train_loss_->Set(std::numeric_limits<double>::quiet_NaN());
}

void ServerMetrics::OnWireBytes(TrafficDirection direction, int64_t bytes) {
  wire_bytes_[Index(direction)]->Increment(static_cast<double>(bytes));
}

void ServerMetrics::OnPayloadBytes(TrafficDirection direction,
                                   int64_t payload_bytes, int64_t fp32_bytes) {
  payload_bytes_[Index(direction)]->Increment(
      static_cast<double>(payload_bytes));
  if (prometheus::Counter* fp32 = fp32_bytes_[Index(direction)]) {
    fp32->Increment(static_cast<double>(fp32_bytes));
  }
}

void ServerMetrics::OnRoundClosed(const ClosedRoundStats& stats) {
  rounds_->Increment();
  round_->Set(static_cast<double>(stats.round + 1));
  round_duration_->Observe(stats.duration_seconds);
  live_workers_->Set(stats.live_workers);
  round_contributors_->Set(stats.contributors);
  lagging_workers_->Set(stats.lagging_workers);
  train_loss_->Set(stats.train_loss);
  error_memory_norm_->Set(stats.error_memory_norm);
  if (stats.contributors < expected_workers_count_) short_rounds_->Increment();
  if (stats.dropped) dropped_rounds_->Increment();
}

void ServerMetrics::OnLiveWorkers(int live) { live_workers_->Set(live); }

void ServerMetrics::OnRejected(Rejection why) {
  rejected_[static_cast<int>(why)]->Increment();
}

void ServerMetrics::OnWorkerDropped() { dropped_workers_->Increment(); }

void ServerMetrics::SetTargetRounds(int64_t rounds) {
  target_rounds_->Set(static_cast<double>(rounds));
}

void ServerMetrics::SetFinished() { finished_->Set(1); }

void ServerMetrics::OnResumed(int64_t round) {
  round_->Set(static_cast<double>(round));
}

void ServerMetrics::OnCheckpointWritten(const CheckpointStats& stats) {
  checkpoints_written_->Increment();
  checkpoint_duration_->Observe(stats.seconds);
  checkpoint_bytes_->Set(static_cast<double>(stats.bytes));
  checkpoint_round_->Set(static_cast<double>(stats.round));
}

void ServerMetrics::OnCheckpointFailed() { checkpoints_failed_->Increment(); }

}  // namespace effadam
