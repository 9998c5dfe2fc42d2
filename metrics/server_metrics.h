#ifndef EFFADAM_METRICS_SERVER_METRICS_H_
#define EFFADAM_METRICS_SERVER_METRICS_H_

#include <array>
#include <memory>

#include "prometheus/counter.h"
#include "prometheus/gauge.h"
#include "prometheus/histogram.h"
#include "prometheus/registry.h"
#include "server/server_observer.h"

namespace effadam {

// The parameter server's Prometheus metrics (docs/metrics.md): a registry
// with the effadam_server_* families, fed by ParameterServer and its service
// through the ServerObserver calls. Every label value is created up front, so
// each series exists, at 0, from the first scrape on.
//
// Thread-safe: prometheus-cpp's metrics are.
class ServerMetrics final : public ServerObserver {
 public:
  // `labels` go on every series (shard="k" for a sharded server).
  explicit ServerMetrics(int expected_workers,
                         const prometheus::Labels& labels = {});
  ServerMetrics(const ServerMetrics&) = delete;
  ServerMetrics& operator=(const ServerMetrics&) = delete;

  // What an exposer serves.
  std::shared_ptr<prometheus::Registry> registry() const { return registry_; }

  // Set by the daemon, not the service: the run's --rounds, and that the
  // run has ended (effadam_server_target_rounds, effadam_server_finished).
  void SetTargetRounds(int64_t rounds);
  void SetFinished();

  void OnWireBytes(TrafficDirection direction, int64_t bytes) override;
  void OnPayloadBytes(TrafficDirection direction, int64_t payload_bytes,
                      int64_t fp32_bytes) override;
  void OnRoundClosed(const ClosedRoundStats& stats) override;
  void OnLiveWorkers(int live) override;
  void OnRejected(Rejection why) override;
  void OnWorkerDropped() override;
  void OnResumed(int64_t round) override;
  void OnCheckpointWritten(const CheckpointStats& stats) override;
  void OnCheckpointFailed() override;

 private:
  std::shared_ptr<prometheus::Registry> registry_;
  std::array<prometheus::Counter*, kNumTrafficDirections> wire_bytes_;
  std::array<prometheus::Counter*, kNumTrafficDirections> payload_bytes_;
  // Join traffic has no fp32 equivalent: its entry stays null.
  std::array<prometheus::Counter*, kNumTrafficDirections> fp32_bytes_;
  std::array<prometheus::Counter*, kNumRejections> rejected_;
  prometheus::Counter* rounds_;
  prometheus::Gauge* round_;
  prometheus::Histogram* round_duration_;
  prometheus::Gauge* live_workers_;
  prometheus::Gauge* expected_workers_;
  prometheus::Gauge* target_rounds_;
  prometheus::Gauge* finished_;
  prometheus::Gauge* round_contributors_;
  prometheus::Gauge* lagging_workers_;
  prometheus::Counter* dropped_workers_;
  int expected_workers_count_;
  prometheus::Counter* short_rounds_;
  prometheus::Counter* dropped_rounds_;
  prometheus::Counter* checkpoints_written_;
  prometheus::Counter* checkpoints_failed_;
  prometheus::Histogram* checkpoint_duration_;
  prometheus::Gauge* checkpoint_bytes_;
  prometheus::Gauge* checkpoint_round_;
  prometheus::Gauge* train_loss_;
  prometheus::Gauge* error_memory_norm_;
};

}  // namespace effadam

#endif  // EFFADAM_METRICS_SERVER_METRICS_H_
