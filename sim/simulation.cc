#include "sim/simulation.h"

#include <algorithm>
#include <cstring>
#include <thread>
#include <utility>

#include "absl/strings/str_cat.h"

namespace effadam {
namespace {

// Runs fn(i) for i in [0, n) on up to hardware_concurrency threads. Each i
// owns its state, so the result does not depend on the schedule.
template <typename Fn>
void ParallelFor(int n, Fn fn) {
  const int threads =
      std::max(1, std::min<int>(n, std::thread::hardware_concurrency()));
  std::vector<std::thread> pool;
  for (int k = 1; k < threads; ++k) {
    pool.emplace_back([&, k] {
      for (int i = k; i < n; i += threads) fn(i);
    });
  }
  for (int i = 0; i < n; i += threads) fn(i);
  for (std::thread& t : pool) t.join();
}

}  // namespace

Simulation::~Simulation() = default;

absl::StatusOr<std::unique_ptr<Simulation>> Simulation::Create(
    const SimulationConfig& config) {
  if (config.workers <= 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("--workers must be > 0, got ", config.workers));
  }
  std::unique_ptr<Simulation> sim(new Simulation);
  sim->config_ = config;
  sim->cache_ = std::make_unique<DataCache>();
  for (int r = 0; r < config.workers; ++r) {
    ModelConfig mc = config.training.model;
    mc.rank = r;
    mc.num_workers = config.workers;
    mc.load_test_set = r == 0;
    auto model = MakeModel(mc, sim->cache_.get());
    if (!model.ok()) return model.status();
    sim->models_.push_back(*std::move(model));
  }
  const TensorLayout& layout = sim->models_[0]->layout();
  std::vector<float> x0 = sim->models_[0]->InitialParams(config.training.seed);
  const CompressionConfig& cc = config.compression;
  auto wc = UpdateCodec::Create(layout, cc.worker_codec, cc.options);
  if (!wc.ok()) return wc.status();
  auto sc = UpdateCodec::Create(layout, cc.server_codec, cc.options);
  if (!sc.ok()) return sc.status();
  std::shared_ptr<const UpdateCodec> worker_codec = *std::move(wc);
  std::shared_ptr<const UpdateCodec> server_codec = *std::move(sc);

  RoundEngineOptions eo;
  eo.error_feedback = cc.server_error_feedback;
  eo.seed = config.training.seed;
  eo.threads = config.threads;
  auto engine = RoundEngine::Create(worker_codec, server_codec, x0, eo);
  if (!engine.ok()) return engine.status();
  sim->engine_ = *std::move(engine);

  for (int r = 0; r < config.workers; ++r) {
    WorkerOptimizer::Options wo;
    wo.adam = config.training.adam;
    wo.error_feedback = cc.worker_error_feedback;
    wo.seed = config.training.seed;
    wo.rank = r;
    wo.threads = config.threads;
    auto w = WorkerOptimizer::Create(worker_codec, server_codec, x0, wo);
    if (!w.ok()) return w.status();
    sim->workers_.push_back(*std::move(w));
  }
  return sim;
}

absl::StatusOr<double> Simulation::RunRound() {
  const int n = config_.workers;
  const size_t d = engine_->params().size();
  std::vector<std::string> updates(n);
  std::vector<float> losses(n);
  std::vector<absl::Status> status(n);
  ParallelFor(n, [&](int r) {
    std::vector<float> grad(d);
    losses[r] =
        models_[r]->Gradient(workers_[r]->params(), absl::MakeSpan(grad));
    status[r] = workers_[r]->ComputeUpdate(grad, &updates[r]);
  });
  for (int r = 0; r < n; ++r) {
    if (!status[r].ok()) {
      return absl::Status(status[r].code(), absl::StrCat("worker ", r, ": ",
                                                         status[r].message()));
    }
  }
  const int64_t round = engine_->round();
  for (int r = 0; r < n; ++r) {
    DirectionBytes& up = traffic_[TrafficDirection::kWorkerToServer];
    up.payload += static_cast<int64_t>(updates[r].size());
    up.fp32 += static_cast<int64_t>(4 * d);
    if (absl::Status s = engine_->Submit(r, round, std::move(updates[r]));
        !s.ok()) {
      return s;
    }
  }
  absl::StatusOr<std::string> delta = engine_->CloseRound();
  if (!delta.ok()) return delta.status();
  for (int r = 0; r < n; ++r) {
    DirectionBytes& down = traffic_[TrafficDirection::kServerToWorker];
    down.payload += static_cast<int64_t>(delta->size());
    down.fp32 += static_cast<int64_t>(4 * d);
    if (absl::Status s = workers_[r]->ApplyDelta(*delta); !s.ok()) return s;
  }
  double loss = 0;
  for (float l : losses) loss += l;
  return loss / n;
}

absl::StatusOr<Evaluation> Simulation::Evaluate() const {
  absl::Span<const float> x = engine_->params();
  for (size_t r = 0; r < workers_.size(); ++r) {
    absl::Span<const float> replica = workers_[r]->params();
    if (std::memcmp(replica.data(), x.data(), x.size() * sizeof(float)) != 0) {
      return absl::InternalError(absl::StrCat(
          "worker ", r, "'s replica differs from the server's x after round ",
          rounds_done()));
    }
  }
  return models_[0]->Evaluate(x);
}

}  // namespace effadam
