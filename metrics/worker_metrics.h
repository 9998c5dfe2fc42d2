#ifndef EFFADAM_METRICS_WORKER_METRICS_H_
#define EFFADAM_METRICS_WORKER_METRICS_H_

#include <memory>

#include "prometheus/counter.h"
#include "prometheus/gauge.h"
#include "prometheus/histogram.h"
#include "prometheus/registry.h"
#include "worker/model.h"
#include "worker/worker_client.h"

namespace effadam {

// One worker's Prometheus metrics (docs/metrics.md): a registry with the
// effadam_worker_* families, every series labelled rank="<rank>".
//
// The byte counters are brought up to WorkerClient's own counts (the ones
// the summary JSON reports) by Sync, so they cannot drift from them; the
// client needs no metrics hook. Call from the thread that drives the
// client; scrapes may run concurrently.
class WorkerMetrics {
 public:
  explicit WorkerMetrics(int rank);
  WorkerMetrics(const WorkerMetrics&) = delete;
  WorkerMetrics& operator=(const WorkerMetrics&) = delete;

  // What an exposer serves.
  std::shared_ptr<prometheus::Registry> registry() const { return registry_; }

  // After a successful Step that took `step_seconds`: one more round, the
  // train loss this worker reports (its windowed mean), the norm of its
  // error memory, and Sync.
  void RecordStep(const WorkerClient& client, double step_seconds,
                  double train_loss);
  // After an evaluation (rank 0): test accuracy when the model's metric is
  // an accuracy, and the test loss unless it is NaN (not measured).
  void RecordEvaluation(const Evaluation& eval);
  // Brings the byte counters to the client's counts, e.g. after a failed
  // Step or Finish, which may move bytes too.
  void Sync(const WorkerClient& client);

 private:
  // Adds what `now` has beyond `*seen` to `counter`.
  static void Advance(prometheus::Counter* counter, int64_t now, int64_t* seen);

  std::shared_ptr<prometheus::Registry> registry_;
  prometheus::Counter* wire_up_;
  prometheus::Counter* wire_down_;
  prometheus::Counter* wire_join_;
  prometheus::Counter* payload_up_;
  prometheus::Counter* payload_down_;
  prometheus::Counter* payload_join_;
  prometheus::Counter* fp32_up_;
  prometheus::Counter* fp32_down_;
  prometheus::Counter* rounds_;
  prometheus::Counter* resyncs_;
  prometheus::Histogram* round_duration_;
  prometheus::Gauge* train_loss_;
  prometheus::Gauge* test_accuracy_;
  prometheus::Gauge* test_loss_;
  prometheus::Gauge* error_memory_norm_;

  // The client's counts as of the last Sync.
  WireBytes wire_seen_;
  Traffic traffic_seen_;
  int64_t join_seen_ = 0;
  int64_t resyncs_seen_ = 0;
};

}  // namespace effadam

#endif  // EFFADAM_METRICS_WORKER_METRICS_H_
