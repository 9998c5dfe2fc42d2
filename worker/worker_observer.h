#ifndef EFFADAM_WORKER_WORKER_OBSERVER_H_
#define EFFADAM_WORKER_WORKER_OBSERVER_H_

// WorkerObserver: what a worker daemon reports of its training, for
// monitoring; WorkerMetrics (worker_metrics.h) turns it into Prometheus
// metrics. The defaults ignore every call, and None() is an observer that
// does, so a worker without metrics holds None() instead of checking for
// null. Called from the thread that drives the WorkerClient; an
// implementation says what else it allows.

#include "worker/model.h"
#include "worker/worker_client.h"

namespace effadam {

class WorkerObserver {
 public:
  virtual ~WorkerObserver() = default;

  // After a successful Step that took `step_seconds`: the train loss this
  // worker reports (its windowed mean); then as Sync.
  virtual void RecordStep(const WorkerClient& /*client*/,
                          double /*step_seconds*/, double /*train_loss*/) {}
  // After an evaluation (rank 0).
  virtual void RecordEvaluation(const Evaluation& /*eval*/) {}
  // The client's counts changed outside a successful Step (Start, a
  // failed Step or Finish, a resync).
  virtual void Sync(const WorkerClient& /*client*/) {}

  // Ignores everything; never destroyed.
  static WorkerObserver& None() {
    static WorkerObserver* const none = new WorkerObserver;
    return *none;
  }
};

}  // namespace effadam

#endif  // EFFADAM_WORKER_WORKER_OBSERVER_H_
