#ifndef EFFADAM_DAEMON_DAEMON_H_
#define EFFADAM_DAEMON_DAEMON_H_

// Daemon: the plumbing effadam-server and effadam-worker share around
// their work, so that each main says only what is its own.
//
// - Signals: SIGINT and SIGTERM are taken by a SignalWatcher
//   (daemon/lifecycle.h) from construction on; the daemon reads signal()
//   where it decides, and may name one action to run at the first signal
//   (OnSignal, e.g. cancelling a client). A second signal ends the
//   process at once.
// - The operators' log: a StderrLogger with the program's name.
// - /metrics: ServeMetrics starts the endpoint with the process metrics
//   (daemon/process_metrics.h), AddMetrics registers a daemon's own; without
//   an address both do nothing, so callers never check.
// - Memory: glibc's malloc keeps freed large buffers for reuse (a chunk's
//   1 MiB payload, an update, a delta: each round allocates and frees
//   them again). By default it returns them to the kernel, and the next
//   round pays page faults and zeroing for memory it just gave back (more
//   than half the server's page faults and a quarter or more of its system
//   time in fp32 rounds; docs/benchmarks.md, "Allocator").
// - The end: Linger keeps the process (and /metrics) up for a last scrape
//   until its time passes or a signal comes; WriteSummary writes the run's
//   summary JSON; Exit ends the process without waiting on gRPC's and
//   civetweb's threads (ExitNow).
//
// Thread-safety: construct first thing in Run, on the main thread, before
// any other thread starts (they inherit its signal mask). signal() and
// log() may be used from any thread; the other methods from the main
// thread.

#include <functional>
#include <memory>
#include <string>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "common/json_writer.h"
#include "common/logger.h"
#include "daemon/lifecycle.h"

namespace prometheus {
class Collectable;
class Exposer;
}  // namespace prometheus

namespace effadam {
class ProcessCollector;
}  // namespace effadam

namespace effadam {

class Daemon {
 public:
  // `program` names the log lines ("effadam-server").
  explicit Daemon(std::string program);
  ~Daemon();
  Daemon(const Daemon&) = delete;
  Daemon& operator=(const Daemon&) = delete;

  const std::string& program() const { return program_; }
  Logger& log() { return log_; }

  // The first SIGINT or SIGTERM received, or 0.
  int signal() const { return signals_.signal(); }
  // Runs `action` on the watcher's thread at the first signal, or at once
  // if it came already; at most once. What it uses must outlive the
  // Daemon. One action; a later call replaces it.
  void OnSignal(std::function<void()> action);

  // Logs `s` as an error; returns 1, the exit status of a failed run.
  int Fail(const absl::Status& s);

  // Serves /metrics on `listen` (host:port; port 0 picks one) with the
  // process metrics. Empty: no endpoint. InvalidArgument for an address
  // that is not host:port, Unavailable naming the reason when it cannot be
  // bound.
  absl::Status ServeMetrics(const std::string& listen);
  bool serving_metrics() const { return exposer_ != nullptr; }
  // "http://HOST:PORT/metrics" with the host of `listen` and the port
  // bound; empty without an endpoint.
  std::string metrics_url() const;
  // Serves `metrics` too, as long as the caller keeps it (the endpoint
  // holds a weak_ptr); nothing without an endpoint.
  void AddMetrics(const std::shared_ptr<prometheus::Collectable>& metrics);

  // After the run: returns when `linger` has passed or at a signal (at
  // once if one came already, or for a zero linger), saying so in the log.
  void Linger(absl::Duration linger);

  // Writes `json` to `path` (through a temporary file); nothing for an
  // empty path.
  static absl::Status WriteSummary(const std::string& path,
                                   const JsonObject& json);

  // Ends the process with `status`: the results are on disk and the
  // summary printed (ExitNow).
  [[noreturn]] void Exit(int status);

 private:
  const std::string program_;
  StderrLogger log_;

  absl::Mutex mu_;
  std::function<void()> on_signal_ ABSL_GUARDED_BY(mu_);
  bool acted_ ABSL_GUARDED_BY(mu_) = false;
  bool signalled_ ABSL_GUARDED_BY(mu_) = false;

  std::string metrics_host_;
  std::unique_ptr<prometheus::Exposer> exposer_;
  // The exposer holds its collectables by weak_ptr: they live here.
  std::shared_ptr<ProcessCollector> process_metrics_;
  // Blocks the signals when constructed, before any thread starts (no
  // member above starts one); last, so that its thread, which uses mu_,
  // is joined first.
  SignalWatcher signals_;
};

}  // namespace effadam

#endif  // EFFADAM_DAEMON_DAEMON_H_
