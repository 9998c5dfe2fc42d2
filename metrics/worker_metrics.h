#ifndef EFFADAM_METRICS_WORKER_METRICS_H_
#define EFFADAM_METRICS_WORKER_METRICS_H_

#include <array>
#include <memory>

#include "common/traffic.h"
#include "prometheus/counter.h"
#include "prometheus/gauge.h"
#include "prometheus/histogram.h"
#include "prometheus/registry.h"
#include "worker/model.h"
#include "worker/worker_client.h"
#include "worker/worker_observer.h"

namespace effadam {

// One worker's Prometheus metrics (docs/metrics.md): a registry with the
// effadam_worker_* families, every series labelled rank="<rank>".
//
// The byte counters are brought up to WorkerClient's own counts (the ones
// the summary JSON reports) by Sync, so they cannot drift from them; the
// client needs no metrics hook. Call from the thread that drives the
// client; scrapes may run concurrently.
class WorkerMetrics final : public WorkerObserver {
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
                  double train_loss) override;
  // After an evaluation (rank 0): test accuracy when the model's metric is
  // an accuracy, and the test loss unless it is NaN (not measured).
  void RecordEvaluation(const Evaluation& eval) override;
  // Brings the byte counters to the client's counts, e.g. after a failed
  // Step or Finish, which may move bytes too.
  void Sync(const WorkerClient& client) override;

 private:
  // Adds what `now` has beyond `*seen` to `counter`.
  static void Advance(prometheus::Counter* counter, int64_t now, int64_t* seen);

  // The byte counters of one direction (TrafficDirection), one per field
  // of DirectionBytes; no fp32 series for join traffic.
  struct Counters {
    prometheus::Counter* wire = nullptr;
    prometheus::Counter* payload = nullptr;
    prometheus::Counter* fp32 = nullptr;
  };

  std::shared_ptr<prometheus::Registry> registry_;
  std::array<Counters, kNumTrafficDirections> by_direction_;
  prometheus::Counter* rounds_;
  prometheus::Counter* resyncs_;
  prometheus::Histogram* round_duration_;
  prometheus::Gauge* train_loss_;
  prometheus::Gauge* test_accuracy_;
  prometheus::Gauge* test_loss_;
  prometheus::Gauge* error_memory_norm_;

  // The client's counts as of the last Sync.
  TrafficCounts traffic_seen_;
  int64_t resyncs_seen_ = 0;
};

}  // namespace effadam

#endif  // EFFADAM_METRICS_WORKER_METRICS_H_
