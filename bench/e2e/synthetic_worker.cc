// effadam-bench-synthetic-worker: a worker whose gradient costs next to
// nothing, for measuring what a round costs the system itself (server
// averaging and codecs, worker Adam and codecs, the bytes on the wire) as
// the number of workers and the model size grow. The model is a convex
// quadratic, f(x) = 0.5 * ||x - 1||^2 (gradient x - 1, one pass over x), in
// tensors of at most --tensor_elements elements, so that any size can be
// asked for; everything else is the real worker library (WorkerClient).
//
// Prints, on stdout, one line when round --warmup_rounds + 1 starts
// ("measuring from round R") and at the end one line of JSON: median, mean
// and largest wall time of the measured rounds as this worker saw them (from
// one gradient call to the next: Adam, encode, send, wait for the other
// workers and the server, receive and apply the delta) and the traffic.

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <numeric>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/strings/str_cat.h"
#include "common/compression_flags.h"
#include "common/json_writer.h"
#include "common/tensor_layout.h"
#include "worker/progress.h"
#include "worker/worker_client.h"

ABSL_FLAG(std::string, server, "127.0.0.1:50051",
          "host:port of effadam-server");
ABSL_FLAG(int64_t, params, 1000000, "Model size in parameters (> 0)");
ABSL_FLAG(int64_t, tensor_elements, 1 << 22,
          "Largest tensor; the model is split into tensors of this size and "
          "one remainder, as a deep network's layers would be");
ABSL_FLAG(int64_t, rounds, 10, "Train through this round");
ABSL_FLAG(int64_t, warmup_rounds, 2,
          "Rounds not measured at the start (connection set-up, first-touch "
          "page faults)");

namespace effadam {
namespace {

int Fail(const absl::Status& s) {
  std::fprintf(stderr, "effadam-bench-synthetic-worker: %s\n",
               s.ToString().c_str());
  return 1;
}

absl::StatusOr<TensorLayout> SyntheticLayout(int64_t params,
                                             int64_t tensor_elements) {
  if (params <= 0 || tensor_elements <= 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "--params and --tensor_elements must be > 0, got ", params, " and ",
        tensor_elements));
  }
  std::vector<TensorSpec> tensors;
  for (int64_t begin = 0; begin < params; begin += tensor_elements) {
    const int64_t n = std::min(tensor_elements, params - begin);
    tensors.push_back({absl::StrCat("layer", tensors.size()), {n}});
  }
  return TensorLayout::Create(std::move(tensors));
}

int Run() {
  auto compression = CompressionConfigFromFlags();
  if (!compression.ok()) return Fail(compression.status());
  const int64_t rounds = absl::GetFlag(FLAGS_rounds);
  const int64_t warmup = absl::GetFlag(FLAGS_warmup_rounds);
  if (warmup < 0 || rounds <= warmup) {
    return Fail(absl::InvalidArgumentError(absl::StrCat(
        "need 0 <= --warmup_rounds < --rounds, got ", warmup, " and ",
        rounds)));
  }
  auto layout = SyntheticLayout(absl::GetFlag(FLAGS_params),
                                absl::GetFlag(FLAGS_tensor_elements));
  if (!layout.ok()) return Fail(layout.status());

  WorkerClientOptions options;
  options.server = absl::GetFlag(FLAGS_server);
  options.compression = *compression;
  // Starting at 0 with the optimum at 1 keeps every gradient coordinate
  // non-zero for the whole run, so no codec sees an all-zero block.
  auto client = WorkerClient::Connect(
      options, *layout, std::vector<float>(layout->num_elements(), 0.0f));
  if (!client.ok()) return Fail(client.status());

  using Clock = std::chrono::steady_clock;
  Clock::time_point last;
  std::vector<double> round_seconds;
  int64_t round = 0;
  const absl::Status run = (*client)->Run(
      rounds, [&](absl::Span<const float> x,
                  absl::Span<float> grad) -> absl::StatusOr<float> {
        const Clock::time_point now = Clock::now();
        ++round;
        if (round == warmup + 1) {
          std::printf("measuring from round %lld\n",
                      static_cast<long long>(round));
          std::fflush(stdout);
        } else if (round > warmup + 1) {
          round_seconds.push_back(
              std::chrono::duration<double>(now - last).count());
        }
        last = now;
        double loss = 0;
        for (size_t j = 0; j < x.size(); ++j) {
          grad[j] = x[j] - 1.0f;
          loss += 0.5 * grad[j] * grad[j];
        }
        return static_cast<float>(loss / static_cast<double>(x.size()));
      });
  if (!run.ok()) return Fail(run);
  // The last measured round ends when its delta is applied, after the
  // final gradient call.
  round_seconds.push_back(
      std::chrono::duration<double>(Clock::now() - last).count());
  std::sort(round_seconds.begin(), round_seconds.end());
  const double total = std::accumulate(round_seconds.begin(),
                                       round_seconds.end(), 0.0);
  JsonObject json;
  json.Add("rank", (*client)->rank())
      .Add("workers", (*client)->num_workers())
      .Add("params", static_cast<int64_t>(layout->num_elements()))
      .Add("rounds", (*client)->round() - 1)
      .Add("measured_rounds", static_cast<int64_t>(round_seconds.size()))
      .Add("round_seconds_median", round_seconds[round_seconds.size() / 2])
      .Add("round_seconds_mean", total / round_seconds.size())
      .Add("round_seconds_max", round_seconds.back());
  AddTraffic((*client)->traffic(), &json);
  std::printf("%s", json.ToString().c_str());
  return 0;
}

}  // namespace
}  // namespace effadam

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage(
      "A worker with a near-free gradient (a quadratic of any size), for "
      "measuring the round cost of effadam-server and the worker library "
      "alone. Example: effadam-bench-synthetic-worker --server=127.0.0.1:50051 "
      "--params=10000000 --rounds=10 --worker_codec=sign --server_codec=sign");
  absl::ParseCommandLine(argc, argv);
  return effadam::Run();
}
