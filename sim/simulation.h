#ifndef EFFADAM_SIM_SIMULATION_H_
#define EFFADAM_SIM_SIMULATION_H_

#include <memory>
#include <vector>

#include "absl/status/statusor.h"
#include "common/thread_pool.h"
#include "common/traffic.h"
#include "core/compression_config.h"
#include "core/round_engine.h"
#include "core/worker_optimizer.h"
#include "worker/model.h"
#include "worker/progress.h"
#include "worker/training_config.h"

namespace effadam {

struct SimulationConfig {
  TrainingConfig training;
  CompressionConfig compression;
  int workers = 4;
  // Threads of the round engine and of each worker's optimizer (their
  // options' `threads`); the results are the same bits for every count.
  int threads = AvailableCores();
};

// N logical workers and the server in one process, wired exactly as the
// distributed system wires them (same optimizer, round engine and codecs,
// same byte counts), so a distributed run must reproduce it bit for bit.
class Simulation {
 public:
  static absl::StatusOr<std::unique_ptr<Simulation>> Create(
      const SimulationConfig& config);
  ~Simulation();

  // One synchronous round: every worker takes a gradient and sends its
  // update, the server closes the round, every worker applies the delta.
  // Returns the workers' mean mini-batch loss.
  absl::StatusOr<double> RunRound();

  // Rank 0's evaluation of the server's x. Internal error if a worker's
  // replica differs from the server's x by a single bit.
  absl::StatusOr<Evaluation> Evaluate() const;

  int64_t rounds_done() const { return engine_->round() - 1; }
  // Round payloads, as one worker and the server count them (no join or
  // wire bytes: nothing goes over a wire).
  const TrafficCounts& traffic() const { return traffic_; }
  absl::Span<const float> params() const { return engine_->params(); }
  const RoundEngine& engine() const { return *engine_; }

 private:
  Simulation() = default;

  SimulationConfig config_;
  std::unique_ptr<DataCache> cache_;
  std::vector<std::unique_ptr<Model>> models_;
  std::vector<std::unique_ptr<WorkerOptimizer>> workers_;
  std::unique_ptr<RoundEngine> engine_;
  TrafficCounts traffic_;
};

}  // namespace effadam

#endif  // EFFADAM_SIM_SIMULATION_H_
