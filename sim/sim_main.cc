// effadam-sim: N logical workers and the Efficient-Adam server in one
// process. Same flags and same results, bit for bit, as the distributed
// daemons; used to study codecs and as the reference the cluster must match.

#include <cstdio>
#include <deque>
#include <numeric>
#include <string>

#include "absl/flags/flag.h"
#include "absl/time/clock.h"
#include "common/json_writer.h"
#include "core/checksum.h"
#include "daemon/command_line.h"
#include "daemon/compression_flags.h"
#include "daemon/training_flags.h"
#include "sim/simulation.h"

ABSL_FLAG(int32_t, workers, 4, "Number of logical workers");

namespace effadam {
namespace {

int Fail(const absl::Status& s) {
  std::fprintf(stderr, "effadam-sim: %s\n", s.ToString().c_str());
  return 1;
}

int Run() {
  SimulationConfig config;
  auto training = TrainingConfigFromFlags();
  if (!training.ok()) return Fail(training.status());
  auto compression = CompressionConfigFromFlags();
  if (!compression.ok()) return Fail(compression.status());
  config.training = *training;
  config.compression = *compression;
  config.workers = absl::GetFlag(FLAGS_workers);

  auto sim = Simulation::Create(config);
  if (!sim.ok()) return Fail(sim.status());
  const int64_t rounds = config.training.rounds;
  const int64_t every =
      config.training.eval_every > 0 ? config.training.eval_every : rounds;
  std::printf(
      "effadam-sim: %s, %d workers, %zu parameters, codecs %s/%s, "
      "error feedback worker=%d server=%d\n",
      config.training.model.name.c_str(), config.workers,
      (*sim)->params().size(),
      config.compression.worker_codec.ToString().c_str(),
      config.compression.server_codec.ToString().c_str(),
      config.compression.worker_error_feedback,
      config.compression.server_error_feedback);
  const absl::Time start = absl::Now();
  // Train loss is the mean mini-batch loss of the workers over the last
  // kLossWindow rounds: recent enough to track progress, long enough to
  // smooth the noise of single batches.
  constexpr int kLossWindow = 50;
  std::deque<double> losses;
  double train_loss = 0;
  Evaluation eval;
  for (int64_t r = 1; r <= rounds; ++r) {
    auto loss = (*sim)->RunRound();
    if (!loss.ok()) return Fail(loss.status());
    losses.push_back(*loss);
    if (losses.size() > kLossWindow) losses.pop_front();
    if (r % every == 0 || r == rounds) {
      auto e = (*sim)->Evaluate();
      if (!e.ok()) return Fail(e.status());
      eval = *e;
      train_loss = std::accumulate(losses.begin(), losses.end(), 0.0) /
                   static_cast<double>(losses.size());
      std::printf("%s\n",
                  FormatProgress(r, rounds, train_loss, eval, (*sim)->traffic(),
                                 absl::ToDoubleSeconds(absl::Now() - start))
                      .c_str());
      std::fflush(stdout);
    }
  }
  const TrafficCounts& t = (*sim)->traffic();
  const std::string checksum = ParamsChecksum((*sim)->params());
  std::printf(
      "done: %s %.4f after %lld rounds; moved %s (fp32 Adam: %s, "
      "%.1fx fewer); params_checksum %s\n",
      eval.metric_name.c_str(), eval.metric, static_cast<long long>(rounds),
      FormatBytes(t.round_payload()).c_str(),
      FormatBytes(t.fp32_equivalent()).c_str(), t.compression_ratio(),
      checksum.c_str());
  if (!config.training.summary_json.empty()) {
    JsonObject json;
    json.Add("rounds", rounds)
        .Add("workers", config.workers)
        .Add("model", ModelLabel(config.training.model))
        .Add("worker_codec", config.compression.worker_codec.ToString())
        .Add("server_codec", config.compression.server_codec.ToString())
        .Add(eval.metric_name, eval.metric)
        .Add("test_loss", eval.loss)
        .Add("train_loss", train_loss);
    AddRoundTraffic(t, &json);
    json.Add("params_checksum", checksum)
        .Add("seconds", absl::ToDoubleSeconds(absl::Now() - start));
    if (absl::Status s = json.WriteFile(config.training.summary_json); !s.ok())
      return Fail(s);
  }
  return 0;
}

}  // namespace
}  // namespace effadam

int main(int argc, char** argv) {
  effadam::ParseCommandLineOrExit(
      argc, argv,
      "Simulates an Efficient-Adam cluster (N workers + server) in one "
      "process.\nExample: effadam-sim --model=mlp --workers=4 --rounds=2000 "
      "--worker_codec=sign --server_codec=sign");
  return effadam::Run();
}
