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
  wire_up_ = &wire.Add({{"direction", "worker_to_server"}});
  wire_down_ = &wire.Add({{"direction", "server_to_worker"}});
  wire_join_ = &wire.Add({{"direction", "join"}});
  auto& payload = counters("effadam_worker_payload_bytes_total",
                           "Codec payload bytes of this worker's traffic, "
                           "counted as effadam-sim counts them, by direction");
  payload_up_ = &payload.Add({{"direction", "worker_to_server"}});
  payload_down_ = &payload.Add({{"direction", "server_to_worker"}});
  payload_join_ = &payload.Add({{"direction", "join"}});
  auto& fp32 = counters("effadam_worker_fp32_equivalent_bytes_total",
                        "Bytes fp32 Adam would have moved for this worker's "
                        "rounds, by direction");
  fp32_up_ = &fp32.Add({{"direction", "worker_to_server"}});
  fp32_down_ = &fp32.Add({{"direction", "server_to_worker"}});
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
  const WireBytes& w = client.wire_bytes();
  Advance(wire_up_, w.worker_to_server, &wire_seen_.worker_to_server);
  Advance(wire_down_, w.server_to_worker, &wire_seen_.server_to_worker);
  Advance(wire_join_, w.join, &wire_seen_.join);
  const Traffic& t = client.traffic();
  Advance(payload_up_, t.worker_to_server, &traffic_seen_.worker_to_server);
  Advance(payload_down_, t.server_to_worker, &traffic_seen_.server_to_worker);
  Advance(payload_join_, client.join_bytes(), &join_seen_);
  Advance(fp32_up_, t.fp32_worker_to_server,
          &traffic_seen_.fp32_worker_to_server);
  Advance(fp32_down_, t.fp32_server_to_worker,
          &traffic_seen_.fp32_server_to_worker);
  Advance(resyncs_, client.resyncs(), &resyncs_seen_);
}

void WorkerMetrics::RecordStep(const WorkerClient& client, double step_seconds,
                               double train_loss) {
  rounds_->Increment();
  round_duration_->Observe(step_seconds);
  train_loss_->Set(train_loss);
  // O(n) per round, a small fraction of the step's own O(n) work; double
  // so that a large model's sum of squares keeps its small entries.
  double sum_squares = 0;
  for (float e : client.error_memory()) {
    sum_squares += static_cast<double>(e) * static_cast<double>(e);
  }
  error_memory_norm_->Set(std::sqrt(sum_squares));
  Sync(client);
}

void WorkerMetrics::RecordEvaluation(const Evaluation& eval) {
  if (eval.metric_name == "test_accuracy") test_accuracy_->Set(eval.metric);
  if (!std::isnan(eval.loss)) test_loss_->Set(eval.loss);
}

}  // namespace effadam
