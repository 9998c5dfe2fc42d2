#ifndef EFFADAM_PYTHON_PY_WORKER_CLIENT_H_
#define EFFADAM_PYTHON_PY_WORKER_CLIENT_H_

#include <atomic>
#include <functional>
#include <memory>

#include <pybind11/pybind11.h>

#include "absl/status/status.h"
#include "worker/worker_client.h"

namespace effadam::python {

// effadam.WorkerClient: a WorkerClient that Python can block in. Every call
// that waits on the network (join, start, step, run, finish) runs on a
// thread of its own while the calling thread, without the GIL, waits for it
// and checks for signals every 100 ms: other Python threads run meanwhile,
// and Ctrl-C cancels the client (every later call fails with CANCELLED) and
// raises KeyboardInterrupt as soon as the call has returned. Errors raise
// StatusError with the library's code and message.
//
// Like WorkerClient, not thread-safe except cancel(); a second blocking
// call while one is running raises FAILED_PRECONDITION instead of racing.
class PyWorkerClient {
 public:
  explicit PyWorkerClient(WorkerClientOptions options);
  ~PyWorkerClient();

  void Join(const TensorLayout& layout);
  void Start(pybind11::handle initial_params);
  void Step(pybind11::handle grad, float loss);
  void Run(int64_t last_round, pybind11::function gradient);
  void Finish();
  void Cancel();

  const WorkerClient& client() const { return *client_; }

 private:
  // Runs `call` as the class comment says and returns its status; raises
  // for a signal whose handler raised (KeyboardInterrupt).
  absl::Status Blocking(const std::function<absl::Status()>& call);

  std::unique_ptr<WorkerClient> client_;
  std::atomic<bool> busy_{false};
};

// Adds WorkerClient, Traffic and WireBytes to `m`.
void BindWorkerClient(pybind11::module_& m);

}  // namespace effadam::python

#endif  // EFFADAM_PYTHON_PY_WORKER_CLIENT_H_
