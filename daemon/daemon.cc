#include "daemon/daemon.h"

#include <malloc.h>

#include <utility>

#include "absl/strings/str_cat.h"
#include "common/clock.h"
#include "daemon/process_metrics.h"
#include "metrics/prometheus_util.h"

namespace effadam {

Daemon::Daemon(std::string program)
    : program_(std::move(program)), log_(program_) {
#if defined(__GLIBC__)
  // Buffers up to 32 MiB come from the heap rather than from a mapping of
  // their own (glibc's own dynamic threshold ends at the same size, but only
  // after it saw one freed), and up to 128 MiB of free heap is kept rather
  // than trimmed: the rounds' buffers are reused instead of faulted in.
  mallopt(M_MMAP_THRESHOLD, 32 << 20);
  mallopt(M_TRIM_THRESHOLD, 128 << 20);
#endif
  signals_.Watch([this](int) {
    absl::MutexLock lock(&mu_);
    signalled_ = true;
    if (on_signal_ && !acted_) {
      acted_ = true;
      on_signal_();
    }
  });
}

Daemon::~Daemon() = default;

void Daemon::OnSignal(std::function<void()> action) {
  absl::MutexLock lock(&mu_);
  on_signal_ = std::move(action);
  // The signal came first: its watcher found no action to run.
  if (signalled_ && !acted_ && on_signal_) {
    acted_ = true;
    on_signal_();
  }
}

int Daemon::Fail(const absl::Status& s) {
  log_.Error(s.ToString());
  return 1;
}

absl::Status Daemon::ServeMetrics(const std::string& listen) {
  if (listen.empty()) return absl::OkStatus();
  absl::StatusOr<std::unique_ptr<prometheus::Exposer>> exposer =
      StartMetricsExposer(listen);
  if (!exposer.ok()) return exposer.status();
  exposer_ = *std::move(exposer);
  metrics_host_ = listen.substr(0, listen.rfind(':'));
  process_metrics_ = std::make_shared<ProcessCollector>();
  exposer_->RegisterCollectable(process_metrics_);
  return absl::OkStatus();
}

std::string Daemon::metrics_url() const {
  if (exposer_ == nullptr) return "";
  return absl::StrCat("http://", metrics_host_, ":", BoundPort(*exposer_),
                      "/metrics");
}

void Daemon::AddMetrics(
    const std::shared_ptr<prometheus::Collectable>& metrics) {
  if (exposer_ != nullptr) exposer_->RegisterCollectable(metrics);
}

void Daemon::Linger(absl::Duration linger) {
  if (linger <= absl::ZeroDuration() || signal() != 0) return;
  log_.Info(absl::StrCat("serving the final metrics for ",
                         absl::FormatDuration(linger),
                         " (--metrics_linger; SIGTERM ends it)"));
  const Clock& clock = Clock::Real();
  const absl::Time until = clock.Now() + linger;
  absl::MutexLock lock(&mu_);
  // The watcher sets signalled_ under mu_, which wakes this wait.
  while (!signalled_ && clock.Now() < until) {
    mu_.AwaitWithDeadline(absl::Condition(&signalled_), until);
  }
}

absl::Status Daemon::WriteSummary(const std::string& path,
                                  const JsonObject& json) {
  if (path.empty()) return absl::OkStatus();
  return json.WriteFile(path);
}

void Daemon::Exit(int status) { ExitNow(status); }

}  // namespace effadam
