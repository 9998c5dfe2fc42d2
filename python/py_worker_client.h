#ifndef EFFADAM_PYTHON_PY_WORKER_CLIENT_H_
#define EFFADAM_PYTHON_PY_WORKER_CLIENT_H_

#include <pybind11/pybind11.h>

#include <atomic>
#include <functional>
#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/time/time.h"
#include "metrics/worker_metrics.h"
#include "worker/worker_client.h"

namespace prometheus {
class Exposer;
}  // namespace prometheus

namespace effadam::python {

// effadam.WorkerClient: a WorkerClient that Python can block in. Every call
// that waits on the network (join, start, step, run, finish) runs on a
// thread of its own while the calling thread, without the GIL, waits for it
// and checks for signals every 100 ms: other Python threads run meanwhile,
// and Ctrl-C cancels the client (every later call fails with CANCELLED) and
// raises KeyboardInterrupt as soon as the call has returned. Errors raise
// StatusError with the library's code and message.
//
// With a metrics address it serves the effadam_worker_* metrics of
// effadam-worker (WorkerMetrics, docs/metrics.md) from the rank's Join on:
// rounds, step durations, the loss step() reports, bytes, resyncs, and what
// record_evaluation() says, so Python workers show on the same dashboard.
//
// Like WorkerClient, not thread-safe except cancel(); a second blocking
// call while one is running raises FAILED_PRECONDITION instead of racing.
class PyWorkerClient {
 public:
  // metrics_listen: host:port for /metrics (port 0 picks one, see
  // metrics_port()); empty for none. Raises when it cannot be bound.
  PyWorkerClient(WorkerClientOptions options,
                 const std::string& metrics_listen);
  ~PyWorkerClient();

  void Join(const TensorLayout& layout);
  void Start(pybind11::handle initial_params);
  void Step(pybind11::handle grad, float loss);
  // The bucketed step (WorkerClient::BeginStep, AddGradient, EndStep).
  // add_gradient runs the ready parts' Adam step and encoding without the
  // GIL; end_step blocks as step does, and its time is the step's in the
  // metrics (what the round adds after the last gradient).
  void BeginStep();
  void AddGradient(size_t begin, pybind11::handle grad);
  void EndStep(float loss);
  void Run(int64_t last_round, pybind11::function gradient);
  void Finish();
  void Cancel();
  // Rank 0's evaluation on held-out data, for the test_accuracy and
  // test_loss gauges (NaN: not measured). No-op without metrics.
  void RecordEvaluation(double test_loss, double test_accuracy);
  // The port /metrics is served on; 0 without metrics.
  int metrics_port() const;

  const WorkerClient& client() const { return *client_; }
  // For settings between blocking calls (the learning rate, the optimizer
  // state): raises FAILED_PRECONDITION while one runs in another thread.
  WorkerClient& idle_client();

 private:
  // Runs `call` as the class comment says and returns its status; raises
  // for a signal whose handler raised (KeyboardInterrupt).
  absl::Status Blocking(const std::function<absl::Status()>& call);

  // Brings the metrics' byte counters to the client's counts.
  void SyncMetrics();
  // After a step that began at `start` and ended with `s`: the step's
  // duration and loss into the metrics if it went through (else the
  // counters), then raises `s` if it is an error.
  void RecordStepAndThrow(const absl::Status& s, absl::Time start, float loss);

  std::unique_ptr<WorkerClient> client_;
  std::atomic<bool> busy_{false};
  std::unique_ptr<prometheus::Exposer> exposer_;
  std::unique_ptr<WorkerMetrics> metrics_;  // after Join, with exposer_
};

// Adds WorkerClient, Traffic (TrafficCounts) and DirectionBytes to `m`.
void BindWorkerClient(pybind11::module_& m);

}  // namespace effadam::python

#endif  // EFFADAM_PYTHON_PY_WORKER_CLIENT_H_
