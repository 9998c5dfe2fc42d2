// A user's own model on effadam: least-squares regression y = <w, a> on
// synthetic data, trained by a cluster of these workers through
// effadam-server. The model only hands the library a flat gradient per
// round; the library owns Adam, the codec, error feedback and the stream.
//
//   build/bin/effadam-server --workers=2 --rounds=300 &
//   build/bin/effadam-example-own-model --rounds=300 &
//   build/bin/effadam-example-own-model --rounds=300

#include <cmath>
#include <cstdio>
#include <random>
#include <vector>

#include "absl/flags/flag.h"
#include "daemon/client_security_flags.h"
#include "daemon/command_line.h"
#include "daemon/compression_flags.h"
#include "worker/worker_client.h"

ABSL_FLAG(std::string, server, "127.0.0.1:50051", "Parameter server");
ABSL_FLAG(int64_t, rounds, 300, "Train through this round");

int main(int argc, char** argv) {
  effadam::ParseCommandLineOrExit(
      argc, argv,
      "A user's own model (least squares) trained with effadam-server.\n"
      "Example: effadam-example-own-model --server=127.0.0.1:50051 "
      "--rounds=300");
  constexpr int kDim = 1024;

  // 1. Describe the model: named tensors, flattened in order.
  auto layout = effadam::TensorLayout::Create({{"w", {kDim}}, {"b", {1}}});
  if (!layout.ok()) return 1;

  // 2. Connect: the compression flags (--worker_codec, ...) must match the
  //    server's; the first worker to join uploads its initial parameters.
  effadam::WorkerClientOptions options;
  options.server = absl::GetFlag(FLAGS_server);
  auto compression = effadam::CompressionConfigFromFlags();
  if (!compression.ok()) {  // e.g. --worker_codec=bogus
    std::fprintf(stderr, "%s\n", compression.status().ToString().c_str());
    return 1;
  }
  options.compression = *compression;
  // --tls_ca_file, --auth_token_file, ...: as the server requires.
  auto security = effadam::ClientSecurityFromFlags();
  if (!security.ok()) {
    std::fprintf(stderr, "%s\n", security.status().ToString().c_str());
    return 1;
  }
  options.security = *security;
  options.adam.lr = 0.05f;
  effadam::WorkerClient client(options);
  if (auto s = client.Join(*layout); !s.ok()) {
    std::fprintf(stderr, "%s\n", s.ToString().c_str());
    return 1;
  }
  // The rank is known now: draw this worker's own data.
  std::mt19937 rng(client.rank());
  std::normal_distribution<float> normal;
  std::vector<float> truth(kDim + 1);
  std::mt19937 truth_rng(42);  // the same true model on every worker
  for (float& t : truth) t = normal(truth_rng);
  if (auto s = client.Start(std::vector<float>(kDim + 1, 0.0f)); !s.ok()) {
    std::fprintf(stderr, "%s\n", s.ToString().c_str());
    return 1;
  }

  // 3. Train: per round, the gradient of this worker's mini-batch loss.
  auto gradient = [&](absl::Span<const float> x,
                      absl::Span<float> grad) -> absl::StatusOr<float> {
    std::fill(grad.begin(), grad.end(), 0.0f);
    float loss = 0;
    const int batch = 64;
    std::vector<float> a(kDim);
    for (int k = 0; k < batch; ++k) {
      float y = truth[kDim], pred = x[kDim];
      for (int j = 0; j < kDim; ++j) {
        a[j] = normal(rng);
        y += truth[j] * a[j];
        pred += x[j] * a[j];
      }
      const float r = pred - y;
      loss += 0.5f * r * r / batch;
      for (int j = 0; j < kDim; ++j) grad[j] += r * a[j] / batch;
      grad[kDim] += r / batch;
    }
    return loss;
  };
  if (auto s = client.Run(absl::GetFlag(FLAGS_rounds), gradient); !s.ok()) {
    std::fprintf(stderr, "%s\n", s.ToString().c_str());
    return 1;
  }
  double err = 0;
  for (int j = 0; j <= kDim; ++j)
    err += std::pow(client.params()[j] - truth[j], 2);
  std::printf(
      "rank %d: |x - truth| = %.4f after round %lld; sent %lld bytes "
      "(fp32: %lld)\n",
      client.rank(), std::sqrt(err), static_cast<long long>(client.round() - 1),
      static_cast<long long>(client.traffic().up().payload),
      static_cast<long long>(client.traffic().up().fp32));
  return 0;
}
