// effadam-synthetic-worker: a worker whose gradient costs one pass over x,
// for soak tests, fault tests and server benchmarks at any model size
// (--elements), where a real model's compute would hide the system's cost.
// It minimises 0.5 * ||x - t_rank||^2 with targets that differ per rank
// around a common one, on the WorkerClient library like any user's model.
//
// For benchmarks it times its rounds as it sees them (from one gradient
// call to the next: Adam, encode, send, wait for the others and the server,
// receive and apply the delta), after --untimed_rounds (it prints "measuring
// from round R" when they start) and for --timed_rounds of them (it prints
// "measured to round R" at the next gradient call, the same point of the
// round after them, so that a benchmark can read each process's CPU at the
// two lines, without the rounds after and the exit), and ends its stdout
// with the JSON summary (also written to --summary_json). --rounds, Adam's
// flags (--lr, ...),
// --seed and --summary_json are effadam-worker's (daemon/training_flags.h);
// the model flags among them do not apply.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <limits>
#include <numeric>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "common/json_writer.h"
#include "core/checksum.h"
#include "daemon/client_security_flags.h"
#include "daemon/command_line.h"
#include "daemon/compression_flags.h"
#include "daemon/duration_flag.h"
#include "daemon/threads_flag.h"
#include "daemon/training_flags.h"
#include "worker/progress.h"
#include "worker/worker_client.h"

ABSL_FLAG(std::string, server, "127.0.0.1:50051", "Parameter server");
ABSL_FLAG(int32_t, rank, -1, "Rank to claim; -1 for the lowest free one");
ABSL_FLAG(int64_t, elements, 1 << 20,
          "Model size: tensors w* of this many float32 in all, and a bias of "
          "16");
ABSL_FLAG(int64_t, tensor_elements, 0,
          "Largest tensor w* (as a deep network's layers); 0: one tensor");
ABSL_FLAG(int64_t, untimed_rounds, 0,
          "Rounds not timed at the start (connection set-up, first-touch "
          "page faults)");
ABSL_FLAG(int64_t, timed_rounds, 0,
          "Rounds timed after the untimed ones; 0: every one left");
ABSL_FLAG(effadam::DurationFlag, reconnect_timeout, absl::Minutes(5),
          "WorkerClientOptions::reconnect_timeout");

