#include "metrics/worker_metrics.h"

#include <cmath>
#include <limits>
#include <string>

#include "metrics/prometheus_util.h"

namespace effadam {
namespace {

prometheus::Gauge* Gauge(prometheus::Registry& registry,
                         const prometheus::Labels& rank, const char* name,
                         const char* help) {
  return &prometheus::BuildGauge()
              .Name(name)
              .Help(help)
              .Labels(rank)
              .Register(registry)
              .Add({});
}

}  // namespace

WorkerMetrics::WorkerMetrics(int rank)
    : registry_(std::make_shared<prometheus::Registry>()) {
  prometheus::Registry& r = *registry_;
  const prometheus::Labels labels = {{"rank", std::to_string(rank)}};
  auto counters = [&](const char* name, const char* help) -> auto& {
    return prometheus::BuildCounter()
        .Name(name)
        .Help(help)
        .Labels(labels)
        .Register(r);
  };
  auto& wire = counters("effadam_worker_wire_bytes_total",
                        "Serialized size of the protobuf messages this worker "
                        "wrote and read (WorkerMessage, ServerMessage, "
                        "ParamsChunk), by direction");
  auto& payload = counters("effadam_worker_payload_bytes_total",
                           "Codec payload bytes of this worker's traffic, "
                           "counted as effadam-sim counts them, by direction");
  auto& fp32 = counters("effadam_worker_fp32_equivalent_bytes_total",
                        "Bytes fp32 Adam would have moved for this worker's "
                        "rounds, by direction");
  for (int d = 0; d < kNumTrafficDirections; ++d) {
    const auto direction = static_cast<TrafficDirection>(d);
    const prometheus::Labels label = {
        {"direction", TrafficDirectionName(direction)}};
    Counters& c = by_direction_[d];
    c.wire = &wire.Add(label);
    c.payload = &payload.Add(label);
    if (direction != TrafficDirection::kJoin) c.fp32 = &fp32.Add(label);
  }
  rounds_ = &counters("effadam_worker_rounds_total",
                      "Rounds this worker completed (update sent, delta "
                      "applied)")
                 .Add({});
  resyncs_ = &counters("effadam_worker_resyncs_total",
                       "Times this worker joined again and fetched x after "
                       "its stream broke or it fell behind")
                  .Add({});
  round_duration_ =
      &prometheus::BuildHistogram()
           .Name("effadam_worker_round_duration_seconds")
           .Help(
               "One Step: Adam update, encode, send, wait for and apply "
               "the round's delta (the gradient not included)")
           .Labels(labels)
           .Register(r)
           .Add({}, RoundDurationBuckets());
  train_loss_ = Gauge(r, labels, "effadam_worker_train_loss",
                      "This worker's mean mini-batch loss over its last 50 "
                      "rounds; NaN before the first");
  test_accuracy_ = Gauge(r, labels, "effadam_worker_test_accuracy",
                         "Test-set accuracy at the last evaluation (rank 0, "
                         "classifier models); NaN before the first");
  test_loss_ = Gauge(r, labels, "effadam_worker_test_loss",
                     "Test-set loss at the last evaluation (rank 0); NaN "
                     "before the first");
  error_memory_norm_ = Gauge(r, labels, "effadam_worker_error_memory_norm",
                             "L2 norm of this worker's error memory e");
  const double nan = std::numeric_limits<double>::quiet_NaN();
  train_loss_->Set(nan);
  test_accuracy_->Set(nan);
  test_loss_->Set(nan);
}

void WorkerMetrics::Advance(prometheus::Counter* counter, int64_t now,
                            int64_t* seen) {
  if (now > *seen) counter->Increment(static_cast<double>(now - *seen));
  *seen = now;
}

void WorkerMetrics::Sync(const WorkerClient& client) {
  const TrafficCounts now = client.traffic();
  for (int d = 0; d < kNumTrafficDirections; ++d) {
    const DirectionBytes& n = now.by_direction[d];
    DirectionBytes& seen = traffic_seen_.by_direction[d];
    const Counters& c = by_direction_[d];
    Advance(c.wire, n.wire, &seen.wire);
    Advance(c.payload, n.payload, &seen.payload);
    // Join traffic has no fp32 equivalent, and no series.
    if (c.fp32 != nullptr) Advance(c.fp32, n.fp32, &seen.fp32);
  }
  Advance(resyncs_, client.resyncs(), &resyncs_seen_);
}

void WorkerMetrics::RecordStep(const WorkerClient& client, double step_seconds,
                               double train_loss) {
  rounds_->Increment();
  round_duration_->Observe(step_seconds);
  train_loss_->Set(train_loss);
  // Summed by the step while it wrote e: no pass over e here.
  error_memory_norm_->Set(client.error_memory_norm());
  Sync(client);
}

void WorkerMetrics::RecordEvaluation(const Evaluation& eval) {
  if (eval.metric_name == "test_accuracy") test_accuracy_->Set(eval.metric);
  if (!std::isnan(eval.loss)) test_loss_->Set(eval.loss);
}

}  // namespace effadam