namespace effadam {
namespace {

int Fail(const absl::Status& s) {
  std::fprintf(stderr, "effadam-synthetic-worker: %s\n", s.ToString().c_str());
  return 1;
}

// Deterministic in (rank, j) and cheap: a common target in [-1, 1) plus a
// per-rank offset whose mean over ranks is small.
float Target(int rank, int64_t j) {
  const uint32_t h = static_cast<uint32_t>(j) * 2654435761u;
  const float common = static_cast<float>(h >> 8) * 0x1.0p-23f - 1.0f;
  return common + 0.01f * static_cast<float>((rank % 7) - 3);
}

int Run() {
  const int64_t elements = absl::GetFlag(FLAGS_elements);
  const int64_t tensor_elements = absl::GetFlag(FLAGS_tensor_elements);
  const int64_t warmup = absl::GetFlag(FLAGS_untimed_rounds);
  const int64_t timed_rounds = absl::GetFlag(FLAGS_timed_rounds);
  if (elements < 1 || tensor_elements < 0 || warmup < 0 || timed_rounds < 0) {
    return Fail(absl::InvalidArgumentError(absl::StrCat(
        "need --elements >= 1, --tensor_elements >= 0, --untimed_rounds >= 0, "
        "--timed_rounds >= 0; got ",
        elements, ", ", tensor_elements, ", ", warmup, ", ", timed_rounds)));
  }
  // The gradient call that ends the last timed round (none with 0).
  const int64_t end_call = timed_rounds > 0
                               ? warmup + timed_rounds + 1
                               : std::numeric_limits<int64_t>::max();
  const int64_t piece = tensor_elements > 0 ? tensor_elements : elements;
  std::vector<TensorSpec> tensors;
  for (int64_t begin = 0; begin < elements; begin += piece) {
    tensors.push_back(
        {tensors.empty() ? "w" : absl::StrCat("w", tensors.size()),
         {std::min(piece, elements - begin)}});
  }
  tensors.push_back({"b", {16}});
  absl::StatusOr<TensorLayout> layout = TensorLayout::Create(tensors);
  if (!layout.ok()) return Fail(layout.status());
  absl::StatusOr<CompressionConfig> compression = CompressionConfigFromFlags();
  if (!compression.ok()) return Fail(compression.status());
  absl::StatusOr<TrainingConfig> training = TrainingConfigFromFlags();
  if (!training.ok()) return Fail(training.status());

  WorkerClientOptions options;
  options.server = absl::GetFlag(FLAGS_server);
  options.rank = absl::GetFlag(FLAGS_rank);
  options.compression = *compression;
  options.adam = training->adam;
  options.seed = training->seed;
  if (absl::Status s = ThreadsFromFlag(&options.threads); !s.ok()) {
    return Fail(s);
  }
  options.reconnect_timeout = absl::GetFlag(FLAGS_reconnect_timeout).value;
  // TLS, the token and keepalive, as effadam-worker takes them.
  absl::StatusOr<ClientSecurity> security = ClientSecurityFromFlags();
  if (!security.ok()) return Fail(security.status());
  options.security = *std::move(security);
  absl::StatusOr<ClientKeepalive> keepalive = ClientKeepaliveFromFlags();
  if (!keepalive.ok()) return Fail(keepalive.status());
  options.keepalive = *keepalive;
  WorkerClient client(options);
  if (absl::Status s = client.Join(*layout); !s.ok()) return Fail(s);
  const size_t n = layout->num_elements();
  if (absl::Status s = client.Start(std::vector<float>(n, 0.0f)); !s.ok()) {
    return Fail(s);
  }
  const int rank = client.rank();
  std::printf("effadam-synthetic-worker: rank %d started at round %lld\n", rank,
              static_cast<long long>(client.round()));
  std::fflush(stdout);
  std::vector<float> target(n);
  for (size_t j = 0; j < n; ++j) target[j] = Target(rank, j);

  const absl::Time start = absl::Now();
  int resyncs = 0;
  int64_t calls = 0;
  absl::Time last;
  std::vector<double> round_seconds;
  absl::Status s = client.Run(
      training->rounds, [&](absl::Span<const float> x, absl::Span<float> grad) {
        const absl::Time now = absl::Now();
        ++calls;
        if (calls == warmup + 1) {
          std::printf("measuring from round %lld\n",
                      static_cast<long long>(client.round()));
          std::fflush(stdout);
        } else if (calls > warmup + 1 && calls <= end_call) {
          round_seconds.push_back(absl::ToDoubleSeconds(now - last));
        }
        if (calls == end_call) {
          std::printf("measured to round %lld\n",
                      static_cast<long long>(client.round() - 1));
          std::fflush(stdout);
        }
        last = now;
        if (client.resyncs() != resyncs) {
          resyncs = client.resyncs();
          std::printf(
              "effadam-synthetic-worker: rank %d resynchronized at "
              "round %lld\n",
              rank, static_cast<long long>(client.round()));
          std::fflush(stdout);
        }
        double loss = 0;
        for (size_t j = 0; j < n; ++j) {
          grad[j] = x[j] - target[j];
          loss += 0.5 * static_cast<double>(grad[j]) * grad[j];
        }
        return static_cast<float>(loss / static_cast<double>(n));
      });
  if (!s.ok()) return Fail(s);
  const std::string checksum = ParamsChecksum(client.params());
  std::printf(
      "effadam-synthetic-worker: rank %d done after round %lld, "
      "params_checksum %s\n",
      rank, static_cast<long long>(client.round() - 1), checksum.c_str());
  // The last timed round ends when its delta is applied, after the final
  // gradient call.
  if (calls > warmup && calls < end_call)
    round_seconds.push_back(absl::ToDoubleSeconds(absl::Now() - last));
  std::sort(round_seconds.begin(), round_seconds.end());
  const double timed =
      std::accumulate(round_seconds.begin(), round_seconds.end(), 0.0);
  const double count =
      static_cast<double>(std::max<size_t>(round_seconds.size(), 1));
  JsonObject json;
  json.Add("rank", rank)
      .Add("workers", client.num_workers())
      .Add("params", static_cast<int64_t>(n))
      .Add("rounds", client.round() - 1)
      .Add("resyncs", client.resyncs())
      .Add("measured_rounds", static_cast<int64_t>(round_seconds.size()))
      .Add(
          "round_seconds_median",
          round_seconds.empty() ? 0.0 : round_seconds[round_seconds.size() / 2])
      .Add("round_seconds_mean", timed / count)
      .Add("round_seconds_max",
           round_seconds.empty() ? 0.0 : round_seconds.back());
  AddRoundTraffic(client.traffic(), &json);
  json.Add("params_checksum", checksum)
      .Add("seconds", absl::ToDoubleSeconds(absl::Now() - start));
  std::printf("%s\n", json.ToString().c_str());
  const std::string& path = training->summary_json;
  if (!path.empty()) {
    if (absl::Status w = json.WriteFile(path); !w.ok()) return Fail(w);
  }
  return 0;
}

}  // namespace
}  // namespace effadam

int main(int argc, char** argv) {
  effadam::ParseCommandLineOrExit(
      argc, argv,
      "A worker with a synthetic O(n) gradient, for soak and fault tests and "
      "server benchmarks at any model size.\nExample: "
      "effadam-synthetic-worker --server=127.0.0.1:50051 --elements=1000000 "
      "--rounds=2000 --worker_codec=sign --server_codec=sign");
  return effadam::Run();
}
